"""Settings read from the environment when the app is created, never at import time."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


class ConfigError(RuntimeError):
    pass


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str
    stripe_api_key: str
    stripe_api_base: str | None
    stripe_webhook_secret: str
    log_level: str
    # How long a published job may stay unfinished before the sweeper sends it again.
    # Five minutes: longer than any task's run, short enough that a lost job is noticed soon.
    outbox_lease_seconds: int
    outbox_sweep_interval_seconds: int
    # Stripe keeps idempotency keys 24 hours; we keep ours at least as long.
    idempotency_key_ttl_hours: int
    # Stripe's default: invoices sent for manual payment are due after 30 days.
    default_days_until_due: int
    # How long one Stripe call may take before its outcome counts as unknown.
    stripe_timeout_seconds: int
    mail: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        database_url = env.get(
            "DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/billing"
        )
        if database_url.startswith("postgresql://"):
            database_url = "postgresql+psycopg2://" + database_url.removeprefix("postgresql://")
        mail = {
            "MAIL_SERVER": env.get("MAIL_SERVER", "localhost"),
            "MAIL_PORT": _int(env, "MAIL_PORT", 25),
            "MAIL_USE_TLS": _bool(env, "MAIL_USE_TLS", False),
            "MAIL_USE_SSL": _bool(env, "MAIL_USE_SSL", False),
            "MAIL_USERNAME": env.get("MAIL_USERNAME") or None,
            "MAIL_PASSWORD": env.get("MAIL_PASSWORD") or None,
            "MAIL_DEFAULT_SENDER": env.get("MAIL_DEFAULT_SENDER", "billing@example.com"),
            "MAIL_SUPPRESS_SEND": _bool(env, "MAIL_SUPPRESS_SEND", False),
        }
        return cls(
            database_url=database_url,
            redis_url=env.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
            stripe_api_key=env.get("STRIPE_API_KEY", "sk_test_local"),
            stripe_api_base=env.get("STRIPE_API_BASE") or None,
            stripe_webhook_secret=env.get("STRIPE_WEBHOOK_SECRET", ""),
            log_level=env.get("LOG_LEVEL", "INFO").upper(),
            outbox_lease_seconds=_int(env, "OUTBOX_LEASE_SECONDS", 300),
            outbox_sweep_interval_seconds=_int(env, "OUTBOX_SWEEP_INTERVAL_SECONDS", 30),
            idempotency_key_ttl_hours=_int(env, "IDEMPOTENCY_KEY_TTL_HOURS", 24),
            default_days_until_due=_int(env, "DEFAULT_DAYS_UNTIL_DUE", 30),
            stripe_timeout_seconds=_int(env, "STRIPE_TIMEOUT_SECONDS", 20),
            mail=mail,
        )

    def flask_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "SQLALCHEMY_DATABASE_URI": self.database_url,
            # No ping before every checkout: billing.extensions pings only connections
            # left idle long enough to have been cut.
            "SQLALCHEMY_ENGINE_OPTIONS": {},
            "BILLING_SETTINGS": self,
            "JSON_SORT_KEYS": False,
        }
        config.update(self.mail)
        return config

    def redacted(self) -> dict[str, Any]:
        values = asdict(self)
        for secret in ("stripe_api_key", "stripe_webhook_secret"):
            values[secret] = "***" if values[secret] else ""
        values["mail"] = {k: ("***" if "PASSWORD" in k and v else v) for k, v in self.mail.items()}
        return values
