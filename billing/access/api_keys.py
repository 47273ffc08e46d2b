"""API keys: the secret is shown once and stored only as its SHA-256.

A plain hash suffices (no bcrypt): the secret is 32 random bytes, not a password, so
it cannot be guessed from its hash, and a lookup by hash stays one indexed read.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import bindparam, func, select

from billing.extensions import db
from billing.models import ApiKey, Customer
from billing.platform.errors import NotFound
from billing.platform.prebuilt import Prebuilt
from billing.platform.unit_of_work import transaction

SECRET_PREFIX = "sk_bill_"  # noqa: S105 - a public prefix, not a secret


@dataclass(frozen=True)
class Principal:
    api_key_id: str
    customer_id: str | None  # None: an admin key that sees every customer

    @property
    def is_admin(self) -> bool:
        return self.customer_id is None


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_api_key(name: str, customer_id: str | None = None) -> tuple[ApiKey, str]:
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    with transaction() as session:
        if customer_id is not None and session.get(Customer, customer_id) is None:
            raise NotFound(f"no customer {customer_id}", param="customer")
        key = ApiKey(
            name=name,
            customer_id=customer_id,
            secret_hash=hash_secret(secret),
            secret_prefix=secret[: len(SECRET_PREFIX) + 4],
        )
        session.add(key)
    return key, secret


def revoke_api_key(key_id: str) -> ApiKey:
    with transaction() as session:
        key = session.get(ApiKey, key_id, with_for_update=True)
        if key is None:
            raise NotFound(f"no API key {key_id}")
        if key.revoked_at is None:
            key.revoked_at = func.now()
    return key


def list_api_keys() -> list[ApiKey]:
    return list(db.session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


# Every request runs it: built once, and sent prebuilt.
_KEY_BY_HASH = Prebuilt(
    select(ApiKey.id, ApiKey.customer_id).where(
        ApiKey.secret_hash == bindparam("b_secret_hash"), ApiKey.revoked_at.is_(None)
    )
)


def authenticate(secret: str) -> Principal | None:
    key = _KEY_BY_HASH.execute(
        db.session.connection(), {"b_secret_hash": hash_secret(secret)}
    ).first()
    if key is None:
        return None
    return Principal(api_key_id=key.id, customer_id=key.customer_id)
