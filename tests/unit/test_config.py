import io
import logging
import re
import traceback
from pathlib import Path
from typing import get_args

import pytest
import structlog
from dotenv import dotenv_values
from pydantic import SecretStr

from billing.config import ConfigError, Settings, variable
from billing.platform.logging import json_formatter


def test_defaults_apply_when_nothing_is_set():
    settings = Settings.from_env({})
    assert settings.redis_url.get_secret_value() == "redis://127.0.0.1:6379/0"
    assert settings.outbox_lease_seconds == 300
    assert settings.idempotency_key_ttl_hours == 24
    assert settings.mail["MAIL_PORT"] == 25
    assert settings.stripe_api_base is None


def test_a_plain_postgresql_url_gets_the_psycopg2_driver():
    settings = Settings.from_env({"DATABASE_URL": "postgresql://u:p@db:5432/billing"})
    assert settings.database_url.get_secret_value() == "postgresql+psycopg2://u:p@db:5432/billing"


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
    assert settings.stripe_api_key.get_secret_value() == "sk_test_local"
    assert (
        settings.database_url.get_secret_value()
        == "postgresql+psycopg2://postgres@127.0.0.1:5432/billing"
    )


def test_a_production_web_with_its_secrets_starts():
    settings = Settings.from_env(PRODUCTION_WEB)
    assert settings.production
    assert settings.stripe_api_key.get_secret_value() == "sk_live_key"
    assert settings.metrics_token.get_secret_value() == "scrape-token"


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
    assert settings.database_url.get_secret_value() == ""
    assert settings.stripe_api_key.get_secret_value() == ""


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
        settings = Settings.from_env({credential: "x", flag: "on"})
        assert settings.mail[credential].get_secret_value() == "x"
        assert settings.flask_config()[credential] == "x"  # what Flask-Mail logs in with


def test_starttls_and_implicit_tls_together_are_refused():
    with pytest.raises(ConfigError, match="exclude each other"):
        Settings.from_env({"MAIL_USE_TLS": "true", "MAIL_USE_SSL": "true"})


def test_a_missing_mail_ca_file_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigError, match="MAIL_CA_FILE"):
        Settings.from_env({"MAIL_CA_FILE": str(tmp_path / "nope.pem")})
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("-----BEGIN CERTIFICATE-----\n")
    assert Settings.from_env({"MAIL_CA_FILE": str(ca_file)}).mail["MAIL_CA_FILE"] == str(ca_file)


# Every bad variable in one error.

BAD_VALUES = {
    "BILLING_ROLE": "api",
    "STRIPE_MAX_REQUESTS_PER_SECOND": "fast",
    "MAIL_PORT": "smtp",
    "MAIL_USE_TLS": "ture",
    "LOG_LEVEL": "loud",
    "OUTBOX_LEASE_SECONDS": "five",
    "DOCUMENT_STORAGE": "ftp",
    "DUNNING_HOUR": "25",
    "DUNNING_RETRY_DAYS": "3,five",
    "METRICS_PORT": "99999",
    "PORT": "http",
    "CARD_ATTACH_RATE_LIMIT": "10 per fortnight",
}


def test_one_error_names_every_bad_variable_as_it_is_spelt_in_the_environment():
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(BAD_VALUES)

    problems = caught.value.problems
    assert len(problems) == len(BAD_VALUES)
    for (name, value), problem in zip(BAD_VALUES.items(), problems, strict=True):
        assert problem.startswith(f"{name} must be"), problem
        assert value in problem, problem
    message = str(caught.value)
    assert message.startswith(f"{len(BAD_VALUES)} bad settings in the environment")
    assert all(problem in message for problem in problems)


def test_checks_across_settings_are_reported_with_the_malformed_values():
    env = {
        **{name: value for name, value in PRODUCTION_WEB.items() if name != "STRIPE_API_KEY"},
        "METRICS_TOKEN": " ",
        "MAIL_USE_TLS": "yes",
        "MAIL_USE_SSL": "yes",
        "DOCUMENT_STORAGE": "s3",
        "MAIL_TIMEOUT": "thirty",
    }
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)

    assert caught.value.problems == (
        "BILLING_ENV=production needs STRIPE_API_KEY for BILLING_ROLE=web: "
        "the local defaults are for development only",
        "MAIL_USE_TLS (STARTTLS, port 587) and MAIL_USE_SSL (implicit TLS, port 465) "
        "exclude each other: set one",
        "MAIL_TIMEOUT must be an integer, got 'thirty'",
        "DOCUMENT_STORAGE=s3 needs S3_BUCKET",
        "BILLING_ENV=production needs METRICS_TOKEN for BILLING_ROLE=web: "
        "the local defaults are for development only",
    )


def test_a_check_on_a_bad_setting_is_not_repeated_by_the_checks_that_read_it():
    # MAIL_USE_TLS is bad: whether the password may be sent is not asked on top of it.
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"MAIL_USE_TLS": "ture", "MAIL_PASSWORD": "x"})
    assert len(caught.value.problems) == 1


