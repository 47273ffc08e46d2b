"""A webhook receiver of the tests' own: an HTTP server on loopback that checks every
signature with its own HMAC code (not the service's), keeps what it received, and can
answer 500, hang, or go away for a while and come back on the same port.

Requests are kept in the order they arrived, each with the answer it was given; a hung
request is kept on arrival, with the answer it gets once the hang is over."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    event: dict[str, Any]
    headers: dict[str, str]
    signed: bool
    answered: int
    hung: bool = False


def signature_matches(body: bytes, header: str, secrets: list[str]) -> bool:
    """Any `v1` of the header is the HMAC-SHA256 of "t.body" under any of `secrets`."""
    parts = [p.split("=", 1) for p in header.split(",") if "=" in p]
    timestamps = [v for k, v in parts if k == "t"]
    if len(timestamps) != 1:
        return False
    signed = timestamps[0].encode() + b"." + body
    expected = {hmac.new(s.encode(), signed, hashlib.sha256).hexdigest() for s in secrets}
    return any(k == "v1" and v in expected for k, v in parts)


@dataclass
class WebhookReceiver:
    secrets: list[str] = field(default_factory=list)
    fail_share: float = 0.0  # answered 500
    hang_share: float = 0.0  # answered only after hang_seconds
    hang_seconds: float = 5.0
    hang_status: int = 200  # what a hung request is answered, late
    status: int = 200  # what a delivery that neither fails nor hangs gets
    seed: int = 7
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._random = random.Random(self.seed)
        self._server: ThreadingHTTPServer | None = None
        self.port = 0
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    roll = receiver._random.random()
                    secrets = list(receiver.secrets)
                    hang = roll < receiver.hang_share
                    if hang:
                        status = receiver.hang_status
                    elif roll < receiver.hang_share + receiver.fail_share:
                        status = 500
                    else:
                        status = receiver.status
                    signed = signature_matches(
                        body, self.headers.get("Billing-Signature", ""), secrets
                    )
                    # Kept in the order they arrived, with the answer decided on arrival: a
                    # hung request was taken (or not) when it came, whenever it is answered.
                    receiver.received.append(
                        Received(json.loads(body), dict(self.headers), signed, status, hang)
                    )
                if hang:
                    time.sleep(receiver.hang_seconds)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the sender gave up on a hung request and closed its end

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Go away: the port refuses connections until start()."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def accepted(self) -> list[dict[str, Any]]:
        """The events it answered 2xx, in the order they arrived."""
        with self._lock:
            return [r.event for r in self.received if 200 <= r.answered < 300]

    def all_signed(self) -> bool:
        with self._lock:
            return all(r.signed for r in self.received)
