"""Compose one email from its kind's three templates: subject.txt, body.txt, body.html.

Pure: it takes the view (already formatted for the customer's locale) and returns text.
HTML is autoescaped; the subject is folded to one line, so that nothing a template prints
can start a header of its own."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class ComposedEmail:
    subject: str
    text: str
    html: str


@lru_cache(maxsize=1)
def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        # The templates ship with the code: checking their files on every email is waste.
        auto_reload=False,
    )


def single_line(value: str) -> str:
    """Every run of whitespace, CR and LF included, as one space."""
    return " ".join(value.split())


def compose(kind: str, view: Mapping[str, Any]) -> ComposedEmail:
    environment = _environment()
    return ComposedEmail(
        subject=single_line(environment.get_template(f"{kind}/subject.txt").render(view)),
        text=environment.get_template(f"{kind}/body.txt").render(view),
        html=environment.get_template(f"{kind}/body.html").render(view),
    )
