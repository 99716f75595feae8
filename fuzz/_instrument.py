"""Imported first by every harness: under atheris, instrument the code under test.

Theory of operation
-------------------
atheris measures coverage only in modules imported inside
``atheris.instrument_imports()``.  Each harness imports this module before
anything else, so ``nonstop`` (the core), ``wsproto`` and ``h11`` are loaded
instrumented.  When they were already imported (pytest replaying the corpus
in ``tests/core/test_fuzz_regressions.py``) or atheris is not installed,
nothing happens: the harnesses then run as plain Python.
"""

from __future__ import annotations

import sys

if "nonstop.core" not in sys.modules:
    try:
        import atheris
    except ImportError:  # replaying without the fuzz extra
        pass
    else:
        with atheris.instrument_imports(include=["nonstop", "wsproto", "h11"]):
            import h11  # noqa: F401
            import wsproto  # noqa: F401

            import nonstop.core  # noqa: F401
