"""Webhook deliveries against real HTTP servers of the test's own on loopback, and the URL
check against every way a URL could reach inside (server-side request forgery). Names are
resolved by a resolver the test injects: the network beyond this machine is never used."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.client import HTTPMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from billing.adapters.webhook_http import (
    UnsafeUrl,
    WebhookSender,
    check_url,
    resolve_host,
)
from billing.webhooks.signatures import EVENT_ID_HEADER, SIGNATURE_HEADER, signature_header

PUBLIC = "93.184.216.34"
# Long enough never to end on its own while a test waits: a server still waiting or
# trickling when the sender should have given up makes the test fail, not hang.
LONG_WAIT = 60.0


@dataclass
class Received:
    method: str
    path: str
    headers: HTTPMessage
    body: bytes


Answer = Callable[["_Handler"], None]


def answer_ok(handler: _Handler) -> None:
    handler.answer(200, b"ok")


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.server.receiver.requests.append(Received("POST", self.path, self.headers, body))
        self.server.receiver.respond(self)

    do_GET = do_POST

    def answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    receiver: Receiver
    daemon_threads = True

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.receiver.connections += 1
        return True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up mid-answer is what several tests do on purpose


@dataclass
class Receiver:
    """A real HTTP(S) server on loopback, in a thread; `respond` decides each answer."""

    host: str = "127.0.0.1"
    respond: Answer = answer_ok
    tls: ssl.SSLContext | None = None
    server_names: list[str] = field(default_factory=list)  # what TLS clients asked for (SNI)
    requests: list[Received] = field(default_factory=list)
    connections: int = 0
    release: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        server_class = type(
            "Server",
            (_Server,),
            {"address_family": socket.AF_INET6 if ":" in self.host else socket.AF_INET},
        )
        self.server = server_class((self.host, 0), _Handler)
        self.server.receiver = self
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        # Polling often: close() waits for the next poll, once per test.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self.thread.start()

    def url(self, path: str = "/hook", *, scheme: str = "http", host: str | None = None) -> str:
        host = host or (f"[{self.host}]" if ":" in self.host else self.host)
        return f"{scheme}://{host}:{self.port}{path}"

    @property
    def untouched(self) -> bool:
        return self.connections == 0 and not self.requests

    def close(self) -> None:
        self.release.set()  # ends any answer still waiting or trickling
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def another_receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def ipv6_receiver() -> Iterator[Receiver]:
    try:
        server = Receiver(host="::1")
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    yield server
    server.close()


def dns(records: dict[str, list[str]]) -> Callable[[str, int], list[str]]:
    """A resolver answering from `records`, and for any other name as a missing name."""

    def resolve(host: str, port: int) -> list[str]:
        if host not in records:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(records[host])

    return resolve


def local_sender(**options: Any) -> WebhookSender:
    """A sender for the test's own receivers, allowed on loopback over plain http."""
    return WebhookSender(allowed_hosts={"127.0.0.1"}, **options)


# Deliveries


def test_a_webhook_is_posted_with_its_headers_and_body_as_given_and_is_delivered(receiver):
    body = b'{"id":"evt_1","type":"invoice.paid"}'
    signature = signature_header(body, ["whsec_test"], 1_767_225_600)

    response = local_sender().post(
        receiver.url("/hooks/billing?tenant=7"),
        body,
        {SIGNATURE_HEADER: signature, EVENT_ID_HEADER: "evt_1"},
    )

    assert response.delivered
    assert (response.status, response.error, response.body_excerpt) == (200, None, "ok")
    assert response.duration_ms >= 0
    [request] = receiver.requests
    assert (request.method, request.path, request.body) == ("POST", "/hooks/billing?tenant=7", body)
    assert request.headers[SIGNATURE_HEADER] == signature
    assert request.headers[EVENT_ID_HEADER] == "evt_1"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == "billing-webhooks/1"
    assert request.headers["Host"] == f"127.0.0.1:{receiver.port}"


def test_a_loopback_url_refused_by_default_is_delivered_when_its_host_is_allowed(receiver):
    with pytest.raises(UnsafeUrl):
        WebhookSender().post(receiver.url(), b"{}", {})
    assert receiver.untouched

    response = WebhookSender(allowed_hosts={"127.0.0.1"}).post(receiver.url(), b"{}", {})

    assert response.delivered and len(receiver.requests) == 1


