"""Retry-After: the wait a server (or a proxy) asks for, read from its headers.

Theory of operation
-------------------
``Retry-After`` (RFC 9110 section 10.2.3) is a number of seconds or an
HTTP-date.  The core has no wall clock, so a date is measured against the
response's own ``Date`` header; an answer without one gives no wait.
"""

from __future__ import annotations

import datetime
import math
import re

__all__ = ["parse_retry_after", "parse_http_date"]


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
