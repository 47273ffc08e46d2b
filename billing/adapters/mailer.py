"""Sending one email over SMTP through Flask-Mail, with each outcome sorted into "try again
later" or "will never work", and one connection kept per worker thread.

Reusing the connection matters: opening one (TCP, greeting, EHLO, maybe TLS and login)
costs more than sending a message. An idle connection the server has dropped is noticed
by a NOOP before it is used, so a send never starts on a dead connection."""

from __future__ import annotations

import smtplib
import socket
import threading
import time
from typing import Any

from flask_mail import BadHeaderError, Connection, Message

# A connection idle for longer than this is checked with a NOOP before it is used again.
IDLE_CHECK_SECONDS = 5.0


class MailTransientError(Exception):
    """Not accepted this time (server away, 4xx): the same message may be sent again."""


class MailRejected(Exception):
    """Refused for good (5xx, a malformed header): sending again would fail again."""


class _TimedConnection(Connection):
    """Flask-Mail's connection with a timeout: without one a stuck server holds a worker."""

    def __init__(self, mail: Any, timeout: float) -> None:
        super().__init__(mail)
        self.timeout = timeout

    def configure_host(self) -> smtplib.SMTP | smtplib.SMTP_SSL:
        host: smtplib.SMTP
        if self.mail.use_ssl:
            host = smtplib.SMTP_SSL(self.mail.server, self.mail.port, timeout=self.timeout)
        else:
            host = smtplib.SMTP(self.mail.server, self.mail.port, timeout=self.timeout)
        if self.mail.use_tls:
            host.starttls()
        if self.mail.username and self.mail.password:
            host.login(self.mail.username, self.mail.password)
        return host


def _classify(exc: BaseException) -> Exception:
    if isinstance(exc, BadHeaderError):
        return MailRejected("a header would hold a line break; the message was not sent")
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        detail = "; ".join(
            f"{rcpt}: {code} {msg!r}" for rcpt, (code, msg) in exc.recipients.items()
        )
        if codes and all(code >= 500 for code in codes):
            return MailRejected(f"recipient refused: {detail}")
        return MailTransientError(f"recipient deferred: {detail}")
    if isinstance(exc, smtplib.SMTPResponseException):
        text = f"{exc.smtp_code} {exc.smtp_error!r}"
        if exc.smtp_code >= 500 and not isinstance(exc, smtplib.SMTPConnectError):
            return MailRejected(f"refused by the mail server: {text}")
        return MailTransientError(f"deferred by the mail server: {text}")
    if isinstance(exc, smtplib.SMTPServerDisconnected | OSError | socket.timeout):
        return MailTransientError(f"mail server unreachable: {type(exc).__name__}: {exc}")
    if isinstance(exc, smtplib.SMTPException):
        return MailTransientError(f"{type(exc).__name__}: {exc}")
    raise exc


class SmtpMailer:
    def __init__(self, mail_state: Any, timeout: float) -> None:
        self._mail = mail_state
        self._timeout = timeout
        self._local = threading.local()

    def _connection(self) -> Connection:
        connection: _TimedConnection | None = getattr(self._local, "connection", None)
        if connection is not None and connection.host is not None:
            idle = time.monotonic() - self._local.used_at
            if idle < IDLE_CHECK_SECONDS:
                return connection
            try:
                if connection.host.noop()[0] == 250:
                    return connection
            except (smtplib.SMTPException, OSError):
                pass
            self.close()
        connection = _TimedConnection(self._mail, self._timeout)
        connection.__enter__()
        self._local.connection = connection
        self._local.used_at = time.monotonic()
        return connection

    def send(self, message: Message) -> None:
        """Raises MailTransientError or MailRejected; returns once the server accepted it."""
        try:
            connection = self._connection()
            connection.send(message)
        except Exception as exc:  # sorted by _classify, which re-raises anything unknown
            self.close()  # whatever state the session is in, the next send starts clean
            raise _classify(exc) from exc
        self._local.used_at = time.monotonic()

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None and connection.host is not None:
            try:
                connection.host.quit()
            except (smtplib.SMTPException, OSError):
                connection.host.close()
