import pytest

from billing.config import ConfigError, Settings


def test_defaults_apply_when_nothing_is_set():
    settings = Settings.from_env({})
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.outbox_lease_seconds == 300
    assert settings.idempotency_key_ttl_hours == 24
    assert settings.mail["MAIL_PORT"] == 25
    assert settings.stripe_api_base is None


def test_a_plain_postgresql_url_gets_the_psycopg2_driver():
    settings = Settings.from_env({"DATABASE_URL": "postgresql://u:p@db:5432/billing"})
    assert settings.database_url == "postgresql+psycopg2://u:p@db:5432/billing"


def test_a_malformed_number_is_a_clear_configuration_error():
    with pytest.raises(ConfigError, match="OUTBOX_LEASE_SECONDS"):
        Settings.from_env({"OUTBOX_LEASE_SECONDS": "five"})


def test_mail_flags_read_as_booleans():
    settings = Settings.from_env({"MAIL_USE_TLS": "true", "MAIL_SUPPRESS_SEND": "0"})
    assert settings.mail["MAIL_USE_TLS"] is True
    assert settings.mail["MAIL_SUPPRESS_SEND"] is False


def test_secrets_never_appear_in_the_redacted_view():
    settings = Settings.from_env(
        {
            "STRIPE_API_KEY": "sk_live_secret",
            "MAIL_PASSWORD": "hunter2",
            "MAIL_USE_TLS": "true",
            "STRIPE_WEBHOOK_SECRET": "w",
        }
    )
    shown = repr(settings.redacted())
    assert "sk_live_secret" not in shown and "hunter2" not in shown


def test_a_boolean_setting_reads_every_usual_spelling_and_nothing_else():
    spellings = {
        **dict.fromkeys(["true", "TRUE", " Yes ", "on", "1"], True),
        **dict.fromkeys(["false", "No", "OFF", "0"], False),
    }
    for raw, expected in spellings.items():
        assert Settings.from_env({"MAIL_SUPPRESS_SEND": raw}).mail["MAIL_SUPPRESS_SEND"] is expected
    for raw in ("ture", "y", "enabled", "2"):
        with pytest.raises(ConfigError, match="MAIL_SUPPRESS_SEND"):
            Settings.from_env({"MAIL_SUPPRESS_SEND": raw})


@pytest.mark.parametrize("name", ["MAIL_USE_TLS", "MAIL_USE_SSL", "MAIL_SUPPRESS_SEND"])
def test_a_misspelt_boolean_stops_the_start_instead_of_reading_as_false(name):
    with pytest.raises(ConfigError, match=f"{name} must be one of true/false.*'ture'"):
        Settings.from_env({name: "ture"})


@pytest.mark.parametrize("credential", ["MAIL_USERNAME", "MAIL_PASSWORD"])
def test_smtp_credentials_are_accepted_only_with_starttls_or_implicit_tls(credential):
    with pytest.raises(ConfigError, match="plain text"):
        Settings.from_env({credential: "x"})
    with pytest.raises(ConfigError, match="plain text"):
        Settings.from_env({credential: "x", "MAIL_USE_TLS": "false"})
    for flag in ("MAIL_USE_TLS", "MAIL_USE_SSL"):
        assert Settings.from_env({credential: "x", flag: "on"}).mail[credential] == "x"


def test_starttls_and_implicit_tls_together_are_refused():
    with pytest.raises(ConfigError, match="exclude each other"):
        Settings.from_env({"MAIL_USE_TLS": "true", "MAIL_USE_SSL": "true"})


def test_a_missing_mail_ca_file_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigError, match="MAIL_CA_FILE"):
        Settings.from_env({"MAIL_CA_FILE": str(tmp_path / "nope.pem")})
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("-----BEGIN CERTIFICATE-----\n")
    assert Settings.from_env({"MAIL_CA_FILE": str(ca_file)}).mail["MAIL_CA_FILE"] == str(ca_file)
