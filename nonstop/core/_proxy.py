"""Proxies: which one a connection goes through, and the handshake that opens its tunnel.

Theory of operation
-------------------
A proxy is named by a URL, parsed once into a :class:`Proxy`:

* ``http://[user:pass@]host[:port]``: HTTP ``CONNECT``, with
  ``Proxy-Authorization: Basic`` when credentials are given (port 8080 by
  default, as curl);
* ``https://...``: the same, over TLS to the proxy (port 443);
* ``socks5://``: SOCKS5 (RFC 1928, user name and password by RFC 1929),
  the feed's name looked up here; ``socks5h://``: the proxy looks it up;
* ``socks4a://``: SOCKS4A, the proxy looks the name up; a user name is
  sent as the SOCKS4 user id.

:class:`ProxyRules` says which proxy (if any) one connection goes through:
a fixed one for every connection (the ``proxy=`` option), or the rules of
the environment, read the way curl and httpx read them
(:func:`rules_from_environment`, given the environment as a mapping: the
core reads nothing itself): ``https_proxy`` for ``wss://``, ``http_proxy``
for ``ws://``, ``all_proxy`` for either when those are unset, lower case
before upper case, and ``no_proxy`` for the hosts that go direct.  The core
asks the rules at every connection (a URL provider may name another host
each time) and puts the answer in the ``OpenTransport`` effect.

:class:`ProxyHandshake` is the tunnel's handshake, sans-IO like the rest of
the core: the driver connects to the proxy (and, for ``https``, shakes
hands with TLS to it), writes :meth:`~ProxyHandshake.data_to_send`, feeds
what it reads to :meth:`~ProxyHandshake.receive_data` until
:attr:`~ProxyHandshake.done`, and then speaks to the feed through the same
socket (TLS to the feed included).  A proxy that refuses raises
:class:`ProxyError`, which says why and what to do, and carries the
decision: its reason, whether it is fatal (the proxy refused the
credentials: retrying cannot help) and the wait the proxy asked for
(``Retry-After``).  A failure to reach the proxy at all (refused, reset,
name lookup, TLS to the proxy) becomes one too, with
:func:`proxy_unreachable`.

The tunnel's reasons: ``proxy`` (the proxy could not be reached, broke the
connection or answered nonsense: retried with backoff), ``proxy_auth``
(credentials missing or refused: fatal), ``proxy_refused`` (the proxy would
not reach the feed: retried, waiting what ``Retry-After`` says).
Credentials never appear in a message: a proxy is shown as
``scheme://***@host:port``.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote, urlsplit

from ._errors import ConfigError
from ._guard import LATER_STATUSES, ProxyError, Reason
from ._retry_after import parse_retry_after

__all__ = [
    "Proxy",
    "ProxyError",
    "ProxyHandshake",
    "ProxyRules",
    "parse_proxy",
    "proxy_unreachable",
    "rules_from_environment",
]

#: Default ports by scheme.
_PORTS: Final = {"http": 8080, "https": 443, "socks5": 1080, "socks5h": 1080, "socks4a": 1080}
#: Longest answer header a ``CONNECT`` may get.
MAX_ANSWER: Final = 16384


@dataclass(frozen=True, slots=True)
class Proxy:
    """One proxy: where it is, how to speak to it, and who we are to it."""

    scheme: str
    """``http``, ``https``, ``socks5``, ``socks5h`` or ``socks4a``."""
    host: str
    port: int
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        """Does the connection to the proxy itself use TLS?"""
        return self.scheme == "https"

    @property
    def resolves_locally(self) -> bool:
        """Must the driver look the feed's name up itself (``socks5://``)?"""
        return self.scheme == "socks5"

    def __str__(self) -> str:
        """The proxy's URL with any credentials replaced by ``***``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        who = "***@" if self.username is not None or self.password is not None else ""
        return f"{self.scheme}://{who}{host}:{self.port}"

    def __repr__(self) -> str:
        return f"Proxy({str(self)!r})"


def parse_proxy(url: str, *, what: str = "proxy") -> Proxy:
    """Parse a proxy URL; a bad one raises :class:`ConfigError` naming
    *what* (the option or environment variable) and the problem.  A URL
    without a scheme is an HTTP proxy, as curl takes it."""
    if not isinstance(url, str):
        raise ConfigError(f"{what} must be a proxy URL string, got {type(url).__name__}")
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    shown = _shown(text)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{what}={shown!r} is not a usable proxy URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _PORTS:
        raise ConfigError(
            f"{what}={shown!r}: proxy scheme {scheme!r} is not supported; "
            "use http://, https://, socks5://, socks5h:// or socks4a://")
    host = parts.hostname
    if not host:
        raise ConfigError(f"{what}={shown!r} names no proxy host; write {scheme}://host:port")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"{what}={shown!r}: a proxy URL has no path, query or fragment; "
                          f"write {scheme}://host:port")
    if port == 0:
        raise ConfigError(f"{what}={shown!r}: port 0 is not a port you can connect to")
    username = None if parts.username is None else unquote(parts.username)
    password = None if parts.password is None else unquote(parts.password)
    if username is not None and "\x00" in username + (password or ""):
        raise ConfigError(f"{what}={shown!r}: the user name or password holds a NUL character (%00)")
    if scheme == "socks4a" and password:
        raise ConfigError(f"{what}={shown!r}: SOCKS4A has a user id but no password; "
                          "give socks4a://user@host:port, or use socks5://")
    if scheme.startswith("socks5") and username is not None and (
            len(username.encode()) > 255 or len((password or "").encode()) > 255):
        raise ConfigError(f"{what}: a SOCKS5 user name and password have 255 bytes at most")
    return Proxy(scheme, host, port if port is not None else _PORTS[scheme], username, password)


def _shown(text: str) -> str:
    """*text* with the user info of a URL replaced by ``***``, for errors."""
    head, sep, rest = text.partition("://")
    at = rest.rfind("@")  # (the last: a password may hold an unescaped "/", "?" or "#")
    return f"{head}{sep}***@{rest[at + 1:]}" if at >= 0 else text


# ---------------------------------------------------------------------------
# which proxy a connection goes through
@dataclass(frozen=True, slots=True)
class ProxyRules:
    """Which proxy each connection goes through.

    ``ws``/``wss``: the proxy for ``ws://`` and ``wss://`` feeds (``None``:
    direct).  ``no_proxy``: hosts that go direct (entries of ``no_proxy``:
    ``*``, a host name that matches itself and its subdomains, an IP
    address, a CIDR block, each with an optional ``:port``).  ``source``:
    where the rules came from, for log lines.
    """

    ws: Proxy | None
    wss: Proxy | None
    no_proxy: tuple[str, ...] = ()
    source: str = "proxy="

    @classmethod
    def fixed(cls, proxy: str | Proxy) -> ProxyRules:
        """One proxy for every connection (the ``proxy=`` option)."""
        chosen = proxy if isinstance(proxy, Proxy) else parse_proxy(proxy)
        return cls(chosen, chosen)

    def choose(self, *, tls: bool, host: str, port: int) -> Proxy | None:
        """The proxy for a connection to *host*:*port* (``None``: direct)."""
        proxy = self.wss if tls else self.ws
        if proxy is None or self.bypasses(host, port):
            return None
        return proxy

    def bypasses(self, host: str, port: int) -> bool:
        """Does ``no_proxy`` send *host*:*port* direct?"""
        name = host.strip("[]").rstrip(".").lower()
        address = _ip(name)
        for entry in self.no_proxy:
            if entry == "*":
                return True
            pattern, wanted = _split_port(entry.lower().strip("."))
            if wanted is not None and wanted != port:
                continue
            if address is not None and "/" in pattern:
                try:
                    if address in ipaddress.ip_network(pattern, strict=False):
                        return True
                except ValueError:
                    continue
            elif name == pattern or (address is None and name.endswith("." + pattern)) \
                    or (address is not None and _ip(pattern) == address):
                return True
        return False


def _digits(text: str) -> bool:
    """Is *text* a run of ASCII digits (``str.isdigit`` also takes "²")?"""
    return text.isascii() and text.isdigit()


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _split_port(entry: str) -> tuple[str, int | None]:
    """``host:port`` (``[v6]:port`` too) -> (host, port); no port: ``None``."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    else:
        return entry, None
    return host, int(port) if _digits(port) else None


