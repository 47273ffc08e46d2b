"""The only way the invoice renderer reaches a resource: its own template folder and data: URIs.

WeasyPrint would otherwise fetch any http(s):// or file:// URL a document names. Customer
text is escaped before it reaches the HTML, so no customer URL should ever get here; this
fetcher is the second wall, and it refuses everything else instead of trusting the first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib import request
from urllib.parse import unquote, urlsplit

from weasyprint.urls import URLFetcher, URLFetcherResponse

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


class FetchRefused(ValueError):
    """A URL outside what the invoice templates may use."""


class TemplateOnlyFetcher(URLFetcher):
    """Serves files inside one folder and data: URIs; raises FetchRefused for anything else."""

    def __init__(self, root: Path = TEMPLATES_DIR) -> None:
        super().__init__(allowed_protocols=("file", "data"), allow_redirects=False)
        self.root = root.resolve(strict=True)

    def fetch(self, url: str, headers: Any = None) -> URLFetcherResponse:
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme == "data":
            # urllib's data: handler decodes in memory; it opens no socket and no file.
            response = request.DataHandler().data_open(request.Request(url))  # noqa: S310
            return URLFetcherResponse(url, response.read(), dict(response.headers.items()))
        if scheme == "file":
            path = self.resolve(url)
            return URLFetcherResponse(path.as_uri(), path.read_bytes(), {})
        raise FetchRefused(f"the invoice renderer fetches nothing from {url[:80]!r}")

    def resolve(self, url: str) -> Path:
        """The file a file: URL names, if it lies inside the root once symlinks are resolved."""
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise FetchRefused(f"no remote files: {url[:80]!r}")
        raw = unquote(parts.path)
        if "\x00" in raw or ".." in raw.split("/"):
            raise FetchRefused(f"no '..' in template paths: {url[:80]!r}")
        try:
            path = Path(raw).resolve(strict=True)
        except (OSError, RuntimeError) as error:
            raise FetchRefused(f"no such template file: {url[:80]!r}") from error
        if not path.is_relative_to(self.root) or not path.is_file():
            raise FetchRefused(f"outside the invoice templates: {url[:80]!r}")
        return path
