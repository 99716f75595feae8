"""Backoff: how long to wait before the next connection attempt.

Theory of operation
-------------------
One pure function, :func:`retry_delay`, of the number of failures in a row,
the policy, an injected :class:`random.Random` and an optional server hint.
The core calls it once per disconnect; tests call it directly.  The first
retry after a stable connection is :func:`first_retry_delay` instead (at
once by default), and the series after it starts again from ``initial``.

Server hints only ever lengthen the wait, and the cap bounds everything, hints
included: a long outage, or a server asking for an hour, never stops the feed
from trying again within ``cap`` seconds.  The hints are

* ``Retry-After`` on a 429 or 503 upgrade response (seconds, or an HTTP date
  read against the response's own ``Date`` header: the core has no wall clock);
* close code 1013 "try again later", or 429/503 without a usable
  ``Retry-After``: wait the full, un-jittered ceiling for this failure count.
"""

from __future__ import annotations

import datetime
import math
import random
import re

from ._config import Backoff

__all__ = ["retry_delay", "first_retry_delay", "ceiling", "parse_retry_after"]

def ceiling(failures: int, policy: Backoff) -> float:
    """The largest wait after *failures* failures in a row (>= 1)."""
    exponent = max(failures - 1, 0)
    initial, factor, cap = policy.initial, policy.factor, policy.cap
    if factor == 1.0 or exponent == 0:
        return min(cap, initial)
    # The exponent at which the cap is reached; past it, don't compute powers
    # (they overflow, and clamping the exponent would undershoot the cap for
    # factors close to 1).
    if exponent >= math.log(cap / initial) / math.log(factor):
        return cap
    return min(cap, initial * factor**exponent)


def retry_delay(
    failures: int, policy: Backoff, rng: random.Random, hint: float | None = None
) -> float:
    """Seconds to wait before the next attempt; always within ``[0, cap]``."""
    top = ceiling(failures, policy)
    delay = top * (1.0 - policy.jitter * rng.random())
    if hint is not None:
        delay = max(delay, hint)
    return min(policy.cap, max(0.0, delay))


def first_retry_delay(policy: Backoff, rng: random.Random) -> float:
    """Seconds to wait before the first retry after a stable connection:
    ``Backoff.first``, jittered; 0 when it is 0 (no draw from *rng*)."""
    if not policy.first:
        return 0.0
    return policy.first * (1.0 - policy.jitter * rng.random())


def parse_retry_after(headers: list[tuple[bytes, bytes]]) -> float | None:
    """Read ``Retry-After`` (RFC 9110 section 10.2.3) from response headers.

    Returns seconds, or ``None`` when absent or unusable.  An HTTP-date is
    converted with the response's own ``Date`` header as "now" (the core has
    no wall clock).
    """
    values = {name.lower(): value for name, value in headers}
    raw = values.get(b"retry-after")
    if raw is None:
        return None
    text = raw.decode("latin-1").strip()
    if text.isascii() and text.isdigit():
        try:
            return float(int(text))
        except (ValueError, OverflowError):  # absurdly long: "as long as you like"
            return math.inf
    date = values.get(b"date")
    until = parse_http_date(text)
    now = None if date is None else parse_http_date(date.decode("latin-1").strip())
    if until is None or now is None:
        return None
    return max(0.0, until - now)


_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
_HTTP_DATES = (
    # IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
    re.compile(r"^[A-Za-z]{3}, (\d{2}) ([A-Za-z]{3}) (\d{4}) (\d{2}):(\d{2}):(\d{2}) GMT$"),
    # RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
    re.compile(r"^[A-Za-z]+, (\d{2})-([A-Za-z]{3})-(\d{2}) (\d{2}):(\d{2}):(\d{2}) GMT$"),
)
# asctime: Sun Nov  6 08:49:37 1994
_ASCTIME = re.compile(r"^[A-Za-z]{3} ([A-Za-z]{3}) +(\d{1,2}) (\d{2}):(\d{2}):(\d{2}) (\d{4})$")


def parse_http_date(text: str) -> float | None:
    """Seconds since the epoch for an HTTP-date (RFC 9110 5.6.7), else ``None``.

    Written out rather than taken from :mod:`email.utils`, which imports
    :mod:`socket` -- the core imports nothing that does I/O.
    """
    for pattern in _HTTP_DATES:
        m = pattern.match(text)
        if m:
            day, month, year, hh, mm, ss = m.groups()
            break
    else:
        m = _ASCTIME.match(text)
        if not m:
            return None
        month, day, hh, mm, ss, year = m.groups()
    month_number = _MONTHS.get(month.lower())
    if month_number is None:
        return None
    year_number = int(year)
    if len(year) == 2:  # RFC 9110: a two-digit year more than 50 years ahead is in the past
        year_number += 2000 if year_number < 70 else 1900
    try:
        moment = datetime.datetime(year_number, month_number, int(day), int(hh), int(mm), int(ss),
                                   tzinfo=datetime.timezone.utc)
    except ValueError:
        return None
    return moment.timestamp()