def test_the_process_environment_is_read_by_default(monkeypatch):
    monkeypatch.setenv("MAIL_PORT", "587")
    monkeypatch.setenv("WEB_THREADS", "0")
    monkeypatch.setenv("MAIL_USE_SSL", "maybe")
    with pytest.raises(ConfigError) as caught:
        Settings.from_env()
    assert [problem.split()[0] for problem in caught.value.problems] == [
        "MAIL_USE_SSL",
        "WEB_THREADS",
    ]
    monkeypatch.delenv("MAIL_USE_SSL")
    monkeypatch.delenv("WEB_THREADS")
    assert Settings.from_env().mail_port == 587


def test_variables_are_read_by_their_exact_name_and_blank_ones_count_as_unset():
    assert Settings.from_env({"mail_port": "abc", "MAIL_TIMEOUT": "  "}).mail_timeout == 30
    assert Settings.from_env({"MAIL_PORT": " 587 "}).mail_port == 587
    # S3_REGION falls back on boto3's AWS_REGION, also when set but empty.
    assert Settings.from_env({"S3_REGION": "", "AWS_REGION": "eu-west-1"}).s3_region == "eu-west-1"
    # An empty S3_PREFIX is a prefix: the bucket's root.
    assert Settings.from_env({"S3_PREFIX": ""}).s3_prefix == ""
    assert Settings.from_env({}).s3_prefix == "invoices/"


def test_list_settings_read_as_plain_text_not_json():
    settings = Settings.from_env(
        {"DUNNING_RETRY_DAYS": "7, 3,3", "SELLER_ADDRESS": "1 Main St|Springfield\n12345"}
    )
    assert settings.dunning_retry_days == (3, 7)
    assert settings.seller_address == ("1 Main St", "Springfield", "12345")


# Secrets: SecretStr, shown as stars everywhere but where a library takes them.

SECRETS = {
    "DATABASE_URL": "postgresql://billing:db-hunter2@db.internal:5432/billing",
    "REDIS_URL": "rediss://:redis-hunter2@redis.internal:6379/0",
    "STRIPE_API_KEY": "sk_live_stripe-hunter2",
    "STRIPE_WEBHOOK_SECRET": "whsec_webhook-hunter2",
    "MAIL_USERNAME": "smtp-user-hunter2",
    "MAIL_PASSWORD": "smtp-password-hunter2",
    "METRICS_TOKEN": "metrics-hunter2",
    "HOSTED_LINK_KEYS": "k1:hosted-link-hunter2-hosted-link-hunter2",
}


def _with_secrets() -> Settings:
    return Settings.from_env({**SECRETS, "MAIL_USE_TLS": "true"})


def test_every_secret_setting_is_a_secret_str():
    secret_fields = {
        variable(name)
        for name, field in Settings.model_fields.items()
        if SecretStr in (field.annotation, *get_args(field.annotation))
    }
    assert secret_fields == set(SECRETS)
    settings = _with_secrets()
    for name in SECRETS:
        value = getattr(settings, name.lower())
        assert isinstance(value, SecretStr)
        expected = SECRETS[name].replace("postgresql://", "postgresql+psycopg2://")
        assert value.get_secret_value() == expected


def test_secrets_never_appear_in_repr_str_dumps_or_the_mail_view():
    settings = _with_secrets()
    shown = [
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        repr(settings.model_dump()),
        repr(settings.mail),
        repr(settings.redacted()),
    ]
    for text in shown:
        assert "hunter2" not in text
    assert "**********" in repr(settings)


def test_secrets_never_appear_in_log_lines():
    settings = _with_secrets()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    logger = logging.getLogger("tests.unit.test_config")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("settings %s %r", settings, settings)
    finally:
        logger.removeHandler(handler)
    structlog_line = structlog.processors.JSONRenderer()(
        None, "info", {"event": "settings", "settings": settings, "mail": settings.mail}
    )
    for line in (stream.getvalue(), structlog_line):
        assert "Settings(" in line and "hunter2" not in line


def test_secrets_never_appear_in_a_configuration_error_or_its_traceback():
    env = {
        **{name: value for name, value in SECRETS.items() if name != "METRICS_TOKEN"},
        "BILLING_ENV": "production",
        "MAIL_PORT": "smtp",
    }
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)  # a bad port, the SMTP login without TLS, no metrics token

    assert [problem.split()[0] for problem in caught.value.problems] == [
        "MAIL_PORT",
        "MAIL_USERNAME",
        "MAIL_PASSWORD",
        "BILLING_ENV=production",
    ]
    # pydantic's own error would print each value: it is not chained to ours.
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    printed = "".join(traceback.format_exception(caught.value))
    assert "got 'smtp'" in printed and "hunter2" not in printed


# .env.example lists every setting, with its default.

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"


def _listed(path: Path) -> list[str]:
    return [
        match.group(1)
        for line in path.read_text().splitlines()
        if (match := re.match(r"([A-Za-z_][A-Za-z0-9_]*)=", line))
    ]


def test_env_example_lists_exactly_the_settings_each_once():
    listed = _listed(ENV_EXAMPLE)
    settings = [variable(name) for name in Settings.model_fields]
    assert sorted(name for name in set(listed) if listed.count(name) > 1) == []
    assert sorted(set(settings) - set(listed)) == [], "settings missing from .env.example"
    assert sorted(set(listed) - set(settings)) == [], "in .env.example but no setting"


def test_env_example_gives_each_setting_its_default():
    example = {name: value for name, value in dotenv_values(ENV_EXAMPLE).items() if value}
    assert Settings.from_env(example) == Settings.from_env({})
