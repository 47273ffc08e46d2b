"""SMTP over TLS against a real server (aiosmtpd) with a certificate made here, signed by a
certificate authority made here too: the mailer must check whom it talks to before it
hands over a password or a customer's invoice."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flask_mail import Message

from billing import create_app
from billing.adapters.mailer import MailTransientError
from devstack.smtp import SinkHandler, SmtpSink


@dataclass(frozen=True)
class Certificates:
    ca_file: Path
    # A server certificate for 127.0.0.1, where the sink listens, and one for another name.
    loopback: ssl.SSLContext
    elsewhere: ssl.SSLContext


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    names: list[x509.GeneralName],
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True
        )
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _server_context(
    folder: Path, name: str, ca: tuple[str, ec.EllipticCurvePrivateKey], alt: list[Any]
) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = _certificate(name, key, ca, alt)
    cert_file, key_file = folder / f"{name}.pem", folder / f"{name}.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    folder = tmp_path_factory.mktemp("smtp-tls")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(
        _certificate("Billing test CA", ca_key, None, []).public_bytes(serialization.Encoding.PEM)
    )
    ca = ("Billing test CA", ca_key)
    loopback = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    elsewhere = [x509.DNSName("smtp.elsewhere.example")]
    return Certificates(
        ca_file=ca_file,
        loopback=_server_context(folder, "loopback", ca, loopback),
        elsewhere=_server_context(folder, "elsewhere", ca, elsewhere),
    )


class Logins:
    """The sink's authenticator: accepts any credentials and notes each login and whether
    it came over TLS."""

    def __init__(self) -> None:
        self.seen: list[tuple[bytes, bytes, bool]] = []

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any):
        over_tls = server.transport.get_extra_info("ssl_object") is not None
        self.seen.append((auth_data.login, auth_data.password, over_tls))
        return AuthResult(success=True)


@dataclass
class TlsSink:
    sink: SmtpSink
    logins: Logins
    mode: str  # "starttls" or "implicit"


def _start_sink(mode: str, context: ssl.SSLContext) -> TlsSink:
    logins = Logins()
    tls = {"starttls": context} if mode == "starttls" else {"implicit_tls": context}
    sink = SmtpSink(SinkHandler(), authenticator=logins, **tls).start()  # type: ignore[arg-type]
    return TlsSink(sink, logins, mode)


@pytest.fixture(params=["starttls", "implicit"])
def tls_sink(request: pytest.FixtureRequest, certificates: Certificates) -> Iterator[TlsSink]:
    started = _start_sink(request.param, certificates.loopback)
    yield started
    started.sink.stop()


@contextmanager
def _mailer(sink: TlsSink, **settings: str) -> Iterator[Any]:
    """The mailer of an app made from these settings, as a mail worker has it."""
    flag = "MAIL_USE_TLS" if sink.mode == "starttls" else "MAIL_USE_SSL"
    env = {
        "MAIL_SERVER": sink.sink.host,
        "MAIL_PORT": str(sink.sink.port),
        flag: "true",
        "MAIL_USERNAME": "billing",
        "MAIL_PASSWORD": "smtp-password",
        "MAIL_DEFAULT_SENDER": "billing@saas.example",
        "MAIL_TIMEOUT": "5",
        "LOG_LEVEL": "WARNING",
        **settings,
    }
    app = create_app(env, serve_http=False)
    with app.app_context():
        mailer = app.extensions["billing.mailer"]
        try:
            yield mailer
        finally:
            mailer.close()


def _receipt() -> Message:
    return Message("Your receipt", recipients=["ap@acme.example"], body="Paid, thank you.")


def test_the_smtp_server_gets_the_password_only_once_its_certificate_is_verified(
    tls_sink: TlsSink, certificates: Certificates
):
    # The system's authorities never signed the test CA: refused before AUTH or any mail.
    with (
        _mailer(tls_sink) as mailer,
        pytest.raises(
            MailTransientError, match=r"certificate did not verify.*CERTIFICATE_VERIFY_FAILED"
        ),
    ):
        mailer.send(_receipt())
    assert tls_sink.logins.seen == []
    assert tls_sink.sink.messages == []

    # With the private CA configured, the same server is trusted.
    with _mailer(tls_sink, MAIL_CA_FILE=str(certificates.ca_file)) as mailer:
        mailer.send(_receipt())

    assert tls_sink.logins.seen == [(b"billing", b"smtp-password", True)]
    [received] = tls_sink.sink.messages
    assert received.message["Subject"] == "Your receipt"


def test_a_certificate_from_the_trusted_ca_for_another_host_name_is_refused(
    certificates: Certificates,
):
    # The authority is trusted, but the certificate names smtp.elsewhere.example, not the
    # address connected to: whoever holds it is not our mail server.
    impostor = _start_sink("starttls", certificates.elsewhere)
    try:
        with (
            _mailer(impostor, MAIL_CA_FILE=str(certificates.ca_file)) as mailer,
            pytest.raises(
                MailTransientError, match=r"certificate did not verify.*IP address mismatch"
            ),
        ):
            mailer.send(_receipt())
        assert impostor.logins.seen == []
        assert impostor.sink.messages == []
    finally:
        impostor.sink.stop()
