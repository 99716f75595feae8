"""What the commands show a person on stderr: lifecycle lines, a live status, usage errors.

Theory of operation
-------------------
A :class:`Display` owns stderr for one run of ``nonstop`` (or ``nonstop
demo``).  Two kinds of output go through it:

* **lines** -- the lifecycle lines of the ``nonstop`` logger (through
  :meth:`Display.handler`, a :class:`logging.Handler`) and the demo's
  narration.  Each is one line with a time prefix; they scroll.
* **the status** -- one line that is redrawn in place (state, uptime,
  messages per second, reconnects, last reason).

In *live* mode -- stderr is a real terminal and ``rich`` is installed (the
``nonstop[cli]`` extra) -- a :class:`rich.live.Live` keeps the status line at
the bottom and prints every line above it.  Otherwise (*plain* mode: stderr
is a file or a pipe, ``TERM=dumb``, or no ``rich``) lines are written as
they are, and the status is not drawn at all: logs stay grep-able and free
of control codes.

:func:`status_text` writes that status line from a
:class:`~nonstop.Metrics` snapshot, with the message rate of a
:class:`Rate`; both commands draw it.  :class:`UsageError` is what either
command raises for a bad command line; :func:`nonstop.cli.main` reports it
on one line, exit status 2.

stdout belongs to the caller (messages, the demo's table), with one
exception: when stdout is the *same terminal* as stderr, a live status line
would be torn by every message written under it, so :meth:`Display.out`
routes the caller's stdout text through the live console instead (it is the
same device, so nothing is lost).  :attr:`Display.owns_stdout` says when.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO

from .core import Metrics, State

__all__ = ["Display", "Rate", "UsageError", "duration_text", "rich_available", "status_text"]


def rich_available() -> bool:
    """Whether the optional ``rich`` package (``nonstop[cli]``) is importable."""
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _same_terminal(a: TextIO, b: TextIO) -> bool:
    try:
        return a.isatty() and b.isatty() and os.path.samestat(os.fstat(a.fileno()), os.fstat(b.fileno()))
    except (OSError, ValueError, AttributeError):
        return False


_STYLES = {
    "[CONNECTED]": "green",
    "[SUBSCRIBED]": "green",
    "[CONNECTING]": "cyan",
    "[RECONNECTING]": "cyan",
    "[DISCONNECTED]": "yellow",
    "[GAP]": "yellow",
    "[ALERT]": "bold red",
    "[STOPPED]": "magenta",
}


class _Handler(logging.Handler):
    def __init__(self, display: Display) -> None:
        super().__init__(logging.INFO)
        self._display = display

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self._display.line(text, record.levelno)
        except Exception:  # pragma: no cover - logging's own convention
            self.handleError(record)


class Display:
    """Lines and a live status on *stream* (stderr); see the module docstring.

    ``live=None`` decides by itself (a terminal and ``rich``); ``False``
    forces plain lines.  *prefix* returns the time stamp put before every
    line.  Use as a context manager: leaving it removes the status line.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        live: bool | None = None,
        prefix: Callable[[], str] = lambda: "",
        stdout: TextIO | None = None,
    ) -> None:
        self.stream = sys.stderr if stream is None else stream
        self._stdout = sys.stdout if stdout is None else stdout
        self._prefix = prefix
        self._lock = threading.Lock()
        self._live: Any = None
        self._console: Any = None
        self._status = ""
        want = live if live is not None else self.stream.isatty()
        if want and rich_available():
            from rich.console import Console

            console = Console(file=self.stream, highlight=False)
            if console.is_terminal and not console.is_dumb_terminal:
                self._console = console

    # ------------------------------------------------------------------
    @property
    def live(self) -> bool:
        """True when the status line is drawn (a terminal with ``rich``)."""
        return self._console is not None

    @property
    def owns_stdout(self) -> bool:
        """True when stdout text must go through :meth:`out` (same terminal)."""
        return self._console is not None and _same_terminal(self._stdout, self.stream)

    def handler(self) -> logging.Handler:
        """A logging handler writing each record as one line here."""
        return _Handler(self)

    def __enter__(self) -> Display:
        if self._console is not None:
            from rich.live import Live
            from rich.text import Text

            self._live = Live(
                Text(""),
                console=self._console,
                auto_refresh=False,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Remove the status line (idempotent)."""
        with self._lock:
            live, self._live = self._live, None
            if live is not None:
                live.stop()

    # ------------------------------------------------------------------
    def line(self, text: str, level: int = logging.INFO) -> None:
        """Write one line (a lifecycle line, a narration line) above the status."""
        stamp = self._prefix()
        with self._lock:
            if self._console is None:
                self.stream.write(f"{stamp}{text}\n")
                self.stream.flush()
                return
            from rich.text import Text

            rendered = Text(stamp, style="dim")
            body = Text(text)
            keyword = text.split(" ", 1)[0]
            style = _STYLES.get(keyword)
            if level >= logging.ERROR and keyword != "[ALERT]":
                style = "red"
            if style is not None:
                body.stylize(style, 0, len(keyword))
            rendered.append_text(body)
            self._console.print(rendered, soft_wrap=True)

    def status(self, text: str) -> None:
        """Replace the status line (nothing happens in plain mode)."""
        with self._lock:
            self._status = text
            if self._live is not None:
                from rich.text import Text

                self._live.update(Text(text, style="bold", no_wrap=True, overflow="ellipsis"), refresh=True)

    def out(self, text: str) -> None:
        """Write the caller's stdout *text* above the status (see :attr:`owns_stdout`)."""
        with self._lock:
            if self._console is None:  # pragma: no cover - callers check owns_stdout
                self._stdout.write(text)
                return
            self._console.out(text, end="", highlight=False)


# ----------------------------------------------------------------------
# the status line


def duration_text(seconds: float) -> str:
    """*seconds* for a person: ``4.2s``, ``3m07s``, ``2h05m``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Rate:
    """Messages per second over the last few seconds, from metrics snapshots."""

    def __init__(self, window: float = 2.0) -> None:
        self._window = window
        self._samples: deque[tuple[float, int]] = deque()

    def update(self, now: float, count: int) -> float:
        samples = self._samples
        samples.append((now, count))
        while len(samples) > 2 and now - samples[1][0] >= self._window:
            samples.popleft()
        t0, c0 = samples[0]
        return (count - c0) / (now - t0) if now > t0 else 0.0


def status_text(m: Metrics, rate: float, label: str | None = None) -> str:
    """The one-line status: state, uptime, legs live (a redundant feed),
    messages per second, gaps, reconnects, last reason."""
    parts = []
    if label:
        parts.append(label)
    if m.state is State.OPEN:
        parts.append(f"OPEN conn #{m.connection} up {duration_text(m.uptime)}")
    else:
        parts.append(m.state.value.upper())
    if m.legs > 1:
        parts.append(f"legs {m.legs_live}/{m.legs} live")
    parts.append(f"{rate:,.0f} msg/s")
    parts.append(f"{m.messages_received:,} msgs")
    if m.gaps:
        parts.append(f"{m.gaps} gaps")
    parts.append(f"{m.reconnects} reconnects")
    parts.append(f"connected {m.connected_ratio:.1%} of {duration_text(m.running_time)}")
    parts.append(f"last: {m.last_disconnect_reason or '-'}")
    if m.alerts_active:
        parts.append("ALERT " + ",".join(m.alerts_active))
    return " · ".join(parts)


class UsageError(Exception):
    """A bad command line: reported on one line, exit status 2."""
