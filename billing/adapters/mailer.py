"""Sending one email over SMTP through Flask-Mail, with each outcome sorted into "try again
later" or "will never work", and one connection kept per worker thread.

Reusing the connection matters: opening one (TCP, greeting, EHLO, maybe TLS and login)
costs more than sending a message. An idle connection the server has dropped is noticed
by a NOOP before it is used, so a send never starts on a dead connection."""

from __future__ import annotations

import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from flask_mail import BadHeaderError, Connection, Message

# A connection idle for longer than this is checked with a NOOP before it is used again.
IDLE_CHECK_SECONDS = 5.0


class MailTransientError(Exception):
    """Not accepted this time (server away, 4xx): the same message may be sent again."""


class MailRejected(Exception):
    """Refused for good (5xx, a malformed header): sending again would fail again."""


def smtp_tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Verifies the server's certificate and its name, as a browser would: against the
    system's certificate authorities, or only those in `ca_file` (a private CA)."""
    return ssl.create_default_context(cafile=ca_file)


class _TimedConnection(Connection):
    """Flask-Mail's connection with a timeout (without one a stuck server holds a worker)
    and with TLS that checks whom it talks to: Flask-Mail's starttls() and SMTP_SSL take
    no context, so they accept any certificate, and a password sent after them is one a
    man in the middle reads."""

    def __init__(
        self, mail: Any, timeout: float, tls_context: Callable[[], ssl.SSLContext]
    ) -> None:
        super().__init__(mail)
        self.timeout = timeout
        self.tls_context = tls_context

    def configure_host(self) -> smtplib.SMTP | smtplib.SMTP_SSL:
        host: smtplib.SMTP
        if self.mail.use_ssl:
            host = smtplib.SMTP_SSL(
                self.mail.server, self.mail.port, timeout=self.timeout, context=self.tls_context()
            )
        else:
            host = smtplib.SMTP(self.mail.server, self.mail.port, timeout=self.timeout)
        try:
            if self.mail.use_tls:
                # Raises when the server offers no STARTTLS: never falls back to plain text.
                host.starttls(context=self.tls_context())
            if self.mail.username and self.mail.password:
                if not (self.mail.use_tls or self.mail.use_ssl):  # Settings refuse it too
                    raise MailRejected("SMTP credentials are never sent without TLS")
                host.login(self.mail.username, self.mail.password)
        except BaseException:
            host.close()
            raise
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
    if isinstance(exc, ssl.SSLCertVerificationError):
        # Retried, like an outage: the server's certificate or MAIL_CA_FILE may be fixed
        # meanwhile, and a dead-lettered email can be replayed once they are.
        return MailTransientError(f"the mail server's certificate did not verify: {exc}")
    if isinstance(exc, smtplib.SMTPServerDisconnected | OSError | socket.timeout):
        return MailTransientError(f"mail server unreachable: {type(exc).__name__}: {exc}")
    if isinstance(exc, smtplib.SMTPException):
        return MailTransientError(f"{type(exc).__name__}: {exc}")
    raise exc


class SmtpMailer:
    def __init__(self, mail_state: Any, timeout: float, ca_file: str | None = None) -> None:
        self._mail = mail_state
        self._timeout = timeout
        self._ca_file = ca_file
        self._tls: ssl.SSLContext | None = None
        self._local = threading.local()

    def _tls_context(self) -> ssl.SSLContext:
        # Built at the first TLS connection, not at every process's start: loading the
        # certificate authorities is work only the mail worker needs. One context serves
        # every thread.
        if self._tls is None:
            self._tls = smtp_tls_context(self._ca_file)
        return self._tls

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
        connection = _TimedConnection(self._mail, self._timeout, self._tls_context)
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
