"""Server-side authentication checks of the feed server, as private feeds do them.

Theory of operation
-------------------
Private exchange feeds authenticate in one of three ways, and
:class:`~nonstop.testing.FeedServer` can play each of them (its ``auth``
parameter), so that a client's login code can be tested against a server
that really checks it:

* :class:`HmacLogin`: the first WebSocket message must be a signed login
  (``{"op":"login","key":...,"ts":...,"sig":...}``); nothing streams and no
  subscription is answered before it succeeds.
* :class:`TokenSubscriptions`: every subscription carries a short-lived,
  HMAC-signed token that is good for one connection only.
* :class:`ListenKeys`: the client first asks for a *listen key* over plain
  HTTP (``POST /listenKey``), then upgrades on ``/ws/<key>``; each key opens
  one connection.

The three classes are frozen configuration: what the server checks, plus
the helpers a client would write (:meth:`HmacLogin.message`,
:meth:`TokenSubscriptions.mint`), which tests and documentation examples may
copy.  The server's memory of what was used (signatures, tokens, keys) lives
in one :class:`AuthGate` per server, whose methods take the wall-clock time
as an argument (``now``, Unix seconds, because that is what clients sign)
and return ``None`` for "accepted" or the reason for a refusal.  A refusal
reason never contains the signature, the token or the secret.

Bounds.  Used signatures are remembered only while their timestamp is still
fresh (``max_age``), used tokens only until they expire, and unused listen
keys at most ``limit`` at a time (the oldest is forgotten first), so the
gate's memory does not grow with a long test run.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import ClassVar, Final, TypeAlias, final

__all__ = [
    "AuthGate",
    "AuthMode",
    "HmacLogin",
    "ListenKeys",
    "TokenSubscriptions",
    "hmac_sha256_hex",
    "login_ack",
    "token_error",
]

_JSON_SEPARATORS: Final = (",", ":")
_TOKEN: Final = re.compile(r"([1-9][0-9]{0,18})(\.[A-Za-z0-9_-]{1,64})?\.([0-9a-f]{64})")
_TS_LIMIT: Final = 1 << 53


def hmac_sha256_hex(secret: str, text: str) -> str:
    """``HMAC-SHA256(key=secret, msg=text)`` as lowercase hex (both UTF-8 encoded)."""
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def _check_secret(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty str")  # never echo a secret
    return value


def _check_positive(name: str, value: object, low: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < low:
        raise ValueError(f"{name} must be a finite number >= {low}, got {value!r}")
    return float(value)


@final
@dataclass(frozen=True, slots=True)
class HmacLogin:
    """A signed login as the first message of every connection.

    What the client must send, as its first message on each connection (a
    text frame)::

        {"op":"login","key":API_KEY,"ts":TS,"sig":SIG}

    * ``TS``: the client's Unix time in seconds, a JSON number (an integer or
      a decimal fraction);
    * ``SIG``: lowercase hex of ``HMAC-SHA256(secret, f"{ts}GET/realtime")``,
      where ``ts`` is the JSON number *as Python parses it* formatted with
      ``str()``: an integer as its digits (``1700000000``), a fraction as
      Python's shortest round-trip form (``1700000000.25``).  A Python client
      that puts the same ``int``/``float`` in the JSON and in the signature
      always matches; other languages should send an integer or sign the
      exact text their JSON encoder wrote (which is the same for ordinary
      values).  :meth:`sign` and :meth:`message` are the reference.

    What the server answers:

    * accepted (the key is ``api_key``, the signature matches, compared with
      :func:`hmac.compare_digest`, ``abs(server_time - ts) <= max_age`` and the
      signature was never used before): the text ``{"op":"login","success":true}``;
      streaming starts right after it, and subscriptions are answered from
      then on;
    * refused: a close frame with code 1008 (policy violation) and one of the
      reasons ``"unknown key"``, ``"malformed login"`` (``ts`` not a number,
      ``sig`` not a string), ``"bad signature"``, ``"stale timestamp"``,
      ``"replayed signature"`` (this exact login was accepted before, on any
      connection); any other message before the login (a subscription, an
      echo, binary data) gets ``"login required"``.  The reason never repeats
      the signature or the secret.

    Pings are answered before the login as always.  Outcomes are recorded in
    :attr:`FeedServer.auth_log <nonstop.testing.FeedServer.auth_log>`.
    """

    #: The only API key the server knows.
    api_key: str
    #: The shared secret (not shown in ``repr``).
    secret: str = field(repr=False)
    #: The largest accepted difference between the client's ``ts`` and the
    #: server's clock, in seconds (either way).
    max_age: float = 5.0

    #: What the signature covers after the timestamp.
    SIGNED_SUFFIX: ClassVar[str] = "GET/realtime"

    def __post_init__(self) -> None:
        if not isinstance(self.api_key, str) or not self.api_key:
            raise TypeError(f"api_key must be a non-empty str, got {self.api_key!r}")
        _check_secret("secret", self.secret)
        object.__setattr__(self, "max_age", _check_positive("max_age", self.max_age, 0.0))

    def sign(self, ts: int | float) -> str:
        """The signature of timestamp ``ts``: ``HMAC-SHA256(secret, f"{ts}GET/realtime")`` in hex.

        This is what a client computes; the server computes the same from the
        ``ts`` it parsed.
        """
        if isinstance(ts, bool) or not isinstance(ts, (int, float)):
            raise TypeError(f"ts must be a number, got {ts!r}")
        return hmac_sha256_hex(self.secret, f"{ts}{self.SIGNED_SUFFIX}")

    def message(self, ts: int | float | None = None) -> dict[str, object]:
        """The login message for timestamp ``ts`` (default: ``time.time()`` now).

        Send it as the first text message, as JSON:
        ``await ws.send(json.dumps(auth.message()))``.
        """
        if ts is None:
            ts = time.time()
        return {"op": "login", "key": self.api_key, "ts": ts, "sig": self.sign(ts)}


@final
@dataclass(frozen=True, slots=True)
class TokenSubscriptions:
    """Subscriptions that carry a short-lived signed token.

    What the client must send: every subscription (the server's usual
    detection: JSON with ``"op": "subscribe"``) carries a field ``"token"``::

        {"op":"subscribe","channel":"orders","token":"1700000120.<64 hex digits>"}

    The token is ``f"{exp}.{hex}"``: ``exp`` an integer Unix time in the
    future and at most ``ttl`` seconds ahead of the server's clock, ``hex``
    lowercase hex of ``HMAC-SHA256(secret, str(exp))``; or, with a nonce
    (up to 64 of ``A-Za-z0-9_-``, as a JWT's ``jti``: two tokens minted in
    the same second differ), ``f"{exp}.{nonce}.{hex}"`` with ``hex`` over
    ``f"{exp}.{nonce}"``.  A token is good for
    one connection: it may be used for several subscriptions on the
    connection that used it first, and is refused on any other.
    :meth:`mint` is the reference.

    What the server answers:

    * accepted: the usual acknowledgement ``{"event":"subscribed","request":<msg>}``;
    * refused: the text ``{"event":"error","request":<msg>,"reason":REASON}``,
      then a close frame with code 1008 and the same reason, one of
      ``"missing token"``, ``"malformed token"``, ``"bad token signature"``,
      ``"expired token"``, ``"token too far ahead"``, ``"token already used"``.

    Messages that are not subscriptions are handled as usual.  Outcomes are
    recorded in :attr:`FeedServer.auth_log <nonstop.testing.FeedServer.auth_log>`.
    """

    #: The shared secret (not shown in ``repr``).
    secret: str = field(repr=False)
    #: How far ahead a token's expiry may be, in seconds (at least 1).
    ttl: float = 120.0

    def __post_init__(self) -> None:
        _check_secret("secret", self.secret)
        object.__setattr__(self, "ttl", _check_positive("ttl", self.ttl, 1.0))

    def mint(self, now: float | None = None) -> str:
        """A fresh token, as a client would make it: ``f"{exp}.{hmac_hex(secret, str(exp))}"``
        with ``exp = floor(now + ttl)`` (``now`` defaults to ``time.time()``).

        Put it in the subscription's ``"token"`` field; make a new one for
        each connection.  A ``now`` in the past gives an expired token.
        """
        if now is None:
            now = time.time()
        exp = math.floor(now + self.ttl)
        return f"{exp}.{hmac_sha256_hex(self.secret, str(exp))}"


@final
@dataclass(frozen=True, slots=True)
class ListenKeys:
    """Connections opened with a one-time listen key fetched over plain HTTP.

    What the client must do:

    1. ``POST /listenKey`` on the server's port (plain HTTP/1.1, or HTTPS when
       the server has an ``ssl_context``; any body, or none).  The server
       answers ``200 OK`` with ``Content-Type: application/json`` and the body
       ``{"listenKey":KEY}`` (``KEY`` from :func:`secrets.token_urlsafe`, 43
       URL-safe characters), then closes the connection.
    2. Open the WebSocket on ``/ws/KEY`` (a query string is allowed).

    What the server answers: the usual ``101`` for a key it issued and that
    was never used; otherwise (unknown key, used key, another path)
    ``401 Unauthorized`` with the text body ``listen key unknown or used``.
    Every key opens one connection.  Other methods on ``/listenKey`` get
    ``405 Method Not Allowed`` (``Allow: POST``); other plain HTTP requests
    get ``400`` as on any FeedServer.  The server counts issued keys
    (:attr:`FeedServer.listen_keys_issued <nonstop.testing.FeedServer.listen_keys_issued>`)
    and records outcomes in :attr:`FeedServer.auth_log <nonstop.testing.FeedServer.auth_log>`.
    """

    #: The HTTP path that issues keys.
    ISSUE_PATH: ClassVar[str] = "/listenKey"
    #: The WebSocket path is this prefix followed by the key.
    WS_PREFIX: ClassVar[str] = "/ws/"
    #: The body of the 401 answer.
    REFUSED: ClassVar[str] = "listen key unknown or used"


#: The three authentication modes (FeedServer's ``auth`` parameter).
AuthMode: TypeAlias = HmacLogin | TokenSubscriptions | ListenKeys


def login_ack() -> str:
    """The answer to an accepted login."""
    return json.dumps({"op": "login", "success": True}, separators=_JSON_SEPARATORS)


def token_error(request: str, reason: str) -> str:
    """The answer to a subscription whose token was refused."""
    return json.dumps({"event": "error", "request": request, "reason": reason}, separators=_JSON_SEPARATORS)


class AuthGate:
    """What one server remembers for its ``auth`` mode; see the module docstring.

    Each ``check_*`` method returns ``None`` to accept or a refusal reason.
    """

    def __init__(self, auth: AuthMode | None, limit: int) -> None:
        if auth is not None and not isinstance(auth, (HmacLogin, TokenSubscriptions, ListenKeys)):
            raise TypeError(f"auth must be HmacLogin, TokenSubscriptions, ListenKeys or None, got {auth!r}")
        self.auth = auth
        self._limit = limit
        self._signatures: dict[str, float] = {}  # accepted login signature -> its ts
        self._tokens: dict[str, tuple[int, int]] = {}  # used token -> (exp, connection id)
        self._keys: OrderedDict[str, None] = OrderedDict()  # issued, unused listen keys
        #: Listen keys issued so far.
        self.listen_keys_issued = 0

    # -- HmacLogin ---------------------------------------------------------

    @property
    def needs_login(self) -> bool:
        return isinstance(self.auth, HmacLogin)

    def check_login(self, message: str | bytes, now: float) -> str | None:
        """Check a connection's first message against :class:`HmacLogin`."""
        auth = self.auth
        assert isinstance(auth, HmacLogin)
        if isinstance(message, bytes):
            return "login required"
        try:
            value = json.loads(message)
        except ValueError:
            return "login required"
        if not isinstance(value, dict) or value.get("op") != "login":
            return "login required"
        key, ts, sig = value.get("key"), value.get("ts"), value.get("sig")
        if not isinstance(key, str) or not hmac.compare_digest(key.encode(), auth.api_key.encode()):
            return "unknown key"
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not isinstance(sig, str):
            return "malformed login"
        if not -_TS_LIMIT < ts < _TS_LIMIT:  # also NaN and infinities (json accepts them), huge ints
            return "malformed login"
        if not hmac.compare_digest(sig.encode(), auth.sign(ts).encode()):
            return "bad signature"
        if abs(now - ts) > auth.max_age:
            return "stale timestamp"
        for seen, seen_ts in list(self._signatures.items()):  # forget what can no longer pass
            if now - seen_ts > auth.max_age:
                del self._signatures[seen]
        if sig in self._signatures:
            return "replayed signature"
        self._signatures[sig] = ts
        return None

    # -- TokenSubscriptions ------------------------------------------------

    def check_token(self, message: str, connection: int, now: float) -> str | None:
        """Check a subscription's token (:class:`TokenSubscriptions`); ``connection``
        identifies the connection (a token stays good on the one that used it first)."""
        auth = self.auth
        assert isinstance(auth, TokenSubscriptions)
        try:
            value = json.loads(message)
        except ValueError:
            return "missing token"
        token = value.get("token") if isinstance(value, dict) else None
        if token is None:
            return "missing token"
        match = _TOKEN.fullmatch(token) if isinstance(token, str) else None
        if match is None:
            return "malformed token"
        exp = int(match[1])
        signed = match[1] + (match[2] or "")
        if not hmac.compare_digest(match[3].encode(), hmac_sha256_hex(auth.secret, signed).encode()):
            return "bad token signature"
        if exp <= now:
            return "expired token"
        if exp - now > auth.ttl:
            return "token too far ahead"
        for seen, (seen_exp, _) in list(self._tokens.items()):  # forget expired ones
            if seen_exp <= now:
                del self._tokens[seen]
        used = self._tokens.get(token)
        if used is not None and used[1] != connection:
            return "token already used"
        self._tokens[token] = (exp, connection)
        return None

    # -- ListenKeys --------------------------------------------------------

    def issue_listen_key(self) -> str:
        """A fresh listen key, good for one upgrade."""
        key = secrets.token_urlsafe(32)
        self._keys[key] = None
        while len(self._keys) > self._limit:
            self._keys.popitem(last=False)
        self.listen_keys_issued += 1
        return key

    def use_listen_key(self, path: str) -> bool:
        """Whether ``path`` is ``/ws/KEY`` for an issued, unused key; uses it up."""
        if not path.startswith(ListenKeys.WS_PREFIX):
            return False
        key = path[len(ListenKeys.WS_PREFIX):]
        if key not in self._keys:
            return False
        del self._keys[key]
        return True
