"""What the feed server writes and recognises, above the WebSocket framing.

Theory of operation
-------------------
``wsproto`` builds every WebSocket frame and the 101 response; this module
holds the few things the server puts on the wire itself, so that their exact
bytes are defined in one place:

* :func:`http_response`: a complete ``HTTP/1.1`` response for a
  rejected (or malformed) upgrade request or a plain HTTP request (the
  listen-key route of :class:`~._auth.ListenKeys`), always
  ``Connection: close`` with a ``Content-Length``, so a client can read the
  whole body and the ``Retry-After`` header before the server hangs up;
* the JSON texts of the feed: numbered messages (:func:`feed_message`),
  subscription acknowledgements (:func:`ack_message`) and the message whose
  frame the HALF_FRAME fault cuts in two (:func:`half_frame_message`), all
  with compact separators so their sizes are predictable;
* :func:`is_subscription`: which client texts count as subscriptions (JSON
  with ``"op": "subscribe"``, or non-JSON text starting with ``subscribe``).
"""

from __future__ import annotations

import http
import json
from collections.abc import Iterable
from typing import Final

__all__ = ["ack_message", "feed_message", "half_frame_message", "http_response", "is_subscription"]

_JSON_SEPARATORS: Final = (",", ":")


def http_response(
    status: int,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
) -> bytes:
    """A complete HTTP/1.1 response with ``status``, extra ``headers`` and a ``body``
    of ``content_type`` (plain text by default)."""
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    lines = [f"HTTP/1.1 {status} {phrase}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines += [
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def is_subscription(text: str) -> bool:
    """Whether a client's text message asks for a subscription."""
    try:
        value = json.loads(text)
    except ValueError:
        return text.startswith("subscribe")
    return isinstance(value, dict) and value.get("op") == "subscribe"


def feed_message(seq: int, conn: int | None, payload: str) -> str:
    """The numbered message ``{"seq": N, "conn": C, "data": payload}``."""
    return json.dumps({"seq": seq, "conn": conn, "data": payload}, separators=_JSON_SEPARATORS)


def ack_message(request: str) -> str:
    """The acknowledgement of the subscription ``request``."""
    return json.dumps({"event": "subscribed", "request": request}, separators=_JSON_SEPARATORS)


def half_frame_message() -> str:
    """The text whose frame the HALF_FRAME fault sends only the first half of."""
    return json.dumps({"event": "half_frame", "data": "x" * 200}, separators=_JSON_SEPARATORS)
