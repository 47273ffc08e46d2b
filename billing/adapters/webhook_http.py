"""Posting a webhook to a URL a customer gave us, without letting that URL reach inside.

A receiver's URL is the customer's to choose, so it is read as an attacker's would be
(server-side request forgery): only https, and every address its name resolves to must be
public, not one of ours, the cloud's metadata service or anything else only we can reach.
The check runs when the URL is registered and again at every delivery, since a name may
point elsewhere by then. The connection goes to the very address that was checked: the
name is never resolved a second time, where DNS could answer differently (rebinding). The
name itself still goes in the Host header, the TLS server name and the certificate check.

Hosts named in `allowed_hosts` (tests, our own receivers) may use plain http and any address.

Built on the standard library's http.client, which neither follows redirects nor reads
proxies from the environment: a 3xx is an answer like any other, and the request goes
straight to the address checked, never through a proxy that would resolve the name anew.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

# (host, port) -> every address the host resolves to, as strings.
Resolver = Callable[[str, int], list[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2048
EXCERPT_CHARS = 500
DEFAULT_PORTS = {"http": 80, "https": 443}

# Not public, whatever else ipaddress says of them: its own lists differ between Python
# releases (and call multicast global), so the ranges a receiver may never be in are
# written out here too. An address must pass both.
_NOT_PUBLIC = tuple(
    ipaddress.ip_network(network)
    for network in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches the host itself
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, where cloud metadata services answer
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and the broadcast address
        "::ffff:0:0:0/96",  # IPv4-translated
        "64:ff9b:1::/48",  # NAT64 for local use
        "100::/64",
        "2001::/23",  # protocol assignments, Teredo among them
        "2001:db8::/32",
        "3fff::/20",
        "5f00::/16",
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local
        "ff00::/8",  # multicast
    )
)
# NAT64's well-known prefix: the IPv4 address in its last 32 bits is the one reached.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

_HOST_NAME = re.compile(r"(?:[a-z0-9_-]+\.)*[a-z0-9_-]+\.?")
# Ours to set on every request, whatever the caller passes: the Host is the checked URL's,
# and one delivery is one connection, its body's length told by http.client.
_OWN_HEADERS = {"host", "connection", "content-length", "transfer-encoding"}


class UnsafeUrl(ValueError):
    """A URL we will not post to. `code` is stable (url_invalid, url_not_https,
    url_unresolvable, url_private_address); the message is for the customer and names
    no more of the URL than its host, and none of the addresses it resolved to."""

    code: str

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, through the system's resolver."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(sockaddr[0]) for *_, sockaddr in found))


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str  # lowercase; an IPv6 address without its brackets
    port: int
    path: str  # the request target: path and query
    addresses: tuple[str, ...]  # checked, to be connected to as they are

    @property
    def host_header(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == DEFAULT_PORTS[self.scheme] else f"{name}:{self.port}"


def check_url(
    url: str, *, allowed_hosts: Collection[str] = (), resolve: Resolver = resolve_host
) -> None:
    """Raises UnsafeUrl unless `url` may receive webhooks: an https URL, without a user
    name or password, whose host is public and resolves only to public addresses; or any
    http(s) URL of a host in `allowed_hosts`."""
    _checked(url, {_host_key(host) for host in allowed_hosts}, resolve)


def _checked(url: str, allowed: Collection[str], resolve: Resolver) -> _Target:
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeUrl("url_invalid", f"a webhook URL is at most {MAX_URL_LENGTH} characters")
    # What the URL means must not depend on who reads it: no character that parsers
    # drop, decode or take for a separator differently.
    if not url.isascii() or not url.isprintable() or " " in url or "\\" in url:
        raise UnsafeUrl(
            "url_invalid",
            "a webhook URL is plain ASCII without spaces or backslashes "
            "(a name in another script is written in its xn-- form)",
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeUrl("url_invalid", "the webhook URL does not parse") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise UnsafeUrl("url_not_https", "a webhook URL starts with https://")
    if "@" in parts.netloc:
        raise UnsafeUrl("url_invalid", "a webhook URL carries no user name or password")
    host = parts.hostname or ""
    literal = _literal_address(host, bracketed=parts.netloc.startswith("["))
    if port == 0:
        raise UnsafeUrl("url_invalid", f"the webhook URL's port for {host} is 0")
    port = port or DEFAULT_PORTS[scheme]
    is_allowed = _host_key(host) in allowed
    if scheme != "https" and not is_allowed:
        raise UnsafeUrl("url_not_https", f"webhooks go over https only; the URL for {host} is not")

    if literal is not None:
        addresses = [literal]
    else:
        addresses = _resolved(host, port, resolve)
    if not is_allowed and not all(_is_public(address) for address in addresses):
        what = "is not" if literal is not None else "resolves to an address that is not"
        raise UnsafeUrl(
            "url_private_address",
            f"{host} {what} public: webhooks go to public internet addresses only",
        )
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(scheme, host, port, path, tuple(str(address) for address in addresses))


def _literal_address(host: str, *, bracketed: bool) -> IPAddress | None:
    """The address a host written as one names, else None for a name. A name that is not
    a plain DNS name is refused, so the Host header and the resolver get what was checked."""
    if not host:
        raise UnsafeUrl("url_invalid", "the webhook URL has no host")
    if "%" in host:  # an IPv6 zone, or percent-encoding in a name
        raise UnsafeUrl("url_invalid", "the webhook URL's host is not a plain name or address")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if bracketed:
            raise UnsafeUrl("url_invalid", "the webhook URL's [host] is no IPv6 address") from None
    else:
        return address
    if len(host) > 253 or not _HOST_NAME.fullmatch(host):
        raise UnsafeUrl("url_invalid", "the webhook URL's host is not a plain name or address")
    try:
        # The forms the system's resolver reads as IPv4 besides a.b.c.d (2130706433,
        # 0x7f.1, 0177.0.0.1, 127.1), so each is checked as the address it is.
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _resolved(host: str, port: int, resolve: Resolver) -> list[IPAddress]:
    try:
        found = resolve(host, port)
    except (OSError, UnicodeError) as exc:  # UnicodeError: a label the IDNA codec refuses
        raise UnsafeUrl("url_unresolvable", f"{host} does not resolve") from exc
    try:
        addresses = [ipaddress.ip_address(address) for address in found]
    except ValueError as exc:
        raise UnsafeUrl("url_unresolvable", f"{host} does not resolve to addresses") from exc
    if not addresses:
        raise UnsafeUrl("url_unresolvable", f"{host} does not resolve")
    return addresses


def _host_key(host: str) -> str:
    """How a host is compared with `allowed_hosts`: lowercase, an address in one spelling."""
    host = host.strip().lower().removeprefix("[").removesuffix("]")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def _is_public(address: IPAddress) -> bool:
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return _is_public(embedded)
    return address.is_global and not any(address in network for network in _NOT_PUBLIC)


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one is only a way to reach, if it is one of those: mapped
    (::ffff:a.b.c.d, which a dual-stack socket connects to over IPv4), compatible
    (::a.b.c.d, and :: and ::1 with them), NAT64 or 6to4."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64 or int(address) >> 32 == 0:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return address.sixtofour


@dataclass(frozen=True)
class WebhookResponse:
    status: int | None  # None when no HTTP answer came (timeout, refused, TLS error)
    body_excerpt: str
    duration_ms: int
    error: str | None  # None when an HTTP answer came, whatever its status

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class _Deadline:
    """Shuts a socket down once its time is up. A socket's timeout bounds each wait for
    data, not a whole answer: a receiver that trickles a byte at a time would hold the
    worker for as long as it liked. Shutting the socket down ends whatever read or write
    is under way, in the TLS handshake, the headers or the body alike."""

    def __init__(self) -> None:
        self.passed = False
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._started = 0  # which start a timer belongs to: an earlier one's cut is void

    def start(self, sock: socket.socket, seconds: float) -> None:
        with self._lock:
            self._cancel()
            self._started += 1
            self._timer = threading.Timer(seconds, self._cut, args=(sock, self._started))
            self._timer.daemon = True
            self._timer.start()

    def stop(self) -> None:
        # Under the lock, so a cut under way is over before the caller closes the socket
        # (its descriptor could be another connection's by then).
        with self._lock:
            self._cancel()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _cut(self, sock: socket.socket, started: int) -> None:
        with self._lock:
            if self._timer is None or started != self._started:
                return
            self.passed = True
            try:
                # socket.socket's own shutdown, even for TLS: SSLSocket's also drops its
                # TLS state, under the feet of the thread reading from it.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass  # already shut: the exchange ended on its own


class _OnSocket(http.client.HTTPConnection):
    """http.client over a socket already connected to the checked address (and, for https,
    through its handshake). It never opens a connection of its own."""

    def __init__(self, sock: socket.socket, address: str, port: int) -> None:
        super().__init__(address, port)
        self.sock = sock

    def connect(self) -> None:
        raise http.client.NotConnected("a webhook is sent on the connection to its address")


class WebhookSender:
    """POSTs a body to a checked URL. `connect_timeout` bounds connecting (TCP and TLS),
    `read_timeout` everything after it in total: sending, waiting and reading the answer.
    At most `max_body_bytes` of the answer's body are read; a receiver's answer is only
    kept as a hint for the customer, and a large one would only cost us."""

    def __init__(
        self,
        *,
        allowed_hosts: Collection[str] = (),
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        max_body_bytes: int = 4096,
        resolve: Resolver = resolve_host,
        user_agent: str = "billing-webhooks/1",
        ca_file: str | None = None,
    ) -> None:
        if connect_timeout <= 0 or read_timeout <= 0 or max_body_bytes < 0:
            raise ValueError("timeouts are positive and the body cap is not negative")
        self._allowed = frozenset(_host_key(host) for host in allowed_hosts)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_body_bytes = max_body_bytes
        self._resolve = resolve
        self._user_agent = user_agent
        self._ca_file = ca_file  # a private CA's certificates, for our own receivers
        self._tls: ssl.SSLContext | None = None

    def _tls_context(self) -> ssl.SSLContext:
        # Built at the first https delivery, not when the sender is: loading the
        # certificate authorities is work only a process that delivers needs.
        if self._tls is None:
            self._tls = ssl.create_default_context(cafile=self._ca_file)
        return self._tls

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> WebhookResponse:
        """Raises UnsafeUrl, before anything is sent, for a URL check_url refuses now.
        Any other failure is the returned response's `error`, never an exception:
        "timeout", "connection refused: ...", "connection failed: ...", "tls: ...",
        "bad answer: ..." or "connection lost: ..."."""
        started = time.monotonic()
        target = _checked(url, self._allowed, self._resolve)
        status, content, error = self._deliver(target, body, self._headers(target, headers))
        return WebhookResponse(
            status=status,
            body_excerpt=content.decode("utf-8", errors="replace")[:EXCERPT_CHARS],
            duration_ms=round((time.monotonic() - started) * 1000),
            error=error,
        )

    def _headers(self, target: _Target, given: Mapping[str, str]) -> dict[str, str]:
        merged = {
            "content-type": ("Content-Type", "application/json"),
            "user-agent": ("User-Agent", self._user_agent),
        }
        merged.update(
            (name.lower(), (name, value))
            for name, value in given.items()
            if name.lower() not in _OWN_HEADERS
        )
        merged["host"] = ("Host", target.host_header)
        merged["connection"] = ("Connection", "close")
        return dict(merged.values())

    def _deliver(
        self, target: _Target, body: bytes, headers: dict[str, str]
    ) -> tuple[int | None, bytes, str | None]:
        error = "connection failed: no address"
        for address in target.addresses:
            try:
                sock = socket.create_connection(
                    (address, target.port), timeout=self._connect_timeout
                )
            except OSError as exc:
                # Nothing was sent: the host's next address may answer.
                error = _connect_error(exc, target)
                continue
            return self._exchange(sock, address, target, body, headers)
        return None, b"", error

    def _exchange(
        self,
        sock: socket.socket,
        address: str,
        target: _Target,
        body: bytes,
        headers: dict[str, str],
    ) -> tuple[int | None, bytes, str | None]:
        deadline = _Deadline()
        status: int | None = None
        content = b""
        try:
            if target.scheme == "https":
                sock = self._tls_context().wrap_socket(
                    sock,
                    server_hostname=target.host.rstrip("."),
                    do_handshake_on_connect=False,
                )
                deadline.start(sock, self._connect_timeout)  # the handshake is connecting too
                sock.do_handshake()
            deadline.start(sock, self._read_timeout)
            sock.settimeout(self._read_timeout)
            connection = _OnSocket(sock, address, target.port)
            connection.request("POST", target.path, body=body, headers=headers)
            answer = connection.getresponse()
            status = answer.status
            content = self._read_capped(answer)
        except (OSError, http.client.HTTPException) as exc:
            if deadline.passed or isinstance(exc, TimeoutError):
                return None, b"", "timeout"
            if status is None:
                return None, b"", _exchange_error(exc)
            # The answer's status came, and only its body broke off: it stands.
        finally:
            deadline.stop()
            sock.close()
        if deadline.passed:
            return None, b"", "timeout"
        return status, content, None

    def _read_capped(self, answer: http.client.HTTPResponse) -> bytes:
        content = bytearray()
        while len(content) < self._max_body_bytes:
            chunk = answer.read(self._max_body_bytes - len(content))
            if not chunk:
                break
            content += chunk
        return bytes(content)


def _connect_error(exc: OSError, target: _Target) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    where = f"{target.host}:{target.port}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused: {where}"
    return f"connection failed: {where}: {exc.strerror or exc}"


def _exchange_error(exc: OSError | http.client.HTTPException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"tls: certificate not accepted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"tls: {exc.reason or exc}"
    if isinstance(exc, http.client.HTTPException):
        return f"bad answer: {type(exc).__name__}: {exc}"
    return f"connection lost: {exc.strerror or exc}"
