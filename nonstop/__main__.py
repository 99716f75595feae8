"""``python -m nonstop``: the same as the ``nonstop`` command (see :mod:`nonstop.cli`)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
