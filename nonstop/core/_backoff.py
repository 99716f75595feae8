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

import math
import random

from ._config import Backoff

__all__ = ["retry_delay", "first_retry_delay", "ceiling"]

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
