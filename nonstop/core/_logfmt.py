"""One log line per lifecycle step, the same from every driver.

Theory of operation
-------------------
:func:`format_event` turns an event into ``(level, line)`` or ``None`` (for
messages and driver effects, which are not logged).  Lines start with a fixed,
grep-able keyword and carry ``key=value`` fields::

    [CONNECTING] feed=prices url=wss://feed.example/ws?token=*** attempt=1
    [CONNECTED] feed=prices connection=1 attempt=1 handshake=0.041s
    [LOGGED_IN] feed=prices connection=1 time=0.012s
    [SUBSCRIBED] feed=prices connection=1 subscription="trades" acked=true
    [DISCONNECTED] feed=prices reason=ping_timeout code=1006 connection=1 uptime=63.200s
                   failures=1 retry_in=0.310s detail="no pong or data within 10.0s of a ping"
    [GAP] feed=prices reason=ping_timeout seconds=0.412s connection=2
    [RECONNECTING] feed=prices url=wss://feed.example/ws?token=*** attempt=2 total=2
    [ALERT] feed=prices kind=down active=true detail="no connection for 60.0s"
    [STOPPED] feed=prices reason=stopped detail="stop requested"

Secrets never reach a line: URLs are redacted when the endpoint is parsed,
header values are never logged, and :func:`redact_text` scrubs
``token=...``-style pairs and ``Bearer ...`` credentials from free-text
details (which may come from exception messages).
"""

from __future__ import annotations

import re

from ._events import (
    Alert,
    CloseTransport,
    Connected,
    Connecting,
    Disconnected,
    Event,
    FetchUrl,
    Gap,
    LoggedIn,
    Message,
    Messages,
    OpenTransport,
    Pong,
    Rotating,
    Stopped,
    Subscribed,
)
from ._guard import ERROR, INFO, WARNING, Reason
from ._url import REDACTED, SECRET_WORDS

__all__ = ["format_event", "event_level", "redact_text", "KEYWORDS"]

KEYWORDS = (
    "[CONNECTING]",
    "[CONNECTED]",
    "[LOGGED_IN]",
    "[SUBSCRIBED]",
    "[DISCONNECTED]",
    "[GAP]",
    "[ROTATING]",
    "[RECONNECTING]",
    "[ALERT]",
    "[STOPPED]",
)

_SECRET_PAIR = re.compile(
    r"(?i)(\b[\w.-]*(?:" + "|".join(SECRET_WORDS) + r")[\w.-]*[\"']?\s*[=:]\s*[\"']?)"
    r"([^\s&,;\"']+)"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{4,}")
_USERINFO = re.compile(r"(?i)(\bwss?://)[^/\s@]+@")
_PLAIN = re.compile(r"^[A-Za-z0-9._:/@+*?=&%-]+$")


def redact_text(text: str) -> str:
    """Scrub credentials from free text (exception messages, close reasons).

    Each pattern runs only if the text holds what it needs (an ``@``, a
    scheme word, a secret word): most texts are plain errors, and this is
    on the way from a broken connection to the next attempt."""
    if "@" in text:
        text = _USERINFO.sub(r"\1" + REDACTED + "@", text)
    lower = text.lower()
    if "bearer" in lower or "basic" in lower:
        text = _BEARER.sub(lambda m: m.group(1) + " " + REDACTED, text)
    if any(word in lower for word in SECRET_WORDS):
        text = _SECRET_PAIR.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.3f}s"
    text = str(value)
    if text and _PLAIN.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _line(keyword: str, feed: str | None, **fields: object) -> str:
    parts = [keyword]
    if feed is not None:
        parts.append(f"feed={_value(feed)}")
    parts.extend(f"{k}={_value(v)}" for k, v in fields.items() if v is not None)
    return " ".join(parts)


_INFO_KINDS = (Connecting, Connected, LoggedIn, Subscribed, Rotating)


def event_level(event: Event | Message) -> int | None:
    """The level :func:`format_event` gives *event*, without making its
    line (``None``: not logged): a driver asks its logger first, and makes
    the line only if it will be written."""
    if isinstance(event, _INFO_KINDS):
        return INFO
    if isinstance(event, (Disconnected, Alert)):
        return event.level
    if isinstance(event, Gap):
        return WARNING
    if isinstance(event, Stopped):
        return INFO if event.reason is Reason.STOPPED else ERROR
    return None


def format_event(event: Event | Message, feed: str | None = None) -> tuple[int, str] | None:
    """``(level, line)`` for a lifecycle event; ``None`` for the rest.

    *level* is a :mod:`logging` level number.
    """
    if isinstance(event, (Messages, Message, Pong, FetchUrl, OpenTransport, CloseTransport)):
        return None
    if isinstance(event, Connecting):
        if event.total_attempts == 1:
            return INFO, _line("[CONNECTING]", feed, url=event.url, attempt=event.attempt)
        return INFO, _line("[RECONNECTING]", feed, url=event.url, attempt=event.attempt,
                           total=event.total_attempts)
    if isinstance(event, Connected):
        return INFO, _line("[CONNECTED]", feed, connection=event.connection,
                           attempt=event.attempt, handshake=event.handshake_time,
                           downtime=event.downtime, subprotocol=event.subprotocol, proxy=event.proxy)
    if isinstance(event, LoggedIn):
        return INFO, _line("[LOGGED_IN]", feed, connection=event.connection,
                           time=event.login_time)
    if isinstance(event, Subscribed):
        return INFO, _line("[SUBSCRIBED]", feed, connection=event.connection,
                           subscription=redact_text(event.subscription.label),
                           acked=event.acked)
    if isinstance(event, Disconnected):
        return event.level, _line(
            "[DISCONNECTED]", feed, reason=event.reason.value, code=event.code,
            status=event.status, connection=event.connection, uptime=event.uptime,
            failures=event.failures, retry_in=event.retry_in,
            detail=redact_text(event.detail),
        )
    if isinstance(event, Gap):
        return WARNING, _line("[GAP]", feed, reason=event.reason, seconds=event.seconds,
                              connection=event.connection, first_missing=event.first_missing,
                              last_missing=event.last_missing, missing=event.missing,
                              legs_down=",".join(map(str, event.legs_down)) or None)
    if isinstance(event, Rotating):
        return INFO, _line("[ROTATING]", feed, connection=event.connection, age=event.age,
                           lifetime=event.lifetime)
    if isinstance(event, Alert):
        return event.level, _line("[ALERT]", feed, kind=event.kind.value, active=event.active,
                                  detail=redact_text(event.detail))
    assert isinstance(event, Stopped)
    level = INFO if event.reason is Reason.STOPPED else ERROR
    return level, _line("[STOPPED]", feed, reason=event.reason.value,
                       detail=redact_text(event.detail))
