"""Real proxy servers for the driver tests, started on 127.0.0.1 and free ports.

* :class:`Tinyproxy` -- Debian's ``tinyproxy``: HTTP ``CONNECT``, with Basic
  authentication or without;
* :class:`Microsocks` -- Debian's ``microsocks``: SOCKS5, with a user name
  and password or without;
* :class:`Pproxy` -- ``pproxy`` from PyPI: HTTP ``CONNECT`` over TLS (an
  ``https://`` proxy), with a certificate from the tests' CA.

Each runs as a child process of the test, is stopped by its PID, and can be
stopped and started again on the same port (a proxy that dies and comes
back).  A missing program skips the test, unless ``NONSTOP_REQUIRE_PROXIES``
is set (``scripts/test`` sets it after installing them): then it fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import pytest

__all__ = ["Microsocks", "Pproxy", "ProxyServer", "Tinyproxy", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (just now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        message = f"{program} is not installed (apt-get install {program}; scripts/test does)"
        if os.environ.get("NONSTOP_REQUIRE_PROXIES"):
            pytest.fail(message)
        pytest.skip(message)
    return path


class ProxyServer:
    """A proxy server process: :meth:`start`, :meth:`stop`, and its URL."""

    scheme = "http"

    def __init__(self, tmp: Path, *, user: str | None = None, password: str | None = None) -> None:
        self.tmp = tmp
        self.user = user
        self.password = password
        self.port = free_port()
        self.log = tmp / f"{type(self).__name__.lower()}-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, *, user: str | None = None, password: str | None = None, host: str = "127.0.0.1",
            scheme: str | None = None) -> str:
        """The proxy's URL, with this server's credentials unless others are given."""
        user = self.user if user is None else user
        password = self.password if password is None else password
        who = "" if user is None else f"{user}:{password}@" if password is not None else f"{user}@"
        return f"{scheme or self.scheme}://{who}{host}:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> ProxyServer:
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.command()[0]} did not start: "
                                       f"{self.log.read_text(errors='replace')[-2000:]}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()  # (the PID this object started)
        process.wait(10)

    def logged(self) -> str:
        return self.log.read_text(errors="replace")

    def __enter__(self) -> ProxyServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class Tinyproxy(ProxyServer):
    """tinyproxy: HTTP ``CONNECT`` to any port, Basic auth when *user* is given."""

    def command(self) -> list[str]:
        program = _need("tinyproxy")
        conf = self.tmp / f"tinyproxy-{self.port}.conf"
        lines = [f"Port {self.port}", "Listen 127.0.0.1", "Timeout 600", "MaxClients 64",
                 "Allow 127.0.0.1", "LogLevel Connect"]
        if self.user is not None:
            lines.append(f"BasicAuth {self.user} {self.password}")
        conf.write_text("\n".join(lines) + "\n")
        return [program, "-d", "-c", str(conf)]

    def tunnels(self) -> int:
        """Tunnels opened so far (tinyproxy logs each)."""
        return self.logged().count("Established connection to host")


class Microsocks(ProxyServer):
    """microsocks: SOCKS5, a user name and password when *user* is given."""

    scheme = "socks5"

    def command(self) -> list[str]:
        program = _need("microsocks")
        auth = [] if self.user is None else ["-u", self.user, "-P", str(self.password)]
        return [program, "-i", "127.0.0.1", "-p", str(self.port), *auth]


#: Runs pproxy on plain asyncio: it fails on uvloop's loop policy.
_PPROXY = ("import sys, runpy; sys.modules['uvloop'] = None; sys.argv[0] = 'pproxy'; "
           "runpy.run_module('pproxy', run_name='__main__')")


class Pproxy(ProxyServer):
    """pproxy: HTTP ``CONNECT`` over TLS with the certificate in *pem*
    (key and chain), with Basic auth when *user* is given."""

    scheme = "https"

    def __init__(self, tmp: Path, pem: Path, *, user: str | None = None,
                 password: str | None = None) -> None:
        super().__init__(tmp, user=user, password=password)
        self.pem = pem

    def command(self) -> list[str]:
        try:
            import pproxy  # noqa: F401
        except ImportError:
            _need("pproxy")
        auth = "" if self.user is None else f"#{self.user}:{self.password}"
        return [sys.executable, "-c", _PPROXY, "-l", f"http+ssl://127.0.0.1:{self.port}/{auth}",
                "--ssl", str(self.pem)]
