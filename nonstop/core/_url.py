"""Parsing and redacting WebSocket URLs (RFC 6455 section 3).

Theory of operation
-------------------
A URL is parsed once, when the configuration is built, into an
:class:`Endpoint`: everything the driver needs to open a transport (host,
port, TLS, server name for SNI) and everything the handshake needs (the
``Host`` header and the request target).  A bad URL raises
:class:`~nonstop.core.InvalidURL` right there, naming the problem, so a typo
never turns into an endless reconnect loop.

Credentials in the URL (``wss://user:pass@host/``) are moved into an
``Authorization: Basic`` header, as browsers and websockets do.  The
:func:`redact_url` function removes user info, the values of query
parameters that look like secrets, and path segments that look like tokens
(a listen key, a JWT: 24 or more URL-safe characters mixing letters and
digits), for log lines and events.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from ._errors import InvalidURL

__all__ = ["Endpoint", "parse_url", "redact_url"]

_DEFAULT_PORTS = {"ws": 80, "wss": 443}

#: Query parameter names (lower case, substring match) whose values never
#: appear in logs or events.
SECRET_WORDS = (
    "token",
    "key",
    "secret",
    "sig",
    "pass",
    "auth",
    "session",
    "credential",
    "jwt",
    "cookie",
)

REDACTED = "***"

# RFC 3986 "unreserved" + "sub-delims" + ":@/%" are safe in a request target.
_TARGET_SAFE = "/:@!$&'()*+,;=-._~%?"
#: ``scheme://[user@]`` then an IPv4 address in brackets.
_BRACKETED_IPV4 = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://(?:[^/@]*@)?\[[0-9.]+\]")
_HOST_RE = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=%-]+$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """Where and how to connect, derived from a ``ws://`` or ``wss://`` URL."""

    url: str
    """The URL as given (may contain secrets; use :attr:`redacted`)."""
    host: str
    """Host name or IP address, without IPv6 brackets."""
    port: int
    tls: bool
    target: str
    """The request target: path and query, percent-encoded."""
    host_header: str
    """The value of the ``Host`` header (RFC 7230 section 5.4)."""
    basic_auth: str | None
    """An ``Authorization`` header value made from user info, if any."""
    redacted: str
    """The URL with user info and secret query values replaced by ``***``."""


def parse_url(url: str) -> Endpoint:
    """Parse *url*, raising :class:`InvalidURL` with the reason if unusable."""
    if not isinstance(url, str):
        raise InvalidURL(repr(url), f"expected a str, got {type(url).__name__}")
    if any(c.isspace() for c in url):
        raise InvalidURL(url, "contains white space; percent-encode it as %20")
    if _BRACKETED_IPV4.match(url):  # checked here: urlsplit rejects it only on some Pythons
        raise InvalidURL(url, "An IPv4 address cannot be in brackets; write it without them")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        hint = "; the port must be a number from 1 to 65535" if "port" in str(exc).lower() else ""
        raise InvalidURL(url, f"{exc}{hint}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        hint = " (use ws:// or wss://)" if scheme in ("http", "https") else ""
        raise InvalidURL(url, f"scheme must be ws or wss, not {scheme or 'missing'!r}{hint}")
    if parts.fragment or url.endswith("#"):
        raise InvalidURL(url, "fragments (#...) are not allowed in WebSocket URLs (RFC 6455 3)")
    host = parts.hostname
    if not host:
        raise InvalidURL(url, "no host; write it as ws://host:port/path")
    bracketed = parts.netloc.rpartition("@")[2].startswith("[")
    if bracketed:
        if ":" not in host:
            raise InvalidURL(url, "brackets are only for IPv6 addresses")
    elif host.isascii():
        if not _HOST_RE.match(host):
            raise InvalidURL(url, f"host {host!r} is not a valid host name")
    else:
        try:
            host.encode("idna")
        except UnicodeError:
            raise InvalidURL(url, f"host {host!r} is not a valid host name") from None
    if port == 0:
        raise InvalidURL(url, "port 0 is not a port you can connect to")
    tls = scheme == "wss"
    default_port = _DEFAULT_PORTS[scheme]
    port = default_port if port is None else port
    host_in_header = f"[{host}]" if bracketed else host
    host_header = host_in_header if port == default_port else f"{host_in_header}:{port}"
    path = quote(parts.path or "/", safe=_TARGET_SAFE)
    target = path + ("?" + quote(parts.query, safe=_TARGET_SAFE) if parts.query else "")
    basic_auth = None
    if parts.username is not None or parts.password is not None:
        creds = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        basic_auth = "Basic " + base64.b64encode(creds.encode("utf-8")).decode("ascii")
    return Endpoint(
        url=url,
        host=host,
        port=port,
        tls=tls,
        target=target,
        host_header=host_header,
        basic_auth=basic_auth,
        redacted=redact_url(url),
    )


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS)


_TOKEN = re.compile(r"[A-Za-z0-9_~.=+-]{24,}")


def _looks_like_token(segment: str) -> bool:
    """A path segment that is probably a credential (a listen key, a JWT):
    24 or more URL-safe characters with both letters and digits."""
    return (_TOKEN.fullmatch(segment) is not None and any(c.isdigit() for c in segment)
            and any(c.isalpha() for c in segment))


def redact_url(url: str) -> str:
    """Return *url* with user info and secret-looking query values hidden.

    Works on any string; something that does not parse is returned with its
    query and user info cut off rather than risk leaking them.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("?", 1)[0].rpartition("@")[2]
    netloc = parts.netloc
    if "@" in netloc:
        netloc = REDACTED + "@" + netloc.rpartition("@")[2]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_is_secret(k) for k, _ in pairs):
            query = urlencode(
                [(k, REDACTED if _is_secret(k) else v) for k, v in pairs], safe="*"
            )
    path = "/".join(REDACTED if _looks_like_token(seg) else seg for seg in parts.path.split("/"))
    out = f"{parts.scheme}://{netloc}{path}"
    return out + ("?" + query if query else "")
