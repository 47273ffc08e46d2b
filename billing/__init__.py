"""The billing service: customers, invoices, payments, documents and notifications."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from billing.adapters.broker import BrokerView
from billing.adapters.stripe_gateway import StripeGateway, StripeSdkGateway
from billing.adapters.stripe_pacing import StripePacer
from billing.adapters.task_queue import CeleryJobPublisher, JobPublisher
from billing.config import ConfigError, Settings
from billing.extensions import db, ping_when_idle
from billing.platform.logging import configure_logging

# One mebibyte: far above any honest request (500 lines of 500 characters), far below harm.
MAX_REQUEST_BYTES = 1024 * 1024


class _NoStripeKey:
    """Stripe for a production process started without STRIPE_API_KEY (beat, the PDF and
    mail workers hold none): any call is a configuration error, not a request sent with an
    empty key."""

    def __getattr__(self, name: str) -> Any:
        raise ConfigError(f"STRIPE_API_KEY is not set: this process cannot call Stripe ({name})")


def create_app(
    env: Mapping[str, str] | None = None,
    *,
    publisher: JobPublisher | None = None,
    stripe_gateway: StripeGateway | None = None,
    serve_http: bool = True,
) -> Flask:
    """Build the app from the environment (or `env`); adapters may be swapped for tests.

    Workers and beat pass `serve_http=False`: they run services only, so they skip building
    the API's routes, schemas and the operators' commands, boot work that every killed or
    scaled-out worker would otherwise pay before it takes a job."""
    settings = Settings.from_env(env)
    configure_logging(settings.log_level)

    app = Flask(__name__)
    app.config.update(settings.flask_config())
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    if settings.database_url.get_secret_value():  # empty only for a production beat
        db.init_app(app)
        with app.app_context():
            for engine in db.engines.values():
                ping_when_idle(engine)

    redis_url = settings.redis_url.get_secret_value()
    app.extensions["billing.publisher"] = publisher or CeleryJobPublisher(redis_url)
    app.extensions["billing.broker_view"] = BrokerView(redis_url)
    stripe_api_key = settings.stripe_api_key.get_secret_value()
    if stripe_gateway is None and stripe_api_key:
        stripe_gateway = StripeSdkGateway(
            stripe_api_key,
            settings.stripe_api_base,
            settings.stripe_timeout_seconds,
            pacer=(
                StripePacer(redis_url, settings.stripe_max_requests_per_second)
                if settings.stripe_max_requests_per_second > 0
                else None
            ),
        )
    app.extensions["billing.stripe"] = stripe_gateway or _NoStripeKey()

    from flask_mail import Mail

    from billing.adapters.mailer import SmtpMailer
    from billing.adapters.storage import build_storage

    mail_state = Mail(app).init_app(app)
    app.extensions["billing.mailer"] = SmtpMailer(
        mail_state, settings.mail["MAIL_TIMEOUT"], ca_file=settings.mail["MAIL_CA_FILE"]
    )
    app.extensions["billing.storage"] = build_storage(settings)

    from billing.adapters.webhook_http import WebhookSender

    app.extensions["billing.webhook_sender"] = WebhookSender(
        allowed_hosts=settings.webhook_allowed_hosts,
        connect_timeout=settings.webhook_connect_timeout_seconds,
        read_timeout=settings.webhook_timeout_seconds,
    )

    from billing.views import snapshots

    # Workers record events too, shown as the API shows their objects.
    snapshots.register()
    if not serve_http:
        return app

    from billing.api import (
        credit_notes,
        customers,
        discounts,
        events,
        health,
        invoices,
        jobs,
        metrics,
        openapi,
        prices,
        subscriptions,
        tax_rates,
        webhook_endpoints,
        webhooks,
    )
    from billing.api.errors import register_error_handlers
    from billing.api.middleware import register_middleware

    register_middleware(app)
    register_error_handlers(app)
    for blueprint in (health.bp, openapi.bp, customers.bp, invoices.bp, jobs.bp, webhooks.bp):
        app.register_blueprint(blueprint)
    for blueprint in (prices.bp, subscriptions.bp, metrics.bp, events.bp, webhook_endpoints.bp):
        app.register_blueprint(blueprint)
    for blueprint in (credit_notes.bp, credit_notes.balance_bp, tax_rates.bp):
        app.register_blueprint(blueprint)
    for blueprint in (discounts.coupons_bp, discounts.promotion_codes_bp, discounts.discounts_bp):
        app.register_blueprint(blueprint)

    from billing.api.hosted import register_hosted_pages

    register_hosted_pages(app, app.extensions["billing.limiter"], settings)

    from billing.cli import register_cli

    register_cli(app)
    return app
