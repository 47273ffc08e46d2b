"""/healthz (the process answers) and /readyz (PostgreSQL and the broker answer)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from billing.extensions import db
from billing.platform import context

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    checks: dict[str, str] = {}
    try:
        db.session.execute(text("SELECT 1"))
        db.session.rollback()
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        db.session.rollback()
        checks["database"] = f"unavailable: {type(exc).__name__}"
    try:
        context.publisher().ping()
        checks["broker"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["broker"] = f"unavailable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    response = jsonify({"status": "ok" if ready else "unavailable", "checks": checks})
    response.status_code = 200 if ready else 503
    return response
