"""Reading the e-invoice a Factur-X PDF carries. Pure; apart from the rest of the room,
so that the emails, which attach it, depend on nothing that renders documents."""

from __future__ import annotations

from io import BytesIO

from facturx.facturx import FACTURX_FILENAME
from pypdf import PdfReader


def embedded_xml(pdf: bytes) -> bytes | None:
    """The CII XML a Factur-X PDF carries (to attach it on its own where a buyer's system
    reads XML only), or None for a plain PDF."""
    reader = PdfReader(BytesIO(pdf))
    for attachment in reader.attachment_list:
        if attachment.name == FACTURX_FILENAME:
            return bytes(attachment.content)
    return None
