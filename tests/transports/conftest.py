"""Fixtures shared by the driver tests: the back ends, one test CA, and the
option sets the tests connect with.

A test that takes ``backend`` runs once per entry of
:data:`tests.transports.backends.BACKENDS` (asyncio, trio, blocking), on
the event loop that entry names; any other async test runs on asyncio and
on trio through ``anyio_backend``.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import pytest
import trustme

from nonstop import Backoff

from .backends import ASYNC_BACKENDS, BACKENDS, Backend

#: Quick reconnects: short backoff, a connection counts as stable soon.
FAST: dict[str, Any] = dict(backoff=Backoff(initial=0.05, cap=0.2), stable_after=0.2)
#: FAST, and no keepalive: nothing on the wire but what the test sends.
QUIET: dict[str, Any] = dict(FAST, ping_interval=None, silence_timeout=None)
#: QUIET on the speed-up loops, for the tests of a speed-up: on whatever
#: NONSTOP_FAST says.
QUIET_FAST: dict[str, Any] = dict(QUIET, fast=True)
#: Give up after the first retry, which comes quickly.
RETRY: dict[str, Any] = dict(backoff=Backoff(initial=0.05, cap=0.1), max_attempts=2)


async def until_seen(events: list[Any], match: Callable[[Any], bool], timeout: float = 10) -> Any:
    """The first event in *events* (an ``on_event`` list) that *match*
    accepts, waiting for it up to *timeout* seconds.  Unlike ``wait_for``
    (the next such event), an event that came before the call counts: the
    blocking feed's I/O thread may be faster than the test."""
    with anyio.fail_after(timeout):
        while True:
            for event in events:
                if match(event):
                    return event
            await anyio.sleep(0.01)


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test taking ``backend`` gets it, and the matching ``anyio_backend``,
    from one parametrization (a mark, so the two-backend ``anyio_backend``
    fixture below steps aside).  A test that parametrizes ``backend``
    itself keeps its own."""
    own = any("backend" in _argnames(mark.args[0])
              for mark in metafunc.definition.iter_markers("parametrize"))
    if "backend" in metafunc.fixturenames and not own:
        metafunc.definition.add_marker(pytest.mark.parametrize(
            ("anyio_backend", "backend"),
            [pytest.param(b.runner, b, id=name) for name, b in BACKENDS.items()],
        ))


def _argnames(names: str | Sequence[str]) -> list[str]:
    return [n.strip() for n in (names.split(",") if isinstance(names, str) else names)]


@pytest.fixture(params=[pytest.param(b.runner, id=name) for name, b in ASYNC_BACKENDS.items()])
def anyio_backend(request: pytest.FixtureRequest) -> str | tuple[str, dict[str, Any]]:
    """Every async test runs on asyncio, asyncio with uvloop, and trio
    (anyio's pytest plugin); :func:`backends.backend_for` names which."""
    runner: str | tuple[str, dict[str, Any]] = request.param
    return runner


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def server_ssl(ca: trustme.CA) -> ssl.SSLContext:
    """A server context with a certificate for localhost and 127.0.0.1."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    return context


@pytest.fixture(scope="session")
def client_ssl(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts the test CA (and verifies host names)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


__all__ = ["FAST", "QUIET", "QUIET_FAST", "RETRY", "Backend"]
