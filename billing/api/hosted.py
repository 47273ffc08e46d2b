"""The hosted invoice page: server-rendered HTML at a signed link, for the invoice's
customer, outside API-key authentication.

Safe by construction: every POST carries a CSRF token (Flask-WTF, bound to a SameSite
session cookie); a strict Content-Security-Policy allows scripts from this service and
Stripe.js only, and no inline script or style; no referrer leaves the page (its address is
the secret); requests are limited per link and per client address. A bad or expired link
answers the same 404 page whatever the reason.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    jsonify,
    make_response,
    render_template,
    request,
    send_file,
    send_from_directory,
    url_for,
)
from flask_limiter import Limiter, RateLimitExceeded
from flask_limiter.util import get_remote_address
from flask_wtf.csrf import CSRFError, CSRFProtect, generate_csrf

from billing.api.pdf import pdf_response, xml_response
from billing.charging.charges import InvoiceNotPayable, TooManyPaymentAttempts
from billing.config import Settings
from billing.documents import documents
from billing.einvoices import service as einvoices
from billing.hosted import pages, payments
from billing.models import Invoice
from billing.platform import context
from billing.platform.errors import ServiceError
from billing.platform.logging import get_logger

log = get_logger(__name__)

bp = Blueprint(
    "hosted",
    __name__,
    url_prefix="/pay",
    template_folder="templates",
    static_folder="static/hosted",
    static_url_path="/assets",
)
csrf = CSRFProtect()
FONTS = Path(documents.__file__).parent / "templates" / "fonts"

# What the page may load: itself, and Stripe.js with the frames and calls it makes.
_STRIPE_HOSTS = ("https://api.stripe.com", "https://hooks.stripe.com", "https://m.stripe.network")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(settings: Settings) -> str:
    stripe_js = _origin(settings.stripe_js_url)
    stripe = " ".join(
        dict.fromkeys((stripe_js, *(_STRIPE_HOSTS if stripe_js == "https://js.stripe.com" else ())))
    )
    return "; ".join(
        (
            "default-src 'none'",
            f"script-src 'self' {stripe_js}",
            f"connect-src 'self' {stripe}",
            f"frame-src {stripe}",
            "img-src 'self' data:",
            "style-src 'self'",
            "font-src 'self'",
            "form-action 'self'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        )
    )


@bp.after_request
def _harden(response: Response) -> Response:
    settings = context.settings()
    response.headers["Content-Security-Policy"] = content_security_policy(settings)
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    if request.endpoint != "hosted.static":
        # The page carries the link itself and, while a payment waits, its client secret.
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def _page_shell(template: str, status: int = 200, **values: Any) -> Response:
    settings = context.settings()
    body = render_template(
        f"hosted/{template}",
        seller_name=settings.seller_name,
        csrf_token=generate_csrf(),
        publishable_key=settings.stripe_publishable_key,
        stripe_js_url=settings.stripe_js_url,
        has_logo=bool(settings.seller_logo_path),
        **values,
    )
    return make_response(body, status)


def _not_valid(token: str | None = None) -> Response:
    return _page_shell("not_found.html", 404, token=token or "")


def _opened(token: str) -> Invoice:
    try:
        return pages.open_link(token)
    except pages.LinkNotValid:
        abort(_not_valid(token))


def _wants_json() -> bool:
    return request.accept_mimetypes.best == "application/json" or request.is_json


def _answer(token: str, invoice: Invoice, message: str, status: int = 200) -> Response:
    """A POST's answer: JSON for the page's script, else back to the page (303). The
    invoice is read again as the change left it (its commit expired what was loaded)."""
    if _wants_json():
        response = jsonify({"message": message, **_status_of(invoice)})
        response.status_code = status
        return response
    back = make_response("", 303)
    back.headers["Location"] = url_for("hosted.page", token=token, _anchor="payment")
    return back


def _refused(token: str, invoice: Invoice, error: ServiceError) -> Response:
    if _wants_json():
        response = jsonify({"error": {"code": error.code, "message": str(error)}})
        response.status_code = error.status
        return response
    return _page_shell(
        "page.html", error.status, page=pages.page_of(invoice), token=token, error=str(error)
    )


def _status_of(invoice: Invoice) -> dict[str, Any]:
    page_state = pages.pay_state(invoice, pages.attempts_of(invoice))
    return {
        "status": invoice.status,
        "state": page_state.state,
        "payment_message": page_state.message,
        "client_secret": page_state.client_secret,
    }


@bp.get("/<token>")
def page(token: str) -> Response:
    invoice = _opened(token)
    return _page_shell("page.html", page=pages.page_of(invoice), token=token, error=None)


@bp.get("/<token>/status")
def status(token: str) -> Response:
    invoice = _opened(token)
    return jsonify(_status_of(invoice))


@bp.post("/<token>/pay")
def pay(token: str) -> Response:
    invoice = _opened(token)
    try:
        charge = payments.pay_with_saved_card(invoice)
    except (InvoiceNotPayable, TooManyPaymentAttempts) as exc:
        return _refused(token, invoice, exc)
    log.info("hosted.pay", invoice_id=invoice.id, started=charge.created)
    return _answer(token, invoice, "Your payment is being processed.", 202)


@bp.post("/<token>/card-setup")
def card_setup(token: str) -> Response:
    invoice = _opened(token)
    try:
        setup = payments.start_card_setup(invoice)
    except ServiceError as exc:
        return _refused(token, invoice, exc)
    return jsonify({"client_secret": setup.client_secret})


@bp.post("/<token>/card")
def save_card(token: str) -> Response:
    invoice = _opened(token)
    body = request.get_json(silent=True) or request.form
    setup_intent = str(body.get("setup_intent") or "")
    pay_now = str(body.get("pay", "")).lower() in ("1", "true", "yes")
    if not setup_intent.startswith("seti_"):
        return _refused(
            token,
            invoice,
            payments.CardNotSaved("the card was not confirmed", param="setup_intent"),
        )
    try:
        saved = payments.save_card(invoice, setup_intent, pay=pay_now)
    except ServiceError as exc:
        return _refused(token, invoice, exc)
    paying = saved.charge is not None or bool(saved.retries_started)
    message = "Your card is saved." + (" Your payment is being processed." if paying else "")
    return _answer(token, invoice, message, 202 if paying else 200)


@bp.get("/<token>/pdf")
def pdf(token: str) -> Response:
    invoice = _opened(token)
    version = request.args.get("version", type=int)
    try:
        answer = documents.pdf_of(invoice.id, customer_scope=None, version=version)
    except ServiceError:
        abort(_not_valid(token))
    if answer.document is None:
        response = _page_shell("preparing.html", 202, token=token)
        response.headers["Retry-After"] = "2"
        return response
    return pdf_response(answer.document, f"invoice-{invoice.number}.pdf")


@bp.get("/<token>/einvoice")
def einvoice(token: str) -> Response:
    invoice = _opened(token)
    syntax = request.args.get("syntax", "cii")
    try:
        xml = einvoices.invoice_einvoice(invoice.id, syntax, customer_scope=None)
    except ServiceError as exc:
        return _page_shell(
            "unavailable.html",
            exc.status,
            token=token,
            heading="This invoice has no e-invoice",
            reason=f"It cannot be made: {exc}. The PDF has everything the invoice says.",
        )
    return xml_response(xml.content, xml.filename)


@bp.post("/new-link")
def new_link() -> Response:
    """A new link, by email, for the invoice a link that no longer holds names, when the
    address typed is one its customer receives invoices at. The answer never says whether
    anything was sent."""
    address = (request.form.get("email") or "").strip()
    token = request.form.get("token") or ""
    if address and token:
        try:
            pages.open_link(token)
        except pages.LinkNotValid as invalid:
            if invalid.invoice_id is not None:
                payments.send_new_link(invalid.invoice_id, address)
    return _page_shell("link_sent.html", 200)


@bp.get("/assets/theme.css")
def theme() -> Response:
    """The seller's colour, as a style sheet: the policy allows no inline style."""
    css = f":root {{ --brand: {context.settings().brand_color}; }}\n"
    response = make_response(css)
    response.mimetype = "text/css"
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@bp.get("/assets/fonts/<name>")
def font(name: str) -> Response:
    """The PDF's own fonts, so that the page reads as the invoice does."""
    return send_from_directory(FONTS, name, max_age=86400)