def rules_from_environment(environ: Mapping[str, str]) -> ProxyRules | None:
    """The proxy rules of an environment (``os.environ``), or ``None`` when
    it names no proxy.  A bad value raises :class:`ConfigError` naming the
    variable."""

    def get(name: str) -> tuple[str, str] | None:
        for key in (name, name.upper()):
            value = environ.get(key, "").strip()
            if value:
                return key, value
        return None

    def proxy(name: str) -> Proxy | None:
        found = get(name) or get("all_proxy")
        if found is None:
            return None
        key, value = found
        return parse_proxy(value, what=f"the environment variable {key}")

    ws, wss = proxy("http_proxy"), proxy("https_proxy")
    if ws is None and wss is None:
        return None
    found = get("no_proxy")
    entries = () if found is None else tuple(
        e.lower().strip(".") for e in re.split(r"[,\s]+", found[1]) if e.strip("."))
    return ProxyRules(ws, wss, entries, source="the environment")


# ---------------------------------------------------------------------------
# failures
def proxy_unreachable(proxy: Proxy, error: BaseException) -> ProxyError:
    """The error for a connection to *proxy* that failed before or during
    its handshake for a reason of the network's (the driver raises it
    ``from`` *error*)."""
    detail = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return ProxyError(Reason.PROXY, f"cannot reach the proxy {proxy} ({detail}); "
                                    "is it up, and is its address right?")


