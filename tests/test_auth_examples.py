"""The private-feed examples (``examples/auth_*.py``, shown in ``docs/auth.md``) run and say what they show.

Each script is run as a user would run it, in a fresh interpreter, against
the embedded test server it starts itself; its output is checked for the
story it tells (logins, tokens and keys made per connection, a refused
login ending in ``CredentialsRefused``) and for what it must never show (a
signature, a token, a listen key).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: An HMAC-SHA256 in hex: a login signature or a token's signature.
HEX_SIGNATURE = re.compile(r"\b[0-9a-f]{64}\b")


def run_example(name: str) -> tuple[str, str]:
    """Run ``examples/<name>``; return its stdout and stderr (the log lines)."""
    result = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True,
                            text=True, timeout=30, cwd=EXAMPLES.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, result.stderr


def count(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    assert match is not None, f"{pattern!r} not in:\n{text}"
    return int(match[1])


def test_hmac_login_example_logs_in_on_every_connection_and_stops_on_a_wrong_secret() -> None:
    out, logs = run_example("auth_hmac_login.py")
    assert count(r"\[LOGGED_IN\] count: (\d+)", out) >= 3
    assert "server's verdicts: ['accepted', 'accepted', 'accepted']" in out
    assert "CredentialsRefused: " in out
    assert "refused the login 3 times in a row" in out
    assert "bad signature" in out
    for n in (1, 2, 3):
        assert f"[LOGGED_IN] feed=orders connection={n} " in logs
        assert f"[SUBSCRIBED] feed=orders connection={n} subscription=orders acked=true" in logs
    assert logs.count("reason=login_rejected code=1008") == 3
    assert "[ALERT] feed=wrong-secret kind=auth active=true" in logs
    assert "[STOPPED] feed=wrong-secret reason=login_rejected" in logs
    assert HEX_SIGNATURE.search(out + logs) is None  # no signature printed or logged
    assert "demo-secret-never-logged" not in out + logs


def test_token_subscription_example_mints_a_token_per_connection() -> None:
    out, logs = run_example("auth_token_subscription.py")
    assert count(r"tokens minted: (\d+)", out) >= 3
    assert "all different: True" in out
    assert "server's verdicts: ['accepted', 'accepted', 'accepted']" in out
    for n in (1, 2, 3):
        assert f"[SUBSCRIBED] feed=account connection={n} subscription=fills acked=true" in logs
    assert '"token"' not in out + logs
    assert HEX_SIGNATURE.search(out + logs) is None  # no token signature printed or logged


def test_listen_key_example_fetches_a_key_per_connection_and_never_logs_it() -> None:
    out, logs = run_example("auth_listen_key.py")
    assert count(r"listen keys issued: (\d+)", out) >= 3
    assert count(r"fetched: (\d+)", out) >= 3
    assert "all different: True" in out
    assert "showing a key: 0" in out
    assert count(r"log lines: (\d+)", out) >= 10
    assert '[CONNECTED] feed="RestClient.listen_url()" connection=3 ' in logs
    assert re.search(r"/ws/[A-Za-z0-9_-]{20,}", out + logs) is None  # no key in a URL