def test_the_callers_headers_replace_the_defaults_but_never_the_host(receiver):
    local_sender(user_agent="billing-webhooks/2").post(
        receiver.url(),
        b"{}",
        {"content-type": "application/cloudevents+json", "Host": "somewhere.else"},
    )

    [request] = receiver.requests
    assert request.headers.get_all("Content-Type") == ["application/cloudevents+json"]
    assert request.headers.get_all("Host") == [f"127.0.0.1:{receiver.port}"]
    assert request.headers["User-Agent"] == "billing-webhooks/2"


def test_a_server_error_is_an_answer_but_not_a_delivery(receiver):
    receiver.respond = lambda handler: handler.answer(500, b"database down")

    response = local_sender().post(receiver.url(), b"{}", {})

    assert not response.delivered
    assert (response.status, response.error, response.body_excerpt) == (500, None, "database down")


def test_a_redirect_is_not_followed_and_is_not_a_delivery(receiver, another_receiver):
    receiver.respond = lambda handler: handler.answer(
        302, b"", {"Location": another_receiver.url("/elsewhere")}
    )

    response = local_sender().post(receiver.url(), b"{}", {})

    assert (response.status, response.delivered) == (302, False)
    assert len(receiver.requests) == 1
    assert another_receiver.untouched


def test_a_receiver_that_never_answers_ends_in_a_timeout(receiver):
    def hang(handler: _Handler) -> None:
        receiver.release.wait(LONG_WAIT)
        handler.answer(200, b"too late")

    receiver.respond = hang

    response = local_sender(read_timeout=0.5).post(receiver.url(), b"{}", {})

    assert (response.status, response.error, response.delivered) == (None, "timeout", False)
    assert len(receiver.requests) == 1


def _trickle(handler: _Handler, head: bytes, drip: bytes) -> None:
    """Sends `head`, then `drip` a byte at a time, each soon after the last, for longer
    than any test waits: no single wait for data is long, only the whole answer is."""
    handler.wfile.write(head)
    for byte in drip:
        if handler.server.receiver.release.wait(0.05):
            return
        handler.wfile.write(bytes([byte]))


def test_a_receiver_that_trickles_its_headers_ends_in_a_timeout(receiver):
    receiver.respond = lambda handler: _trickle(
        handler, b"HTTP/1.0 200 OK\r\nX-Slow: ", b"a" * int(LONG_WAIT / 0.05) + b"\r\n\r\n"
    )

    response = local_sender(read_timeout=0.5).post(receiver.url(), b"{}", {})

    assert (response.status, response.error, response.delivered) == (None, "timeout", False)


def test_a_receiver_that_trickles_its_body_ends_in_a_timeout(receiver):
    drip = b"a" * int(LONG_WAIT / 0.05)
    receiver.respond = lambda handler: _trickle(
        handler, b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(drip), drip
    )

    response = local_sender(read_timeout=0.5, max_body_bytes=len(drip)).post(
        receiver.url(), b"{}", {}
    )

    assert (response.status, response.error, response.delivered) == (None, "timeout", False)


def _endless(handler: _Handler) -> None:
    handler.send_response(200)
    handler.end_headers()
    while not handler.server.receiver.release.is_set():
        handler.wfile.write(b"x" * 65536)


def test_an_endless_answer_is_read_only_up_to_the_cap_and_its_excerpt_kept(receiver):
    receiver.respond = _endless

    response = local_sender().post(receiver.url(), b"{}", {})

    assert (response.status, response.delivered) == (200, True)
    assert response.body_excerpt == "x" * 500


def test_an_answer_is_cut_at_a_cap_smaller_than_the_excerpt(receiver):
    receiver.respond = lambda handler: handler.answer(200, b"y" * 1024 * 1024)

    response = local_sender(max_body_bytes=100).post(receiver.url(), b"{}", {})

    assert (response.status, response.body_excerpt) == (200, "y" * 100)


def test_an_answer_that_is_not_utf8_is_kept_with_replacement_characters(receiver):
    receiver.respond = lambda handler: handler.answer(400, b"bad \xff\xfe input")

    response = local_sender().post(receiver.url(), b"{}", {})

    assert response.body_excerpt == "bad \ufffd\ufffd input"


def test_a_refused_connection_is_an_error_not_an_exception():
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]  # nothing listens there once it is closed

    response = local_sender().post(f"http://127.0.0.1:{port}/hook", b"{}", {})

    assert response.status is None and not response.delivered
    assert response.error == f"connection refused: 127.0.0.1:{port}"


def test_an_allowed_name_is_resolved_once_and_its_checked_address_connected_to(receiver):
    answers = iter([["127.0.0.1"], [PUBLIC]])
    asked: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return next(answers)

    sender = WebhookSender(allowed_hosts={"Receiver.Test"}, resolve=resolve)
    response = sender.post(receiver.url(host="receiver.test"), b"{}", {})

    assert response.delivered
    assert asked == [("receiver.test", receiver.port)]
    [request] = receiver.requests
    assert request.headers["Host"] == f"receiver.test:{receiver.port}"


