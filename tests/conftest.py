"""Fixtures for every test."""

from __future__ import annotations

import pytest

#: The environment variables that name a proxy (read by ``connect`` when
#: ``proxy`` is left out), in both cases.
PROXY_VARIABLES = [name for base in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
                   for name in (base, base.upper())]


@pytest.fixture(autouse=True)
def _no_proxy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests connect to 127.0.0.1 directly, whatever proxy the machine
    running them names; a test that wants one sets it."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
