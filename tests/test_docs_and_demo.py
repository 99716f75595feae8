"""The generated docs are fresh, and the README's demo runs and tells the story."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from nonstop._coredemo import run
from nonstop.core import KEYWORDS

ROOT = Path(__file__).resolve().parent.parent


def test_state_diagram_in_docs_is_generated_from_the_table() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "make_state_diagram.py"), "--check"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_core_demo_rides_through_every_fault_and_stops() -> None:
    out = io.StringIO()
    assert run(out, seed=1) == 0
    text = out.getvalue()
    for keyword in KEYWORDS:
        assert keyword in text, keyword
    for reason in ("server_closed", "ping_timeout", "rejected", "protocol_error"):
        assert f"reason={reason}" in text
    assert "SECRET-KEY-123" not in text
    assert "[STOPPED] feed=demo reason=stopped" in text


def test_core_demo_is_deterministic_given_the_seed() -> None:
    first, second = io.StringIO(), io.StringIO()
    run(first, seed=7)
    run(second, seed=7)
    assert first.getvalue() == second.getvalue()