def test_the_next_address_is_tried_when_the_first_refuses_the_connection(receiver):
    # The whole of 127/8 is this machine, and nothing listens on 127.0.0.2.
    sender = WebhookSender(
        allowed_hosts={"receiver.test"},
        resolve=dns({"receiver.test": ["127.0.0.2", "127.0.0.1"]}),
    )

    response = sender.post(receiver.url(host="receiver.test"), b"{}", {})

    assert response.delivered and len(receiver.requests) == 1


# TLS: the connection goes to the checked address, the certificate is checked for the name


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    dns_name: str | None = None,
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
    if dns_name is None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False
        ).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class Authority:
    ca_file: Path
    folder: Path
    key: ec.EllipticCurvePrivateKey

    def server_context(self, dns_name: str, server_names: list[str]) -> ssl.SSLContext:
        """A server's TLS context with a certificate for `dns_name`; every name a client
        asks for (SNI) is noted in `server_names`."""
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = _certificate(dns_name, key, ("Webhook test CA", self.key), dns_name)
        cert_file, key_file = self.folder / f"{dns_name}.pem", self.folder / f"{dns_name}.key"
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
        context.sni_callback = lambda _socket, name, _context: server_names.append(name)
        return context


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    folder = tmp_path_factory.mktemp("webhook-tls")
    key = ec.generate_private_key(ec.SECP256R1())
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(
        _certificate("Webhook test CA", key, None).public_bytes(serialization.Encoding.PEM)
    )
    return Authority(ca_file, folder, key)


@pytest.fixture
def tls_receiver(authority: Authority, request: pytest.FixtureRequest) -> Iterator[Receiver]:
    dns_name = getattr(request, "param", "receiver.test")
    server_names: list[str] = []
    server = Receiver(tls=authority.server_context(dns_name, server_names))
    server.server_names = server_names
    yield server
    server.close()


def tls_sender(authority: Authority, **options: Any) -> WebhookSender:
    return WebhookSender(
        allowed_hosts={"receiver.test"},
        resolve=dns({"receiver.test": ["127.0.0.1"]}),
        ca_file=str(authority.ca_file),
        **options,
    )


def test_an_https_receiver_is_reached_at_its_address_under_its_own_name(authority, tls_receiver):
    url = tls_receiver.url(scheme="https", host="receiver.test")

    response = tls_sender(authority).post(url, b"{}", {})

    assert response.delivered
    assert tls_receiver.server_names == ["receiver.test"]
    [request] = tls_receiver.requests
    assert request.headers["Host"] == f"receiver.test:{tls_receiver.port}"


@pytest.mark.parametrize("tls_receiver", ["elsewhere.test"], indirect=True)
def test_a_certificate_for_another_name_fails_before_the_request_is_sent(authority, tls_receiver):
    url = tls_receiver.url(scheme="https", host="receiver.test")

    response = tls_sender(authority).post(url, b"{}", {})

    assert response.status is None and not response.delivered
    assert response.error is not None and response.error.startswith("tls: ")
    assert not tls_receiver.requests


def test_a_certificate_from_an_authority_not_trusted_fails(tls_receiver):
    sender = WebhookSender(
        allowed_hosts={"receiver.test"}, resolve=dns({"receiver.test": ["127.0.0.1"]})
    )

    response = sender.post(tls_receiver.url(scheme="https", host="receiver.test"), b"{}", {})

    assert response.error is not None and response.error.startswith("tls: ")
    assert not tls_receiver.requests


def test_a_receiver_that_never_finishes_the_tls_handshake_ends_in_a_timeout():
    with socket.socket() as silent:  # accepts connections (the backlog), never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        sender = WebhookSender(
            allowed_hosts={"receiver.test"},
            resolve=dns({"receiver.test": ["127.0.0.1"]}),
            connect_timeout=0.5,
        )

        response = sender.post(f"https://receiver.test:{port}/hook", b"{}", {})

    assert (response.status, response.error) == (None, "timeout")


# The URL check: refused before anything is sent

# Names the probes use, with their addresses. localhost goes through the system's resolver.
RECORDS = {
    "example.com": [PUBLIC],
    "internal.example": ["10.1.2.3"],
    "half-internal.example": [PUBLIC, "10.1.2.3"],
    "loopback.example": ["127.0.0.1"],
    "metadata.example": ["169.254.169.254"],
}


def probe_dns(host: str, port: int) -> list[str]:
    if host == "localhost":
        return resolve_host(host, port)
    return dns(RECORDS)(host, port)


