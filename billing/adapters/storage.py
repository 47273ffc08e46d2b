"""Where rendered documents live: PostgreSQL by default, S3 on ECS.

Keys are content-addressed by the caller (the document's SHA-256 is in its key), so a put
repeated after a crash writes the same bytes again and a get never sees a half-written
document under a key that the database already names."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import bindparam, select
from sqlalchemy.dialects.postgresql import insert

from billing.extensions import db
from billing.models import StoredBlob

if TYPE_CHECKING:
    from billing.config import Settings


class DocumentMissing(LookupError):
    pass


class DocumentStorage(Protocol):
    name: str
    # True when the bytes live in PostgreSQL: a caller reading a key from the database
    # anyway may then read the bytes in the same statement (content_in_sql).
    in_database: bool

    def put(self, key: str, content: bytes, content_type: str) -> None: ...

    def get(self, key: str) -> bytes: ...


# Built once: every email with a PDF reads through it.
_CONTENT = select(StoredBlob.__table__.c.content).where(
    StoredBlob.__table__.c.key == bindparam("b_key")
)


def content_in_sql(key: Any) -> Any:
    """SQL for the bytes stored under `key` (a column of the caller's statement): the
    caller saves a round trip. NULL when nothing is stored there."""
    blobs = StoredBlob.__table__
    return select(blobs.c.content).where(blobs.c.key == key).scalar_subquery()


class PostgresStorage:
    """Bytes in the `stored_blobs` table, written in the caller's transaction, so that the
    document and the row that names it commit together."""

    name = "postgres"
    in_database = True

    def put(self, key: str, content: bytes, content_type: str) -> None:
        db.session.execute(
            insert(StoredBlob)
            .values(key=key, content=content, content_type=content_type)
            .on_conflict_do_nothing(index_elements=["key"])
        )

    def get(self, key: str) -> bytes:
        content = db.session.scalar(_CONTENT, {"b_key": key})
        if content is None:
            raise DocumentMissing(key)
        return bytes(content)


class S3Storage:
    """An S3 bucket (or any S3-compatible server). A put happens before the database row
    that names it commits; a crash in between leaves an unnamed object, never a name
    without its object."""

    name = "s3"
    in_database = False

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self._endpoint_url = endpoint_url
        self._region = region
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            # Imported late: boto3 takes a while to load and only the S3 setup needs it.
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3",
                endpoint_url=self._endpoint_url,
                region_name=self._region,
                config=Config(retries={"mode": "standard", "max_attempts": 3}),
            )
        return self._client

    def put(self, key: str, content: bytes, content_type: str) -> None:
        self.client.put_object(
            Bucket=self.bucket, Key=self.prefix + key, Body=content, ContentType=content_type
        )

    def get(self, key: str) -> bytes:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
        except self.client.exceptions.NoSuchKey as exc:
            raise DocumentMissing(key) from exc
        return bytes(answer["Body"].read())


def build_storage(settings: Settings) -> DocumentStorage:
    if settings.document_storage == "s3":
        assert settings.s3_bucket is not None  # checked when the settings were read
        return S3Storage(
            settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
        )
    return PostgresStorage()
