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
