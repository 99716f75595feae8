"""Argument checks for the feed server's constructor and fault parameters.

Theory of operation
-------------------
:class:`~nonstop.testing.FeedServer` and :meth:`~nonstop.testing.FeedServer.inject`
take plain keyword arguments from test code.  A typo or a wrong type there
should fail at the call, with a message naming the argument, rather than
surface later as a confusing failure inside a connection task.  These
functions check one value each and return it normalised (seconds as
``float``, headers as a tuple of ``(name, value)`` pairs); they raise
:class:`TypeError` for the wrong kind of value and :class:`ValueError` for a
value out of range.  Header checks reject CR, LF and colons in names, so a
test cannot smuggle extra lines into an HTTP response by accident.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

__all__ = ["check_header", "check_int", "headers_param", "int_param", "opt_seconds", "seconds"]


def check_header(name: str, value: str) -> tuple[str, str]:
    """Return ``(name, value)`` if it can be written as one HTTP header line."""
    if not isinstance(name, str) or not isinstance(value, str):
        raise TypeError(f"header names and values must be str, got {name!r}: {value!r}")
    if not name or any(c in name for c in ":\r\n ") or any(c in value for c in "\r\n"):
        raise ValueError(f"invalid header {name!r}: {value!r}")
    return name, value


def headers_param(value: object) -> tuple[tuple[str, str], ...]:
    """Headers given as a mapping or as ``(name, value)`` pairs (None: none)."""
    if value is None:
        return ()
    items: list[object]
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        items = list(value)
    else:
        raise TypeError(f"headers must be a mapping or (name, value) pairs, got {value!r}")
    pairs = []
    for item in items:
        if not isinstance(item, tuple) or len(item) != 2:
            raise TypeError(f"headers must be (name, value) pairs, got {item!r}")
        pairs.append(check_header(item[0], item[1]))
    return tuple(pairs)


def check_int(name: str, value: object, low: int, high: int) -> int:
    """An int (not a bool) between ``low`` and ``high`` inclusive."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value!r}")
    return value


def int_param(params: Mapping[str, object], name: str, default: int, low: int, high: int) -> int:
    """:func:`check_int` on ``params[name]``, or on ``default`` if absent."""
    return check_int(name, params.get(name, default), low, high)


def seconds(name: str, value: object) -> float:
    """A finite, non-negative number of seconds, as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def opt_seconds(name: str, value: object) -> float | None:
    """:func:`seconds`, or None for None."""
    return None if value is None else seconds(name, value)
