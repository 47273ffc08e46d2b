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


def _days(env: Mapping[str, str], name: str, default: str) -> tuple[int, ...]:
    raw = env.get(name) or default
    try:
        days = tuple(sorted({int(part) for part in raw.split(",") if part.strip()}))
    except ValueError as exc:
        raise ConfigError(f"{name} must be whole days separated by commas, got {raw!r}") from exc
    return days


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    # A typo must not read as false: MAIL_USE_TLS=ture would send passwords in plain text.
    raise ConfigError(
        f"{name} must be one of true/false, 1/0, yes/no, on/off (any case), got {raw!r}"
    )


# BILLING_ENV: "production" (deploy/ecs sets it) takes away the local defaults below; any
# other process (make run, the tests, a developer's shell) is "development".
ENVIRONMENTS = ("development", "production")
DEVELOPMENT_DATABASE_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/billing"
DEVELOPMENT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEVELOPMENT_STRIPE_API_KEY = "sk_test_local"
# What each role of the image (BILLING_ROLE, which every task definition sets and the image
# defaults to web) cannot run without in production. Beat only sends messages; only web
# serves /metrics on the public listener; Stripe's key is checked where it is used, since
# the PDF and mail workers share the worker role without holding it.
PRODUCTION_REQUIRED = {
    "web": ("DATABASE_URL", "REDIS_URL", "STRIPE_API_KEY", "METRICS_TOKEN"),
    "worker": ("DATABASE_URL", "REDIS_URL"),
    "beat": ("REDIS_URL",),
    "migrate": ("DATABASE_URL",),
}


def _environment(env: Mapping[str, str]) -> str:
    environment = (env.get("BILLING_ENV") or "development").strip().lower()
    if environment not in ENVIRONMENTS:
        raise ConfigError(
            f"BILLING_ENV must be one of {', '.join(ENVIRONMENTS)}, got {environment!r}"
        )
    return environment


def _check_production(env: Mapping[str, str]) -> None:
    role = (env.get("BILLING_ROLE") or "web").strip().lower()
    if role not in PRODUCTION_REQUIRED:
        raise ConfigError(
            f"BILLING_ROLE must be one of {', '.join(PRODUCTION_REQUIRED)}, got {role!r}"
        )
    missing = [name for name in PRODUCTION_REQUIRED[role] if not (env.get(name) or "").strip()]
    if missing:
        raise ConfigError(
            f"BILLING_ENV=production needs {', '.join(missing)} for BILLING_ROLE={role}: "
            "the local defaults are for development only"
        )


def _mail(env: Mapping[str, str]) -> dict[str, Any]:
    mail: dict[str, Any] = {
        "MAIL_SERVER": env.get("MAIL_SERVER", "localhost"),
        "MAIL_PORT": _int(env, "MAIL_PORT", 25),
        "MAIL_USE_TLS": _bool(env, "MAIL_USE_TLS", False),
        "MAIL_USE_SSL": _bool(env, "MAIL_USE_SSL", False),
        "MAIL_USERNAME": env.get("MAIL_USERNAME") or None,
        "MAIL_PASSWORD": env.get("MAIL_PASSWORD") or None,
        "MAIL_DEFAULT_SENDER": env.get("MAIL_DEFAULT_SENDER", "billing@example.com"),
        "MAIL_SUPPRESS_SEND": _bool(env, "MAIL_SUPPRESS_SEND", False),
        # Without one, a stuck SMTP server would hold a mail worker forever.
        "MAIL_TIMEOUT": _int(env, "MAIL_TIMEOUT", 30),
        # Certificates of a private CA that signs the SMTP server's; unset, the system's.
        "MAIL_CA_FILE": env.get("MAIL_CA_FILE") or None,
    }
    if mail["MAIL_USE_TLS"] and mail["MAIL_USE_SSL"]:
        raise ConfigError(
            "MAIL_USE_TLS (STARTTLS, port 587) and MAIL_USE_SSL (implicit TLS, port 465) "
            "exclude each other: set one"
        )
    encrypted = mail["MAIL_USE_TLS"] or mail["MAIL_USE_SSL"]
    if (mail["MAIL_USERNAME"] or mail["MAIL_PASSWORD"]) and not encrypted:
        raise ConfigError(
            "MAIL_USERNAME/MAIL_PASSWORD are set but neither MAIL_USE_TLS nor MAIL_USE_SSL: "
            "the SMTP password would cross the network in plain text"
        )
    ca_file = mail["MAIL_CA_FILE"]
    if ca_file is not None and not os.path.isfile(ca_file):
        raise ConfigError(f"MAIL_CA_FILE {ca_file!r} is not a file")
    return mail


