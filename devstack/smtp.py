"""A real SMTP server on loopback that keeps what it receives: in memory for the tests,
and as one .eml file per message in a folder for `make run` when no MAIL_SERVER is set."""

from __future__ import annotations

import email
import email.policy
import itertools
import ssl
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from devstack.servers import free_port


@dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class SinkHandler:
    """aiosmtpd handler: accepts every message, keeps it, writes it out if asked to."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self.messages: list[ReceivedMessage] = []
        self._lock = threading.Lock()
        self._counter = itertools.count(1)

    def rcpt_reply(self, address: str) -> str | None:
        """None accepts the recipient; a reply such as "550 ..." refuses it."""
        return None

    async def handle_RCPT(
        self, server: SMTP, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        refusal = self.rcpt_reply(address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        received = ReceivedMessage(envelope.mail_from, tuple(envelope.rcpt_tos), bytes(raw))
        with self._lock:
            self.messages.append(received)
            number = next(self._counter)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            name = f"{time.strftime('%Y%m%dT%H%M%S')}-{number:05d}.eml"
            (self.folder / name).write_bytes(received.raw)
        return "250 Message accepted for delivery"

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()


class SmtpSink:
    """`starttls` (a server context) offers STARTTLS and requires it before any mail;
    `implicit_tls` speaks TLS from the first byte (port 465's way). `authenticator`, an
    aiosmtpd authenticator, enables AUTH (only over TLS)."""

    def __init__(
        self,
        handler: SinkHandler | None = None,
        port: int | None = None,
        *,
        starttls: ssl.SSLContext | None = None,
        implicit_tls: ssl.SSLContext | None = None,
        authenticator: Any = None,
    ) -> None:
        self.handler = handler or SinkHandler()
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._controller: Controller | None = None
        self._smtp_options: dict[str, Any] = {}
        if starttls is not None:
            self._smtp_options.update(tls_context=starttls, require_starttls=True)
        if implicit_tls is not None:
            # aiosmtpd knows TLS only from STARTTLS; this connection is TLS from the start.
            self._smtp_options.update(ssl_context=implicit_tls, auth_require_tls=False)
        if authenticator is not None:
            self._smtp_options.update(authenticator=authenticator)

    def start(self) -> SmtpSink:
        # decode_data=False keeps the bytes exactly as sent, attachments included.
        self._controller = Controller(
            self.handler,
            hostname=self.host,
            port=self.port,
            data_size_limit=50 * 1024 * 1024,
            **self._smtp_options,
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def messages(self) -> list[ReceivedMessage]:
        return list(self.handler.messages)


class CountingHandler(SinkHandler):
    """Accepts and counts messages, keeping none: for benchmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.count += 1
        return "250 Message accepted for delivery"


def main() -> None:
    """`python -m devstack.smtp --port N [--folder DIR | --discard]`: serve until killed."""
    import argparse
    import signal
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--discard", action="store_true")
    args = parser.parse_args()
    handler = CountingHandler() if args.discard else SinkHandler(args.folder)
    sink = SmtpSink(handler, port=args.port or None).start()
    print(f"listening on {sink.host}:{sink.port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    sink.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