# ---------------------------------------------------------------------------
# the handshake
_SOCKS5_REPLIES: Final = {
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}
_SOCKS4_REPLIES: Final = {
    0x5B: "request rejected or failed",
    0x5C: "the proxy could not reach our identd",
    0x5D: "the proxy's identd check refused our user id",
}


class ProxyHandshake:
    """Open a tunnel to *host*:*port* through *proxy* (see the module doc).

    *address*: the feed's IP address, for ``socks5://`` (which sends an
    address, not a name); the other schemes send the name.  *user_agent*:
    the ``User-Agent`` of a ``CONNECT``.
    """

    def __init__(self, proxy: Proxy, host: str, port: int, *, address: str | None = None,
                 user_agent: str | None = None) -> None:
        self.proxy = proxy
        self.host = host
        self.port = port
        self.done = False
        self._in = bytearray()
        self._out = bytearray()
        self._target = f"[{host}]" if ":" in host else host
        if proxy.scheme in ("http", "https"):
            self._step = self._http_answer
            self._out += self._connect_request(user_agent)
        elif proxy.scheme == "socks4a":
            self._step = self._socks4_answer
            self._out += self._socks4_request()
        else:
            if proxy.resolves_locally and _ip(address or host) is None:
                raise ValueError("socks5:// sends an IP address: give the looked-up address")
            self._address = address or host
            methods = b"\x00\x02" if proxy.username is not None else b"\x00"
            self._out += bytes((5, len(methods))) + methods
            self._step = self._socks5_method

    def data_to_send(self) -> bytes:
        """The bytes to write now (empty: none), taken."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> None:
        """Bytes from the proxy.  Raises :class:`ProxyError` if the proxy
        refused; empty *data* means it closed the connection."""
        if not data:
            raise ProxyError(Reason.PROXY, f"the proxy {self.proxy} closed the connection "
                                           "in the middle of its handshake")
        if self.done:
            raise self._early()
        self._in += data
        while not self.done and self._step():
            pass

    # -- HTTP CONNECT -----------------------------------------------------
    def _connect_request(self, user_agent: str | None) -> bytes:
        host = self._target if _ip(self.host) is not None else self._name().decode("ascii")
        target = f"{host}:{self.port}"
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        proxy = self.proxy
        if proxy.username is not None:
            pair = f"{proxy.username}:{proxy.password or ''}".encode()
            lines.append("Proxy-Authorization: Basic " + base64.b64encode(pair).decode("ascii"))
        if user_agent:
            lines.append(f"User-Agent: {user_agent}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")

    def _http_answer(self) -> bool:
        end = self._in.find(b"\r\n\r\n")
        if end < 0:
            if len(self._in) > MAX_ANSWER:
                raise self._nonsense(f"an answer header over {MAX_ANSWER} bytes")
            return False
        head = bytes(self._in[:end]).decode("latin-1")
        status_line, *lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not _digits(parts[1]):
            raise self._nonsense(f"the answer {status_line[:80]!r} to CONNECT")
        status = int(parts[1])
        text = parts[2].strip() if len(parts) > 2 else ""
        if 200 <= status < 300:
            if len(self._in) > end + 4:
                raise self._early()
            self.done = True
            return False
        headers = []
        for line in lines:
            name, sep, value = line.partition(":")
            if sep:
                headers.append((name.strip().encode("latin-1"), value.strip().encode("latin-1")))
        said = f"HTTP {status} {text}".rstrip()
        if status in (401, 407):  # (a 401 to CONNECT is the proxy's too: the feed was not reached)
            if self.proxy.username is None:
                raise ProxyError(Reason.PROXY_AUTH, f"the proxy {self.proxy} wants a user name and "
                                 f"password ({said}); put them in the proxy URL, "
                                 "http://user:password@host:port", fatal=True)
            raise ProxyError(Reason.PROXY_AUTH, f"the proxy {self.proxy} refused the credentials "
                             f"({said}): check the user name and password in the proxy URL", fatal=True)
        retry_after = parse_retry_after(headers)
        raise ProxyError(Reason.PROXY_REFUSED,
                         f"the proxy {self.proxy} would not open a tunnel to "
                         f"{self._target}:{self.port} ({said})",
                         retry_after=retry_after,
                         later=status in LATER_STATUSES or retry_after is not None)

    # -- SOCKS4A ----------------------------------------------------------
    def _socks4_request(self) -> bytes:
        user = (self.proxy.username or "").encode()
        return (struct.pack("!BBH", 4, 1, self.port) + b"\x00\x00\x00\x01" + user + b"\x00"
                + self._name() + b"\x00")

    def _socks4_answer(self) -> bool:
        if len(self._in) < 8:
            return False
        version, code = self._in[0], self._in[1]
        if version != 0:
            raise self._nonsense(f"a SOCKS4 answer of version {version}")
        if len(self._in) > 8:
            raise self._early()
        if code == 0x5A:
            self.done = True
            return False
        said = _SOCKS4_REPLIES.get(code, f"reply code {code:#04x}")
        if code in (0x5C, 0x5D):
            raise ProxyError(Reason.PROXY_AUTH, f"the proxy {self.proxy} refused us: {said}; "
                             "check the user id in the proxy URL (socks4a://user@host:port)", fatal=True)
        raise ProxyError(Reason.PROXY_REFUSED, f"the proxy {self.proxy} would not open a tunnel to "
                                               f"{self._target}:{self.port} ({said})")

    # -- SOCKS5 -----------------------------------------------------------
    def _socks5_method(self) -> bool:
        if len(self._in) < 2:
            return False
        version, method = self._in[0], self._in[1]
        del self._in[:2]
        if version != 5:
            raise self._nonsense(f"a SOCKS answer of version {version}")
        proxy = self.proxy
        if method == 0:
            self._socks5_request()
            return True
        if method == 2 and proxy.username is not None:
            user, password = proxy.username.encode(), (proxy.password or "").encode()
            self._out += bytes((1, len(user))) + user + bytes((len(password),)) + password
            self._step = self._socks5_auth
            return True
        if method == 0xFF and proxy.username is None:
            raise ProxyError(Reason.PROXY_AUTH, f"the proxy {proxy} wants a user name and password; "
                             "put them in the proxy URL, socks5://user:password@host:port", fatal=True)
        if method == 0xFF:
            raise ProxyError(Reason.PROXY_AUTH, f"the proxy {proxy} accepts neither a user name and "
                             "password nor no authentication: it wants a method nonstop does not "
                             "speak (GSSAPI?)", fatal=True)
        raise self._nonsense(f"SOCKS5 method {method:#04x}, which the client did not offer")

    def _socks5_auth(self) -> bool:
        if len(self._in) < 2:
            return False
        version, status = self._in[0], self._in[1]
        del self._in[:2]
        if version != 1:
            raise self._nonsense(f"a user name and password answer of version {version}")
        if status != 0:
            raise ProxyError(Reason.PROXY_AUTH, f"the proxy {self.proxy} refused the credentials "
                             f"(SOCKS5 status {status}): check the user name and password in the "
                             "proxy URL", fatal=True)
        self._socks5_request()
        return True

    def _socks5_request(self) -> None:
        if self.proxy.resolves_locally:
            address = ipaddress.ip_address(self._address)
            kind = 1 if address.version == 4 else 4
            where = bytes((kind,)) + address.packed
        else:
            name = self._name()
            if len(name) > 255:
                raise ProxyError(Reason.PROXY, f"the host name {self.host[:40]}... is too long for "
                                               "SOCKS5 (255 bytes at most)", fatal=True)
            where = bytes((3, len(name))) + name
        self._out += b"\x05\x01\x00" + where + struct.pack("!H", self.port)
        self._step = self._socks5_answer

    def _socks5_answer(self) -> bool:
        if len(self._in) < 5:
            return False
        version, code, kind = self._in[0], self._in[1], self._in[3]
        if version != 5:
            raise self._nonsense(f"a SOCKS answer of version {version}")
        if code != 0:
            said = _SOCKS5_REPLIES.get(code, f"reply code {code}")
            raise ProxyError(Reason.PROXY_REFUSED, f"the proxy {self.proxy} would not open a tunnel "
                                                   f"to {self._target}:{self.port} ({said})")
        sizes = {1: 4, 4: 16, 3: 1 + self._in[4]}
        if kind not in sizes:
            raise self._nonsense(f"a SOCKS5 answer with address type {kind}")
        size = 4 + sizes[kind] + 2
        if len(self._in) < size:
            return False
        if len(self._in) > size:
            raise self._early()
        self.done = True
        return False

    def _name(self) -> bytes:
        """The feed's host name as the proxy gets it (IDNA)."""
        try:
            return self.host.encode("idna")
        except UnicodeError as exc:
            raise ProxyError(Reason.PROXY, f"the host name {self.host[:40]!r} cannot be sent to the "
                                           f"proxy ({exc})", fatal=True) from None

    def _early(self) -> ProxyError:
        return ProxyError(Reason.PROXY, f"the proxy {self.proxy} sent data for the feed "
                                        "before the client spoke")

    def _nonsense(self, what: str) -> ProxyError:
        return ProxyError(Reason.PROXY, f"the proxy {self.proxy} answered with {what}: "
                                        "is it the kind of proxy its URL says?")