def _stripe_rate(env: Mapping[str, str]) -> float:
    """STRIPE_MAX_REQUESTS_PER_SECOND, else a fifth under Stripe's documented limit for the
    key's mode (100 operations a second live, 25 in test mode), leaving room for the
    dashboard and any other system on the account; an emulator has no limit."""
    raw = env.get("STRIPE_MAX_REQUESTS_PER_SECOND")
    if raw is not None and raw.strip() != "":
        try:
            rate = float(raw)
        except ValueError as exc:
            raise ConfigError(
                f"STRIPE_MAX_REQUESTS_PER_SECOND must be a number, got {raw!r}"
            ) from exc
        if rate < 0:
            raise ConfigError(f"STRIPE_MAX_REQUESTS_PER_SECOND must be 0 or more, got {raw!r}")
        return rate
    if env.get("STRIPE_API_BASE"):
        return 0.0
    key = env.get("STRIPE_API_KEY", "")
    return 80.0 if key.startswith(("sk_live_", "rk_live_")) else 20.0


def _rate_limit(env: Mapping[str, str], name: str, default: str) -> str:
    """A Flask-Limiter limit string ("100 per second;3000 per minute"), checked now so that a
    typo stops the app at boot rather than lifting the limit in the first request."""
    from limits import parse_many

    raw = (env.get(name) or "").strip() or default
    try:
        parse_many(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be limits like '10 per second;300 per minute'") from exc
    return raw


def _hour(env: Mapping[str, str], name: str, default: int) -> int:
    hour = _int(env, name, default)
    if not 0 <= hour <= 23:
        raise ConfigError(f"{name} must be 0 to 23, got {hour}")
    return hour


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
    # Stripe calls per second, from every process together (0: unpaced).
    stripe_max_requests_per_second: float
    mail: dict[str, Any] = field(default_factory=dict)
    # The seller block printed on every invoice and signed under every email.
    seller_name: str = "Example SaaS Ltd"
    seller_address: tuple[str, ...] = ()
    seller_tax_id: str | None = None
    seller_email: str | None = None
    seller_logo_path: str | None = None
    seller_payment_instructions: str | None = None
    # Where customers manage their billing (finish 3-D Secure, change their card).
    customer_portal_url: str | None = None
    # Where rendered PDFs are kept: "postgres" (no other server needed) or "s3".
    document_storage: str = "postgres"
    s3_bucket: str | None = None
    s3_prefix: str = "invoices/"
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    # Dunning runs once a night at this hour (UTC), when few customers pay by hand.
    dunning_hour: int = 3
    # Retries of a failed automatic charge, in days after the first failure (Stripe's
    # Smart Retries spread a few tries over about a week).
    dunning_retry_days: tuple[int, ...] = (3, 5, 7)
    # Reminders of a send_invoice invoice, in days relative to its due date.
    dunning_reminder_days: tuple[int, ...] = (-3, 0, 3, 7)
    # How long one beat holds the scheduler lock in Redis without renewing it: a killed
    # beat is replaced by a waiting one within this time.
    beat_lock_timeout_seconds: int = 30
    # Bearer token /metrics asks for; unset, /metrics is open (to the internal network).
    metrics_token: str | None = None
    # Where beat's job billing.publish_queue_metrics puts each queue's depth and oldest
    # message age in CloudWatch, for the workers' autoscaling. Unset: nothing is published.
    cloudwatch_namespace: str | None = None
    # A file workers and beat touch while their loop runs; the container health check
    # (deploy/healthcheck.py) reads its age. Unset: no file is written.
    heartbeat_file: str | None = None
    # The nightly reconciliation with Stripe runs at half past this hour (UTC): after
    # dunning's retries, so that it checks them too.
    reconcile_hour: int = 4
    # Requests per API key (Flask-Limiter strings, counted in Redis). Admin keys are the
    # company's app working for every customer; a customer key is one of many sharing the
    # service, so it gets a tenth: ample for a dashboard or a customer's own integration.
    api_rate_limit: str = "100 per second;3000 per minute"
    api_rate_limit_customer: str = "10 per second;300 per minute"
    # Card attaches per customer key: each one is a call to Stripe, and a leaked key must
    # not become a way to test stolen cards against our Stripe account.
    card_attach_rate_limit: str = "10 per hour"
    # Charge attempts per invoice in 24 hours after which the API refuses to start another:
    # card networks penalise merchants that retry one card too often, and every failed
    # attempt mails the customer.
    pay_attempts_per_invoice_per_day: int = 5
    # "production" or "development" (BILLING_ENV): production has no local defaults.
    environment: str = "development"

    @property
    def production(self) -> bool:
        return self.environment == "production"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        environment = _environment(env)
        production = environment == "production"
        if production:
            _check_production(env)
        # In production an unset value stays empty (beat needs no database, the PDF worker
        # no Stripe key): _check_production stopped every role that needs one.
        database_url = env.get("DATABASE_URL") or ("" if production else DEVELOPMENT_DATABASE_URL)
        if database_url.startswith("postgresql://"):
            database_url = "postgresql+psycopg2://" + database_url.removeprefix("postgresql://")
        mail = _mail(env)
        storage = env.get("DOCUMENT_STORAGE", "postgres").strip().lower()
        if storage not in ("postgres", "s3"):
            raise ConfigError(f"DOCUMENT_STORAGE must be postgres or s3, got {storage!r}")
        if storage == "s3" and not env.get("S3_BUCKET"):
            raise ConfigError("DOCUMENT_STORAGE=s3 needs S3_BUCKET")
        return cls(
            database_url=database_url,
            redis_url=env.get("REDIS_URL", DEVELOPMENT_REDIS_URL),
            stripe_api_key=env.get("STRIPE_API_KEY")
            or ("" if production else DEVELOPMENT_STRIPE_API_KEY),
            stripe_api_base=env.get("STRIPE_API_BASE") or None,
            stripe_webhook_secret=env.get("STRIPE_WEBHOOK_SECRET", ""),
            log_level=env.get("LOG_LEVEL", "INFO").upper(),
            outbox_lease_seconds=_int(env, "OUTBOX_LEASE_SECONDS", 300),
            outbox_sweep_interval_seconds=_int(env, "OUTBOX_SWEEP_INTERVAL_SECONDS", 5),
            idempotency_key_ttl_hours=_int(env, "IDEMPOTENCY_KEY_TTL_HOURS", 24),
            default_days_until_due=_int(env, "DEFAULT_DAYS_UNTIL_DUE", 30),
            stripe_timeout_seconds=_int(env, "STRIPE_TIMEOUT_SECONDS", 20),
            stripe_max_requests_per_second=_stripe_rate(env),
            mail=mail,
            seller_name=env.get("SELLER_NAME") or "Example SaaS Ltd",
            # Lines separated by "|" or new lines, as an environment variable can hold them.
            seller_address=tuple(
                line.strip()
                for line in env.get("SELLER_ADDRESS", "").replace("|", "\n").splitlines()
                if line.strip()
            ),
            seller_tax_id=env.get("SELLER_TAX_ID") or None,
            seller_email=env.get("SELLER_EMAIL") or None,
            seller_logo_path=env.get("SELLER_LOGO_PATH") or None,
            seller_payment_instructions=env.get("SELLER_PAYMENT_INSTRUCTIONS") or None,
            customer_portal_url=env.get("CUSTOMER_PORTAL_URL") or None,
            document_storage=storage,
            s3_bucket=env.get("S3_BUCKET") or None,
            s3_prefix=env.get("S3_PREFIX", "invoices/"),
            s3_endpoint_url=env.get("S3_ENDPOINT_URL") or None,
            s3_region=env.get("S3_REGION") or env.get("AWS_REGION") or None,
            dunning_hour=_hour(env, "DUNNING_HOUR", 3),
            dunning_retry_days=_days(env, "DUNNING_RETRY_DAYS", "3,5,7"),
            dunning_reminder_days=_days(env, "DUNNING_REMINDER_DAYS", "-3,0,3,7"),
            beat_lock_timeout_seconds=max(3, _int(env, "BEAT_LOCK_TIMEOUT_SECONDS", 30)),
            metrics_token=env.get("METRICS_TOKEN") or None,
            cloudwatch_namespace=env.get("CLOUDWATCH_NAMESPACE") or None,
            heartbeat_file=env.get("HEARTBEAT_FILE") or None,
            reconcile_hour=_hour(env, "RECONCILE_HOUR", 4),
            api_rate_limit=_rate_limit(env, "API_RATE_LIMIT", "100 per second;3000 per minute"),
            api_rate_limit_customer=_rate_limit(
                env, "API_RATE_LIMIT_CUSTOMER", "10 per second;300 per minute"
            ),
            card_attach_rate_limit=_rate_limit(env, "CARD_ATTACH_RATE_LIMIT", "10 per hour"),
            pay_attempts_per_invoice_per_day=max(
                1, _int(env, "PAY_ATTEMPTS_PER_INVOICE_PER_DAY", 5)
            ),
            environment=environment,
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
        for secret in ("stripe_api_key", "stripe_webhook_secret", "metrics_token"):
            values[secret] = "***" if values[secret] else ""
        values["mail"] = {k: ("***" if "PASSWORD" in k and v else v) for k, v in self.mail.items()}
        return values
