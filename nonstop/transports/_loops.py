"""What the fast asyncio path leans on in an event loop, named in one place.

Theory of operation
-------------------
The asyncio speed-ups (:mod:`._streams`, :mod:`._anyio_fast`) use a few
things an event loop does that no asyncio API promises.  Each is asked for
here, through one function that checks it is really there on the loop or
transport at hand and otherwise answers "no", logging at debug level why;
the caller then does the plain thing.  A CPython or uvloop release that
changes one of them makes the feed a little slower, never broken.

* :func:`read_size_knob`: CPython's plain TCP transport reads ``max_size``
  bytes per ``recv`` (an attribute, 256 KiB).  Setting it lets the driver's
  adaptive read size (:class:`~._common.ReadSize`) apply.  uvloop reads into
  a buffer of its own: nothing to tune, and nothing lost.
* :func:`reads_behind`: a consumer that finds the queue empty during a burst
  reads the socket itself, between the loop's own reads.  That is safe only
  where the transport's reads keep no state but the socket's, which is so
  for CPython's selector transport and uvloop's TCP transport (libuv reads
  until ``EAGAIN``).  Any other transport (the proactor loop, an unknown
  loop) is left to read alone.
* :func:`reads_into_buffer`: uvloop reads plain TCP in 256 KiB pieces into
  a buffer of its own, then copies each into a new ``bytes``; given an
  :class:`asyncio.BufferedProtocol` it reads into a buffer of ours instead,
  as much as we ask, so the adaptive read size applies there too (large
  reads in a burst: fewer reads, and fewer trips through the core, per
  message).  CPython's loop stays with :class:`asyncio.Protocol` and its
  ``max_size`` (above): its buffered reads would copy every byte twice.
* :func:`loop_clock`: the loop's clock as the function to call.  Where the
  loop's ``time()`` is asyncio's own, that is ``time.monotonic`` itself (one
  Python call less per reading); any other loop's ``time()`` is called.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

__all__ = ["read_size_knob", "reads_behind", "reads_into_buffer", "loop_clock", "READS_BEHIND",
           "READS_INTO_BUFFER"]

LOGGER = logging.getLogger("nonstop")

#: Transports (module, class name) whose reads keep no state but the socket's.
READS_BEHIND = frozenset({
    ("asyncio.selector_events", "_SelectorSocketTransport"),
    ("uvloop.loop", "TCPTransport"),
})

#: Event loops (module, class name) whose plain TCP reads go faster through a
#: buffer of ours.
READS_INTO_BUFFER = frozenset({("uvloop", "Loop")})


def _name(obj: object) -> tuple[str, str]:
    kind = type(obj)
    return kind.__module__, kind.__qualname__


def read_size_knob(transport: object) -> Callable[[int], None] | None:
    """A function that sets how much *transport* asks ``recv`` for, or
    ``None`` where it has no such setting (TLS, uvloop, any other loop)."""
    if transport is None:
        return None
    size = getattr(transport, "max_size", None)
    if _name(transport) != ("asyncio.selector_events", "_SelectorSocketTransport") \
            or type(size) is not int:
        LOGGER.debug("reads sized by the event loop: %s.%s has no max_size to set", *_name(transport))
        return None

    def set_size(n: int) -> None:
        transport.max_size = n  # type: ignore[attr-defined]

    return set_size


def reads_behind(transport: object) -> bool:
    """May a consumer read *transport*'s socket between its own reads?"""
    if _name(transport) in READS_BEHIND:
        return True
    LOGGER.debug("no reads beside the event loop's: %s.%s is not known to allow them",
                 *_name(transport))
    return False


def reads_into_buffer(loop: asyncio.AbstractEventLoop) -> bool:
    """Should *loop* read a plain TCP connection into a buffer of ours?"""
    if _name(loop) in READS_INTO_BUFFER:
        return True
    LOGGER.debug("reads handed over by the event loop: %s.%s is not known to read faster "
                 "into a buffer", *_name(loop))
    return False


def loop_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """*loop*'s clock, the function to call for it."""
    if type(loop).time is asyncio.BaseEventLoop.time:
        return time.monotonic
    return loop.time
