"""A VIES of the tests' own: an HTTP server on loopback answering the REST API's
check-vat-number as the test tells it (a verdict, or 500 as when VIES is down), and
keeping what it was asked."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class FakeVies:
    valid: bool = True
    down: bool = False
    asked: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        vies = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                vies.asked.append(body)
                if vies.down:
                    self.send_response(500)
                    self.end_headers()
                    return
                answer = json.dumps(
                    {
                        "countryCode": body["countryCode"],
                        "vatNumber": body["vatNumber"],
                        "requestDate": "2026-03-05T10:00:00.000Z",
                        "valid": vies.valid,
                        "name": "CLIENT SARL" if vies.valid else "---",
                        "address": "1 RUE DE LA PAIX\\n75002 PARIS" if vies.valid else "---",
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/taxation_customs/vies/rest-api/check-vat-number"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