PROBES = [
    ("http://127.0.0.1:{port}/", "url_not_https"),
    ("http://169.254.169.254/latest/meta-data", "url_not_https"),
    ("http://example.com/hook", "url_not_https"),
    ("ftp://example.com/hook", "url_not_https"),
    ("example.com/hook", "url_not_https"),
    ("https://127.0.0.1:{port}/", "url_private_address"),
    ("https://localhost:{port}/", "url_private_address"),
    ("https://LocalHost:{port}/", "url_private_address"),
    ("https://169.254.169.254/", "url_private_address"),
    ("https://10.0.0.1/", "url_private_address"),
    ("https://100.64.0.1/", "url_private_address"),
    ("https://224.0.0.1/", "url_private_address"),
    ("https://[::1]:{port}/", "url_private_address"),
    ("https://[::ffff:127.0.0.1]:{port}/", "url_private_address"),
    ("https://[::ffff:7f00:1]:{port}/", "url_private_address"),
    ("https://[::ffff:a9fe:a9fe]/", "url_private_address"),
    ("https://[::127.0.0.1]:{port}/", "url_private_address"),
    ("https://[64:ff9b::7f00:1]:{port}/", "url_private_address"),
    ("https://[64:ff9b::a9fe:a9fe]/", "url_private_address"),
    ("https://[2002:7f00:1::]:{port}/", "url_private_address"),
    ("https://[2002:a00:1::1]/", "url_private_address"),
    ("https://[fd00::1]/", "url_private_address"),
    ("https://[fe80::1]/", "url_private_address"),
    ("https://[::]:{port}/", "url_private_address"),
    ("https://0.0.0.0:{port}/", "url_private_address"),
    ("https://0:{port}/", "url_private_address"),
    ("https://2130706433:{port}/", "url_private_address"),
    ("https://0x7f000001:{port}/", "url_private_address"),
    ("https://0x7f.1:{port}/", "url_private_address"),
    ("https://0177.0.0.1:{port}/", "url_private_address"),
    ("https://127.1:{port}/", "url_private_address"),
    ("https://012.0.0.1/", "url_private_address"),
    ("https://internal.example/", "url_private_address"),
    ("https://half-internal.example/", "url_private_address"),
    ("https://loopback.example:{port}/", "url_private_address"),
    ("https://metadata.example/latest/meta-data", "url_private_address"),
    ("https://nowhere.example/", "url_unresolvable"),
    ("https://user:secret@example.com/", "url_invalid"),
    ("https://example.com@127.0.0.1:{port}/", "url_invalid"),
    ("https://127.0.0.1:{port}\\@example.com/", "url_invalid"),
    ("https:///hook", "url_invalid"),
    ("https://exa mple.com/", "url_invalid"),
    ("https://example.com/\r\nX-Injected: 1", "url_invalid"),
    ("https://exämple.com/", "url_invalid"),
    ("https://%31%32%37.0.0.1:{port}/", "url_invalid"),
    ("https://[fe80::1%25eth0]/", "url_invalid"),
    ("https://[127.0.0.1/", "url_invalid"),
    ("https://[example.com]/", "url_invalid"),
    ("https://[127.0.0.1]:{port}/", "url_invalid"),
    ("https://example.com:0/", "url_invalid"),
    ("https://example.com:65536/", "url_invalid"),
    ("https://example.com:port/", "url_invalid"),
    ("https://" + "a" * 2040 + ".example/", "url_invalid"),
]


@pytest.mark.parametrize(("url", "code"), PROBES, ids=[url[:60] for url, _ in PROBES])
def test_a_url_that_could_reach_inside_is_refused_with_its_reason_and_nothing_is_sent(
    receiver, url, code
):
    url = url.replace("{port}", str(receiver.port))

    with pytest.raises(UnsafeUrl) as refused:
        check_url(url, resolve=probe_dns)
    assert refused.value.code == code
    with pytest.raises(UnsafeUrl) as refused_at_delivery:
        WebhookSender(resolve=probe_dns).post(url, b"{}", {})
    assert refused_at_delivery.value.code == code

    assert receiver.untouched


def test_an_ipv6_loopback_receiver_is_not_reached(ipv6_receiver):
    with pytest.raises(UnsafeUrl) as refused:
        WebhookSender().post(ipv6_receiver.url(scheme="https"), b"{}", {})

    assert refused.value.code == "url_private_address"
    assert ipv6_receiver.untouched


