"""Settings read from the environment when the app is created, never at import time.

Every setting is a field of `Settings`, read from the environment variable of the same name
in capitals (`mail_use_tls` from MAIL_USE_TLS); .env.example lists them all. An empty or
blank variable counts as unset, as `NAME=` in .env.example does. Every bad variable is
reported at once, in one ConfigError, so that a start fails once, not once per typo.

Secrets are SecretStr: they print as stars (repr, logs, errors) and only the code that
hands one to its library (a Stripe client, the SMTP login) reads `.get_secret_value()`.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    AliasGenerator,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


class ConfigError(RuntimeError):
    """A setting is missing or malformed. Raised by Settings.from_env with every problem of
    the environment in one message (and in `problems`, one line each)."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems) or (message,)


# The exit status of a process stopped by its settings: the `billing` command's status for
# a usage error, which a bad environment is.
EXIT_BAD_SETTINGS = 2


@contextmanager
def stop_on_bad_settings() -> Iterator[None]:
    """Around the start of a process (gunicorn's configuration, `celery -A workers`, the
    `billing` command): bad settings end it with their one message, not with a traceback
    that buries the message, or, under click, a "no such command" after it."""
    try:
        yield
    except ConfigError as exc:
        print(f"billing: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_SETTINGS) from None


# BILLING_ENV: "production" (deploy/ecs sets it) takes away the local defaults below; any
# other process (make run, the tests, a developer's shell) is "development".
ENVIRONMENTS = ("development", "production")
DEVELOPMENT_DATABASE_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/billing"
DEVELOPMENT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEVELOPMENT_STRIPE_API_KEY = "sk_test_local"
# Signs hosted invoice links on a developer's machine; never valid in production.
DEVELOPMENT_HOSTED_LINK_KEY = "dev:development-only-hosted-link-signing-key"
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
ROLES = tuple(PRODUCTION_REQUIRED)
# Variables whose empty value means something: an empty S3_PREFIX keeps documents at the
# bucket's root, where unset keeps them under the default prefix.
EMPTY_IS_A_VALUE = frozenset({"S3_PREFIX"})


def variable(field_name: str) -> str:
    """The environment variable a field is read from, spelt as the user sets it."""
    alias = Settings.model_fields[field_name].validation_alias
    if isinstance(alias, AliasChoices):
        alias = alias.choices[0]
    return str(alias)


def _name(info: ValidationInfo) -> str:
    assert info.field_name is not None
    return variable(info.field_name)


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _switch(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    # A typo must not read as false: MAIL_USE_TLS=ture would send passwords in plain text.
    raise ValueError(
        f"{_name(info)} must be one of true/false, 1/0, yes/no, on/off (any case), got {value!r}"
    )


def _integer(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{_name(info)} must be an integer, got {value!r}") from None


def _hour(hour: int, info: ValidationInfo) -> int:
    if not 0 <= hour <= 23:
        raise ValueError(f"{_name(info)} must be 0 to 23, got {hour}")
    return hour


def _port(port: int, info: ValidationInfo) -> int:
    if not 1 <= port <= 65535:
        raise ValueError(f"{_name(info)} must be a port number (1 to 65535), got {port}")
    return port


def _positive(count: int, info: ValidationInfo) -> int:
    if count < 1:
        raise ValueError(f"{_name(info)} must be 1 or more, got {count}")
    return count


def _days(value: Any, info: ValidationInfo) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return tuple(sorted({int(part) for part in value.split(",") if part.strip()}))
    except ValueError:
        raise ValueError(
            f"{_name(info)} must be whole days separated by commas, got {value!r}"
        ) from None


def _lines(value: Any) -> Any:
    # Lines separated by "|" or new lines, as an environment variable can hold them.
    if not isinstance(value, str):
        return value
    return tuple(line.strip() for line in value.replace("|", "\n").splitlines() if line.strip())


def _hex_colour(value: str) -> str:
    if not re.fullmatch(r"#[0-9a-fA-F]{6}", value):
        raise ValueError(f"must be a colour as #rrggbb, got {value!r}")
    return value.lower()


def _country(value: Any, info: ValidationInfo) -> Any:
    if value is None:
        return None
    code = str(value).strip().upper()
    if len(code) != 2 or not code.isascii() or not code.isalpha():
        raise ValueError(f"{_name(info)} must be an ISO 3166 alpha-2 country code, got {value!r}")
    return code


def _rate_limit(value: Any, info: ValidationInfo) -> Any:
    """A Flask-Limiter limit string ("100 per second;3000 per minute"), checked now so that a
    typo stops the app at start rather than lifting the limit in the first request."""
    from limits import parse_many

    limits = str(value).strip()
    try:
        parse_many(limits)
    except ValueError:
        raise ValueError(
            f"{_name(info)} must be limits like '10 per second;300 per minute', got {value!r}"
        ) from None
    return limits


def _one_of(*choices: str) -> BeforeValidator:
    def check(value: Any, info: ValidationInfo) -> str:
        choice = str(value).strip().lower()
        if choice not in choices:
            raise ValueError(f"{_name(info)} must be one of {', '.join(choices)}, got {choice!r}")
        return choice

    return BeforeValidator(check)


def _log_level(value: Any, info: ValidationInfo) -> str:
    level = str(value).strip().upper()
    # Checked here: the logging module refuses an unknown name only once it is set up.
    if level not in logging.getLevelNamesMapping():
        raise ValueError(
            f"{_name(info)} must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got {value!r}"
        )
    return level


Switch = Annotated[bool, BeforeValidator(_switch)]
Integer = Annotated[int, BeforeValidator(_integer)]
Hour = Annotated[int, BeforeValidator(_integer), AfterValidator(_hour)]
Port = Annotated[int, BeforeValidator(_integer), AfterValidator(_port)]
Count = Annotated[int, BeforeValidator(_integer), AfterValidator(_positive)]
# NoDecode: read as "3,5,7", not as the JSON pydantic-settings expects for a tuple.
Days = Annotated[tuple[int, ...], NoDecode, BeforeValidator(_days)]
Lines = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_lines)]
RateLimit = Annotated[str, BeforeValidator(_rate_limit)]


class _Environment(EnvSettingsSource):
    """Environment variables from a given mapping (os.environ, or a test's dict), with blank
    values dropped so that they count as unset."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {
            name: value
            for name, value in self._environ.items()
            if value.strip() or name in EMPTY_IS_A_VALUE
        }


class Settings(BaseSettings):
    """The service's settings. Fields are validated in the order declared, and a check that
    depends on another setting (`info.data`) comes after it; a check whose input was itself
    bad is skipped, since that input is already reported."""

    model_config = SettingsConfigDict(
        case_sensitive=True,
        frozen=True,
        alias_generator=AliasGenerator(validation_alias=str.upper),
        # A secret's value never enters a validation error's text.
        hide_input_in_errors=True,
    )

    # "production" or "development" (BILLING_ENV): production has no local defaults.
    environment: Annotated[Literal["development", "production"], _one_of(*ENVIRONMENTS)] = Field(
        "development", validation_alias="BILLING_ENV"
    )
    # The image's role (web, worker, beat, migrate): what production requires to start.
    role: Annotated[Literal["web", "worker", "beat", "migrate"], _one_of(*ROLES)] = Field(
        "web", validation_alias="BILLING_ROLE"
    )
    # Empty only in production, for a role that needs no database (beat).
    database_url: SecretStr = Field(None, validate_default=True)
    redis_url: SecretStr = Field(None, validate_default=True)
    # Empty only in production, for a role that never calls Stripe.
    stripe_api_key: SecretStr = Field(None, validate_default=True)
    # Only for an emulator: the SDK's API base.
    stripe_api_base: str | None = None
    stripe_webhook_secret: SecretStr = SecretStr("")
    # How long one Stripe call may take before its outcome counts as unknown.
    stripe_timeout_seconds: Integer = 20
    # Stripe calls per second, from every process together (0: unpaced).
    stripe_max_requests_per_second: float = Field(None, validate_default=True)

    mail_server: str = "localhost"
    mail_port: Port = 25
    mail_use_tls: Switch = False
    mail_use_ssl: Switch = False
    mail_username: SecretStr | None = None
    mail_password: SecretStr | None = None
    mail_default_sender: str = "billing@example.com"
    mail_suppress_send: Switch = False
    # Without one, a stuck SMTP server would hold a mail worker forever.
    mail_timeout: Integer = 30
    # Certificates of a private CA that signs the SMTP server's; unset, the system's.
    mail_ca_file: str | None = None

    log_level: Annotated[str, BeforeValidator(_log_level)] = "INFO"
    # How long a published job may stay unfinished before the sweeper sends it again: longer
    # than any task's run, short enough that a lost job is noticed soon.
    outbox_lease_seconds: Integer = 300
    outbox_sweep_interval_seconds: Integer = 5
    # Stripe keeps idempotency keys 24 hours; we keep ours at least as long.
    idempotency_key_ttl_hours: Integer = 24
    # Stripe's default: invoices sent for manual payment are due after 30 days.
    default_days_until_due: Integer = 30

    # The seller block printed on every invoice and signed under every email.
    seller_name: str = "Example SaaS Ltd"
    seller_address: Lines = ()
    seller_tax_id: str | None = None
    seller_email: str | None = None
    seller_logo_path: str | None = None
    seller_payment_instructions: str | None = None
    # Where the seller is established (ISO alpha-2): the tax rules' home country. Unset,
    # the rules charge no tax but the caller's own (billing.taxes.rules).
    seller_country: Annotated[str | None, BeforeValidator(_country)] = None
    # VIES's REST API, asked at finalization to confirm a reverse-charged buyer's VAT id
    # (billing.adapters.vies); unset, nobody is asked.
    vies_url: str | None = None
    # VIES is often slow; finalization waits no longer than this for its word.
    vies_timeout_seconds: Integer = 5
    # The seller's address in parts (its country: seller_country), contact and bank
    # account, as e-invoices (EN 16931) need them; kept with every invoice finalized from
    # then on, as the block above.
    seller_street: str | None = None
    seller_city: str | None = None
    seller_postal_code: str | None = None
    seller_phone: str | None = None
    seller_iban: str | None = None
    seller_bic: str | None = None
    # Which invoices must be able to yield a valid e-invoice to be finalized: none, those a
    # seller in the EU issues to businesses in the EU (the EU's mandates), or all. Opt-in:
    # SELLER_COUNTRY alone also switches the tax rules on, and must not stop finalizing.
    einvoice_required: Annotated[
        Literal["never", "eu_business", "always"], _one_of("never", "eu_business", "always")
    ] = "never"
    # Emails that carry an invoice's or credit note's PDF (a Factur-X file) carry its CII
    # XML beside it too, for a buyer whose system reads the XML alone.
    einvoice_email_attachment: bool = False
    # Where customers manage their billing in the company's own app: when set, an extra
    # link in every email, beside the invoice's own hosted page.
    customer_portal_url: str | None = None
    # The address customers reach this service's hosted invoice pages at (scheme, host and
    # any path prefix); links in emails and the API are made from it. Unset in development,
    # the address `make run` serves on.
    public_base_url: str | None = None
    # Keys that sign hosted invoice links, as "kid:secret" separated by commas: the first
    # signs, every one verifies, so a key is rotated by putting a new one first and dropping
    # the old one once its links may go. Unset in production: no hosted pages.
    hosted_link_keys: SecretStr = Field(None, validate_default=True)
    # A hosted link keeps working while its invoice is open and this many days after it is
    # paid, voided or written off; a link asked for again lasts as long from then.
    hosted_link_days: Annotated[int, BeforeValidator(_integer), Field(ge=1, le=3650)] = 30
    # Requests to the hosted pages per link and per client address: a person reads, pays
    # and downloads a few times a minute; a guesser or a card tester asks far more.
    hosted_link_rate_limit: RateLimit = "60 per minute;600 per hour"
    hosted_address_rate_limit: RateLimit = "120 per minute;2000 per hour"
    # Stripe.js on the hosted page: the publishable key of the same account as
    # STRIPE_API_KEY, and where the script is served from (an emulator serves its own).
    stripe_publishable_key: str | None = None
    stripe_js_url: str = "https://js.stripe.com/v3/"
    # The hosted page's accent colour (links, buttons), as CSS hex.
    brand_color: Annotated[str, AfterValidator(_hex_colour)] = "#1f4e79"

    # Where rendered PDFs are kept: "postgres" (no other server needed) or "s3".
    document_storage: Annotated[Literal["postgres", "s3"], _one_of("postgres", "s3")] = "postgres"
    s3_bucket: str | None = Field(None, validate_default=True)
    s3_prefix: str = "invoices/"
    s3_endpoint_url: str | None = None
    # boto3's own AWS_REGION when S3_REGION is unset.
    s3_region: str | None = Field(None, validation_alias=AliasChoices("S3_REGION", "AWS_REGION"))

    # Dunning runs once a night at this hour (UTC), when few customers pay by hand.
    dunning_hour: Hour = 3
    # Retries of a failed automatic charge, in days after the first failure (Stripe's
    # Smart Retries spread a few tries over about a week).
    dunning_retry_days: Days = (3, 5, 7)
    # Reminders of a send_invoice invoice, in days relative to its due date.
    dunning_reminder_days: Days = (-3, 0, 3, 7)
    # A trial's end is announced (event and email) this many days before it, Stripe's
    # three: time enough to add a card or cancel before the first charge.
    trial_will_end_days: Annotated[int, BeforeValidator(_integer), Field(ge=0, le=30)] = 3
    # How long one beat holds the scheduler lock in Redis without renewing it: a killed
    # beat is replaced by a waiting one within this time. Beat renews it a few times per
    # period, so a shorter one is raised to where that still works.
    beat_lock_timeout_seconds: Annotated[Integer, AfterValidator(lambda s: max(3, s))] = 30
    # The nightly reconciliation with Stripe runs at half past this hour (UTC): after
    # dunning's retries, so that it checks them too.
    reconcile_hour: Hour = 4

    # Bearer token /metrics asks for; empty, /metrics is open (to the internal network).
    metrics_token: SecretStr = Field(None, validate_default=True)
    # The port a worker or beat serves its own metrics on (workers/metrics.py); none unset.
    metrics_port: Port | None = None
    # Where beat's job billing.publish_queue_metrics puts each queue's depth and oldest
    # message age in CloudWatch, for the workers' autoscaling. Unset: nothing is published.
    cloudwatch_namespace: str | None = None
    # A file workers and beat touch while their loop runs; the container health check
    # (deploy/healthcheck.py) reads its age. Unset: no file is written.
    heartbeat_file: str | None = None

    # gunicorn (gunicorn.conf.py): the web's port, worker processes and threads in each.
    port: Port = 8000
    web_concurrency: Count = 2
    web_threads: Count = 4

    # Requests per API key (Flask-Limiter strings, counted in Redis). Admin keys are the
    # company's app working for every customer; a customer key is one of many sharing the
    # service, so it gets a tenth: ample for a dashboard or a customer's own integration.
    api_rate_limit: RateLimit = "100 per second;3000 per minute"
    api_rate_limit_customer: RateLimit = "10 per second;300 per minute"
    # Card attaches per customer key: each one is a call to Stripe, and a leaked key must
    # not become a way to test stolen cards against our Stripe account.
    card_attach_rate_limit: RateLimit = "10 per hour"
    # Charge attempts per invoice in 24 hours after which the API refuses to start another:
    # card networks penalise merchants that retry one card too often, and every failed
    # attempt mails the customer. Below one, no invoice could be paid at all.
    pay_attempts_per_invoice_per_day: Annotated[Integer, AfterValidator(lambda n: max(1, n))] = 5

    # Events are kept this long, then pruned by beat (deliveries go with them).
    event_retention_days: Count = 365
    # Outgoing webhooks. Hosts (exact names or addresses) that may be sent to over http and
    # at any address: only for tests and receivers inside the company's own network;
    # every other endpoint must be https at a public address.
    webhook_allowed_hosts: Lines = ()
    # A failing delivery is retried, doubling from the first wait up to the longest,
    # for this long; then it ends failed.
    webhook_retry_first_seconds: Count = 30
    webhook_retry_longest_seconds: Count = 6 * 3600
    webhook_retry_for_seconds: Count = 3 * 24 * 3600
    # An endpoint that took no delivery for this long is disabled, and the seller told.
    webhook_disable_after_seconds: Count = 3 * 24 * 3600
    # A later event of an object waits at most this long for an earlier one still being
    # retried; then it goes anyway, and the receiver orders them by sequence.
    webhook_order_wait_seconds: Count = 3600
    # After a secret is rolled, the old one goes on signing for this long.
    webhook_secret_overlap_seconds: Integer = 24 * 3600
    webhook_connect_timeout_seconds: float = 3.0
    webhook_timeout_seconds: float = 10.0
    # How often beat hands new events to the endpoints (and releases held deliveries).
    webhook_dispatch_interval_seconds: Count = 2

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The process's environment only: `billing -e FILE` and Flask load a .env into it.
        return init_settings, _Environment(settings_cls, os.environ)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings from `env` (default: the process's environment); a ConfigError that
        names every bad variable if any is."""
        environ = os.environ if env is None else env
        try:
            # BaseSettings' own keyword (mypy sees only the fields' __init__).
            return cls(_build_sources=((_Environment(cls, environ),), {}))  # type: ignore[call-arg]
        except ValidationError as exc:
            # `from None`: pydantic's own report would print each value, secrets included.
            raise _invalid(exc.errors()) from None

    # Checks that read other settings; each runs after the settings it reads.

    @field_validator("database_url", mode="before")
    @classmethod
    def _database_url(cls, value: Any, info: ValidationInfo) -> str:
        url = _unset_in_production(value, info, DEVELOPMENT_DATABASE_URL)
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg2://" + url.removeprefix("postgresql://")
        return url

    @field_validator("redis_url", mode="before")
    @classmethod
    def _redis_url(cls, value: Any, info: ValidationInfo) -> str:
        url = _unset_in_production(value, info, "")
        # Unset, the local broker even in production: a migration builds the app but
        # never sends a message, and every role that does needs REDIS_URL set.
        return url or DEVELOPMENT_REDIS_URL

    @field_validator("stripe_api_key", mode="before")
    @classmethod
    def _stripe_api_key(cls, value: Any, info: ValidationInfo) -> str:
        return _unset_in_production(value, info, DEVELOPMENT_STRIPE_API_KEY)

    @field_validator("hosted_link_keys", mode="before")
    @classmethod
    def _hosted_link_keys(cls, value: Any, info: ValidationInfo) -> str:
        keys = _unset_in_production(value, info, DEVELOPMENT_HOSTED_LINK_KEY)
        for entry in filter(None, (part.strip() for part in keys.split(","))):
            kid, _, secret = entry.partition(":")
            if not kid or len(secret) < 32:
                raise ValueError(
                    f"{_name(info)} must be 'kid:secret' pairs separated by commas, each "
                    "secret at least 32 characters"
                )
        return keys

    @field_validator("metrics_token", mode="before")
    @classmethod
    def _metrics_token(cls, value: Any, info: ValidationInfo) -> str:
        return _unset_in_production(value, info, "")

    @field_validator("stripe_max_requests_per_second", mode="before")
    @classmethod
    def _stripe_pace(cls, value: Any, info: ValidationInfo) -> float:
        """Set, any pace (0: none). Unset, a fifth under Stripe's documented limit for the
        key's mode (100 operations a second live, 25 in test mode), leaving room for the
        dashboard and any other system on the account; an emulator has no limit."""
        if value is None:
            if info.data.get("stripe_api_base"):
                return 0.0
            key = info.data.get("stripe_api_key") or SecretStr("")
            return 80.0 if key.get_secret_value().startswith(("sk_live_", "rk_live_")) else 20.0
        try:
            rate = float(value)
        except (TypeError, ValueError):
            rate = math.nan
        if math.isnan(rate):
            raise ValueError(f"{_name(info)} must be a number, got {value!r}")
        if rate < 0:
            raise ValueError(f"{_name(info)} must be 0 or more, got {value!r}")
        return rate

    @field_validator("mail_use_ssl")
    @classmethod
    def _one_kind_of_tls(cls, use_ssl: bool, info: ValidationInfo) -> bool:
        if use_ssl and info.data.get("mail_use_tls"):
            raise ValueError(
                "MAIL_USE_TLS (STARTTLS, port 587) and MAIL_USE_SSL (implicit TLS, port 465) "
                "exclude each other: set one"
            )
        return use_ssl

    @field_validator("mail_username", "mail_password")
    @classmethod
    def _credentials_only_over_tls(
        cls, credential: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        flags = ("mail_use_tls", "mail_use_ssl")
        if credential is None or not all(flag in info.data for flag in flags):
            return credential  # unset, or a switch is bad and already reported
        if not any(info.data[flag] for flag in flags):
            raise ValueError(
                f"{_name(info)} is set but neither MAIL_USE_TLS nor MAIL_USE_SSL: "
                "the SMTP password would cross the network in plain text"
            )
        return credential

    @field_validator("mail_ca_file")
    @classmethod
    def _ca_file_exists(cls, ca_file: str | None) -> str | None:
        if ca_file is not None and not os.path.isfile(ca_file):
            raise ValueError(f"MAIL_CA_FILE {ca_file!r} is not a file")
        return ca_file

    @field_validator("s3_bucket")
    @classmethod
    def _bucket_for_s3(cls, bucket: str | None, info: ValidationInfo) -> str | None:
        if bucket is None and info.data.get("document_storage") == "s3":
            raise ValueError("DOCUMENT_STORAGE=s3 needs S3_BUCKET")
        return bucket

    @property
    def production(self) -> bool:
        return self.environment == "production"

    @property
    def hosted_base_url(self) -> str | None:
        """Where hosted invoice pages are reached: PUBLIC_BASE_URL, or in development the
        address this service listens on."""
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        return None if self.production else f"http://127.0.0.1:{self.port}"

    @property
    def mail(self) -> dict[str, Any]:
        """Flask-Mail's settings, by its names; the credentials still SecretStr."""
        return {
            "MAIL_SERVER": self.mail_server,
            "MAIL_PORT": self.mail_port,
            "MAIL_USE_TLS": self.mail_use_tls,
            "MAIL_USE_SSL": self.mail_use_ssl,
            "MAIL_USERNAME": self.mail_username,
            "MAIL_PASSWORD": self.mail_password,
            "MAIL_DEFAULT_SENDER": self.mail_default_sender,
            "MAIL_SUPPRESS_SEND": self.mail_suppress_send,
            "MAIL_TIMEOUT": self.mail_timeout,
            "MAIL_CA_FILE": self.mail_ca_file,
        }

    def flask_config(self) -> dict[str, Any]:
        """Flask's config: the one place secrets are unwrapped for libraries that read them
        from it (Flask-SQLAlchemy the database URL, Flask-Mail the SMTP login)."""
        config: dict[str, Any] = {
            "SQLALCHEMY_DATABASE_URI": self.database_url.get_secret_value(),
            # No ping before every checkout: billing.extensions pings only connections
            # left idle long enough to have been cut.
            "SQLALCHEMY_ENGINE_OPTIONS": {},
            "BILLING_SETTINGS": self,
            "JSON_SORT_KEYS": False,
        }
        for name, value in self.mail.items():
            config[name] = value.get_secret_value() if isinstance(value, SecretStr) else value
        return config

    def redacted(self) -> dict[str, Any]:
        values = self.model_dump()
        for name, value in values.items():
            if isinstance(value, SecretStr):
                values[name] = "***" if value.get_secret_value() else ""
        values["mail"] = {
            name: ("***" if value else None) if isinstance(value, SecretStr) else value
            for name, value in self.mail.items()
        }
        return values


def _unset_in_production(value: Any, info: ValidationInfo, development_default: str) -> str:
    """A setting with a local default: that default in development when unset; in production
    nothing, and an error when the process's role needs it."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value:
        return str(value)
    if info.data.get("environment") != "production":
        return development_default
    name, role = _name(info), info.data.get("role")
    if role is not None and name in PRODUCTION_REQUIRED[role]:
        raise ValueError(
            f"BILLING_ENV=production needs {name} for BILLING_ROLE={role}: "
            "the local defaults are for development only"
        )
    return ""


def _invalid(errors: list[ErrorDetails]) -> ConfigError:
    problems = [_problem(error) for error in errors]
    count = f"{len(problems)} bad setting{'s' if len(problems) > 1 else ''}"
    lines = "\n".join(f"  {problem}" for problem in problems)
    return ConfigError(f"{count} in the environment (see .env.example):\n{lines}", problems)


def _problem(error: ErrorDetails) -> str:
    # Our own checks say what is wrong in a sentence that names the variable.
    cause = error.get("ctx", {}).get("error")
    if error["type"] == "value_error" and cause is not None:
        return str(cause)
    # pydantic's own: its message, never the value (it may be a secret).
    name = ".".join(str(part) for part in error["loc"]) or "settings"
    return f"{name}: {error['msg']}"