@bp.get("/assets/logo")
def logo() -> Response:
    path = context.settings().seller_logo_path
    if not path:
        abort(404)
    return send_file(path, max_age=300)


# Counted under the API's own limit per address only: the page's style, script and fonts
# come with every view.
_ASSETS = frozenset({"hosted.static", "hosted.theme", "hosted.font", "hosted.logo"})
# Not counted per link either: the page asks for its status every few seconds while a
# payment settles, and must not use up what its customer's clicks need.
_FOLLOWING = _ASSETS | {"hosted.status"}


def _link_key() -> str:
    token = (request.view_args or {}).get("token")
    return f"link:{token}" if token else f"address:{get_remote_address() or 'unknown'}"


def register_hosted_pages(app: Flask, limiter: Limiter, settings: Settings) -> None:
    """The blueprint, its CSRF protection and its own rate limits."""
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = _session_key(settings)
    # CSRF tokens are checked in this blueprint only: the API is called with keys, not
    # cookies. The Referer check is off because the page sends none (no-referrer): the
    # token, bound to a SameSite session cookie, is the protection.
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False
    app.config["WTF_CSRF_SSL_STRICT"] = False
    app.config["WTF_CSRF_TIME_LIMIT"] = None
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SECURE"] = (settings.public_base_url or "").startswith("https:")
    csrf.init_app(app)
    limiter.limit(
        settings.hosted_link_rate_limit,
        key_func=_link_key,
        scope="hosted-link",
        exempt_when=lambda: request.endpoint in _FOLLOWING,
    )(bp)
    limiter.limit(
        settings.hosted_address_rate_limit,
        key_func=lambda: f"address:{get_remote_address() or 'unknown'}",
        scope="hosted-address",
        exempt_when=lambda: request.endpoint in _ASSETS,
    )(bp)
    app.register_blueprint(bp)


@bp.before_request
def _protect_forms() -> None:
    if request.method == "POST":
        csrf.protect()


@bp.errorhandler(CSRFError)
def _csrf_refused(error: CSRFError) -> Response:
    log.info("hosted.csrf_refused", reason=error.description)
    if _wants_json():
        response = jsonify({"error": {"code": "csrf_failed", "message": error.description}})
        response.status_code = 403
        return response
    return _page_shell("unavailable.html", 403, token="", reason=error.description)


@bp.errorhandler(RateLimitExceeded)
def _rate_limited(error: RateLimitExceeded) -> Response:
    response = _page_shell(
        "unavailable.html", 429, token="", reason="Too many requests: wait a minute and retry."
    )
    response.headers["Retry-After"] = "60"
    return response


def _session_key(settings: Settings) -> str:
    """Flask's session key, derived from the link keys: one secret less to keep."""
    secret = settings.hosted_link_keys.get_secret_value().encode()
    return hmac.new(secret, b"hosted-page-session", hashlib.sha256).hexdigest()
