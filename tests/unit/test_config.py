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


def test_stripe_calls_are_paced_a_fifth_under_stripes_limit_for_the_keys_mode():
    assert Settings.from_env({"STRIPE_API_KEY": "sk_live_x"}).stripe_max_requests_per_second == 80
    assert Settings.from_env({"STRIPE_API_KEY": "rk_live_x"}).stripe_max_requests_per_second == 80
    assert Settings.from_env({"STRIPE_API_KEY": "sk_test_x"}).stripe_max_requests_per_second == 20


def test_an_emulator_is_unpaced_unless_told_and_any_pace_can_be_set():
    emulator = {"STRIPE_API_BASE": "http://127.0.0.1:8420"}
    assert Settings.from_env(emulator).stripe_max_requests_per_second == 0
    assert (
        Settings.from_env(
            {**emulator, "STRIPE_MAX_REQUESTS_PER_SECOND": "12.5"}
        ).stripe_max_requests_per_second
        == 12.5
    )
    with pytest.raises(ConfigError, match="STRIPE_MAX_REQUESTS_PER_SECOND"):
        Settings.from_env({"STRIPE_MAX_REQUESTS_PER_SECOND": "fast"})
    with pytest.raises(ConfigError, match="STRIPE_MAX_REQUESTS_PER_SECOND"):
        Settings.from_env({"STRIPE_MAX_REQUESTS_PER_SECOND": "-1"})


def test_rate_limits_default_to_a_tenth_for_customer_keys_and_read_from_the_environment():
    defaults = Settings.from_env({})
    assert defaults.api_rate_limit == "100 per second;3000 per minute"
    assert defaults.api_rate_limit_customer == "10 per second;300 per minute"
    assert (defaults.card_attach_rate_limit, defaults.pay_attempts_per_invoice_per_day) == (
        "10 per hour",
        5,
    )
    configured = Settings.from_env(
        {"API_RATE_LIMIT_CUSTOMER": "5/second", "PAY_ATTEMPTS_PER_INVOICE_PER_DAY": "3"}
    )
    assert configured.api_rate_limit_customer == "5/second"
    assert configured.pay_attempts_per_invoice_per_day == 3


def test_a_malformed_rate_limit_stops_the_app_at_boot():
    with pytest.raises(ConfigError, match="CARD_ATTACH_RATE_LIMIT"):
        Settings.from_env({"CARD_ATTACH_RATE_LIMIT": "10 per fortnight"})


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


PRODUCTION_WEB = {
    "BILLING_ENV": "production",
    "BILLING_ROLE": "web",
    "DATABASE_URL": "postgresql://billing:secret@db.internal:5432/billing",
    "REDIS_URL": "rediss://redis.internal:6379/0",
    "STRIPE_API_KEY": "sk_live_key",
    "METRICS_TOKEN": "scrape-token",
}


def test_development_keeps_the_local_defaults():
    settings = Settings.from_env({})
    assert not settings.production
    assert settings.stripe_api_key == "sk_test_local"
    assert settings.database_url == "postgresql+psycopg2://postgres@127.0.0.1:5432/billing"


def test_a_production_web_with_its_secrets_starts():
    settings = Settings.from_env(PRODUCTION_WEB)
    assert settings.production
    assert settings.stripe_api_key == "sk_live_key"
    assert settings.metrics_token == "scrape-token"


@pytest.mark.parametrize("missing", ["DATABASE_URL", "STRIPE_API_KEY", "METRICS_TOKEN"])
def test_production_has_no_local_default_for_a_secret_the_web_needs(missing):
    env = {name: value for name, value in PRODUCTION_WEB.items() if name != missing}
    with pytest.raises(
        ConfigError, match=f"BILLING_ENV=production needs {missing} for BILLING_ROLE=web"
    ):
        Settings.from_env(env)


def test_an_empty_secret_counts_as_missing_in_production():
    with pytest.raises(ConfigError, match="STRIPE_API_KEY"):
        Settings.from_env({**PRODUCTION_WEB, "STRIPE_API_KEY": " "})


def test_without_a_role_production_asks_for_what_the_web_needs():
    env = {name: value for name, value in PRODUCTION_WEB.items() if name != "BILLING_ROLE"}
    Settings.from_env(env)
    with pytest.raises(ConfigError, match="METRICS_TOKEN"):
        Settings.from_env({**env, "METRICS_TOKEN": ""})


def test_a_production_beat_needs_only_the_broker_and_gets_no_database_default():
    settings = Settings.from_env(
        {"BILLING_ENV": "production", "BILLING_ROLE": "beat", "REDIS_URL": "redis://r:6379/0"}
    )
    assert settings.database_url == ""
    assert settings.stripe_api_key == ""


def test_a_production_worker_needs_its_database():
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        Settings.from_env(
            {"BILLING_ENV": "production", "BILLING_ROLE": "worker", "REDIS_URL": "redis://r/0"}
        )


@pytest.mark.parametrize(("name", "value"), [("BILLING_ENV", "prod"), ("BILLING_ROLE", "api")])
def test_an_unknown_environment_or_role_is_a_configuration_error(name, value):
    with pytest.raises(ConfigError, match=f"{name} must be one of"):
        Settings.from_env({**PRODUCTION_WEB, name: value})


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
