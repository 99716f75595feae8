"""Checks shared by the option classes (``Config`` and its parts, ``AlertPolicy``).

Theory of operation
-------------------
Options are validated once, when they are built; a bad value raises
:class:`~nonstop.core.ConfigError` naming the option, the value and the valid
range.  This module imports only :mod:`._errors`, so any module defining
options can use it without importing another that defines options.
"""

from __future__ import annotations

import math

from ._errors import ConfigError

__all__ = ["check_positive"]


def check_positive(name: str, value: object, *, integer: bool = False, zero: bool = False,
                   optional: bool = False) -> None:
    """Raise :class:`ConfigError` unless *value* is a finite positive number
    (or zero, with ``zero=True``); the error of an *optional* one (where
    ``None`` turns it off) says so."""
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an integer" if integer else "a number of seconds"
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    assert isinstance(value, (int, float))
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        hint = "; use None to disable it" if optional else ""
        raise ConfigError(f"{name} must be finite and {bound}, got {value!r}{hint}")
