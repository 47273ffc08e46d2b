"""How the API answers for a PDF: the bytes with their ETag, 304 when the client has
them, or 202 with Retry-After while the first one is rendered."""

from __future__ import annotations

from flask import Response, jsonify, request
from pydantic import BaseModel

from billing.documents import documents

# What a client should wait before asking again for a PDF still being rendered.
PDF_RETRY_AFTER_SECONDS = 2


def pdf_response(document: documents.Document, filename: str) -> Response:
    etag = document.sha256
    if etag in request.if_none_match:
        response = Response(status=304)
        response.set_etag(etag)
        return response
    response = Response(documents.document_content(document), mimetype="application/pdf")
    response.set_etag(etag)
    response.headers["Content-Disposition"] = f'inline; filename="{filename}"'
    # Each version is immutable; a client revalidates with the ETag to see a newer one.
    response.headers["Cache-Control"] = "private, no-cache"
    return response


def xml_response(content: bytes, filename: str) -> Response:
    response = Response(content, mimetype="application/xml")
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["Cache-Control"] = "private, no-cache"
    return response


def pending_response(pending: BaseModel) -> Response:
    response = jsonify(pending.model_dump(mode="json"))
    response.status_code = 202
    response.headers["Retry-After"] = str(PDF_RETRY_AFTER_SECONDS)
    return response