def test_a_name_public_when_checked_but_loopback_at_delivery_is_refused_at_delivery(receiver):
    answers = iter([[PUBLIC], ["127.0.0.1"]])

    def resolve(host: str, port: int) -> list[str]:
        return next(answers)

    url = f"https://rebinding.example:{receiver.port}/hook"
    check_url(url, resolve=resolve)

    with pytest.raises(UnsafeUrl) as refused:
        WebhookSender(resolve=resolve).post(url, b"{}", {})

    assert refused.value.code == "url_private_address"
    assert receiver.untouched


def test_a_refusal_names_the_host_but_neither_the_path_nor_the_address():
    with pytest.raises(UnsafeUrl) as refused:
        check_url("https://internal.example/hooks?token=s3cret", resolve=probe_dns)

    message = str(refused.value)
    assert "internal.example" in message
    assert "s3cret" not in message and "10.1.2.3" not in message


@pytest.mark.parametrize(
    "address",
    [
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "127.0.0.53",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.254",
        "0.0.0.0",
        "192.0.0.1",
        "192.0.2.1",
        "198.18.0.1",
        "224.0.0.251",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "::ffff:10.1.2.3",
        "::ffff:169.254.169.254",
        "::ffff:0:127.0.0.1",
        "::10.1.2.3",
        "64:ff9b::10.1.2.3",
        "64:ff9b::127.0.0.1",
        "64:ff9b:1::5db8:d822",
        "2002:a01:203::1",
        "2002:a9fe:a9fe::",
        "2001::1",
        "2001:db8::1",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "fe80::1%eth0",
        "fec0::1",
        "ff02::1",
    ],
)
def test_a_name_resolving_to_an_address_that_is_not_public_is_refused(address):
    with pytest.raises(UnsafeUrl) as refused:
        check_url("https://receiver.example/hook", resolve=dns({"receiver.example": [address]}))

    assert refused.value.code == "url_private_address"


@pytest.mark.parametrize(
    "addresses",
    [
        [PUBLIC],
        ["2606:2800:220:1:248:1893:25c8:1946"],
        [PUBLIC, "2606:2800:220:1:248:1893:25c8:1946"],
        ["::ffff:93.184.216.34"],
        ["64:ff9b::93.184.216.34"],
        ["2002:5db8:d822::1"],
    ],
)
def test_a_name_resolving_only_to_public_addresses_passes(addresses):
    check_url("https://example.com/hooks/billing", resolve=dns({"example.com": addresses}))


def test_a_public_address_written_in_the_url_passes_without_a_lookup():
    def no_lookup(host: str, port: int) -> list[str]:
        raise AssertionError("an address needs no lookup")

    check_url(f"https://{PUBLIC}:8443/hook#fragment", resolve=no_lookup)
    check_url("https://[2606:2800:220:1:248:1893:25c8:1946]/hook", resolve=no_lookup)


def test_an_allowed_host_may_use_http_and_any_address_and_only_it():
    resolve = dns({"receiver.test": ["10.1.2.3"], "sub.receiver.test": ["10.1.2.3"]})
    allowed = {"RECEIVER.test", "::1"}

    check_url("http://receiver.test:8080/hook", allowed_hosts=allowed, resolve=resolve)
    check_url("https://Receiver.Test/hook", allowed_hosts=allowed, resolve=resolve)
    check_url("http://[0:0::1]/hook", allowed_hosts=allowed, resolve=resolve)
    for url in ("https://sub.receiver.test/", "https://127.0.0.1/", "https://[::1]/"):
        with pytest.raises(UnsafeUrl):
            check_url(url, allowed_hosts={"receiver.test"}, resolve=resolve)


def test_an_allowed_host_still_needs_a_valid_url_and_an_http_scheme():
    with pytest.raises(UnsafeUrl) as refused:
        check_url("ftp://127.0.0.1/", allowed_hosts={"127.0.0.1"})
    assert refused.value.code == "url_not_https"
    with pytest.raises(UnsafeUrl) as refused:
        check_url("http://user:pw@127.0.0.1/", allowed_hosts={"127.0.0.1"})
    assert refused.value.code == "url_invalid"
    with pytest.raises(UnsafeUrl) as refused:
        check_url("http://receiver.test/", allowed_hosts={"receiver.test"}, resolve=dns({}))
    assert refused.value.code == "url_unresolvable"


def test_a_url_at_the_length_limit_passes_and_one_past_it_is_refused():
    base = "https://example.com/"
    resolve = dns({"example.com": [PUBLIC]})
    check_url(base + "a" * (2048 - len(base)), resolve=resolve)

    with pytest.raises(UnsafeUrl) as refused:
        check_url(base + "a" * (2049 - len(base)), resolve=resolve)
    assert refused.value.code == "url_invalid"
