"""The options of ``connect`` have one definition: both entry points, their
types for mypy, their help text and the option table in docs/usage.md follow it."""

from __future__ import annotations

import inspect
import logging
import random
import re
import ssl
import subprocess
import sys
import typing
from collections.abc import Callable
from dataclasses import FrozenInstanceError
from pathlib import Path
from typing import Any

import pytest

import nonstop
import nonstop.sync
from nonstop import _options
from nonstop._options import DriverOptions, Options, options, prepare
from nonstop.core import FeedCore
from nonstop.transports import _common

ROOT = Path(__file__).resolve().parent.parent
USAGE = ROOT / "docs" / "usage.md"
URL = "ws://127.0.0.1:9/"
CONNECTS: list[Callable[..., object]] = [nonstop.connect, nonstop.sync.connect]
SIGNATURE = inspect.signature(options)
OPTIONS = [name for name in SIGNATURE.parameters if name != "url"]


# ----------------------------------------------------------------------
# the two entry points have the signature of options()


@pytest.mark.parametrize("connect", CONNECTS, ids=["async", "sync"])
def test_connect_has_every_option_with_its_default(connect: Callable[..., object]) -> None:
    signature = inspect.signature(connect)
    assert signature.parameters == SIGNATURE.parameters
    assert next(iter(signature.parameters)) == "url"
    for name in OPTIONS:
        assert signature.parameters[name].kind is inspect.Parameter.KEYWORD_ONLY, name


def test_connect_returns_its_feed_type() -> None:
    assert inspect.signature(nonstop.connect).return_annotation == "AsyncFeed"
    assert inspect.signature(nonstop.sync.connect).return_annotation == "SyncFeed"
    assert typing.get_type_hints(nonstop.connect)["return"] is nonstop.AsyncFeed
    assert typing.get_type_hints(nonstop.sync.connect)["return"] is nonstop.SyncFeed


@pytest.mark.parametrize("connect", CONNECTS, ids=["async", "sync"])
def test_connect_type_hints_are_those_of_options(connect: Callable[..., object]) -> None:
    hints = typing.get_type_hints(connect)
    expected = typing.get_type_hints(options)
    del hints["return"], expected["return"]
    assert hints == expected


@pytest.mark.parametrize("connect", CONNECTS, ids=["async", "sync"])
def test_help_names_the_function_and_documents_every_option(connect: Callable[..., object]) -> None:
    assert connect.__name__ == "connect"
    assert connect.__module__ in ("nonstop._api", "nonstop.sync")
    doc = inspect.getdoc(connect)
    assert doc is not None and doc.startswith("Open a feed that keeps receiving")
    section = doc.partition("\nOptions\n-------\n")[2]
    documented = [line for line in section.splitlines() if line and not line.startswith(" ")]
    assert documented == list(SIGNATURE.parameters)
    entries = re.split(r"\n(?=\S)", section)
    assert all(len(entry.splitlines()) >= 2 for entry in entries), "an option without a description"


# ----------------------------------------------------------------------
# the option table in docs/usage.md


def _option_table() -> list[tuple[str, str]]:
    """(option, default cell) of each row of the table under ``## Options``."""
    text = USAGE.read_text(encoding="utf-8")
    section = text.split("\n## Options\n", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| option | default |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        name = re.fullmatch(r"`(\w+)`", cells[0])
        assert name is not None, f"one option per row, in backticks: {line!r}"
        rows.append((name.group(1), cells[1]))
    return rows


def _documented_default(cell: str) -> object:
    """The cell's first backticked span, evaluated as a Python expression."""
    code = re.match(r"`([^`]+)`", cell)
    assert code is not None, f"the default column must start with the default in backticks: {cell!r}"
    return eval(code.group(1), {"__builtins__": {}, "FROM_ENVIRONMENT": nonstop.FROM_ENVIRONMENT})


def test_usage_table_lists_every_option_in_order() -> None:
    assert [name for name, _ in _option_table()] == OPTIONS


def test_usage_table_defaults_are_the_code_defaults() -> None:
    for name, cell in _option_table():
        documented = _documented_default(cell)
        actual = SIGNATURE.parameters[name].default
        assert (type(documented), documented) == (type(actual), actual), (name, cell)


def test_the_table_check_sees_a_wrong_default() -> None:
    assert _documented_default("`1 << 20` (1 MiB)") == 1 << 20
    assert _documented_default("`20.0` s") == 20.0
    assert _documented_default('`None`: `logging.getLogger("nonstop")`') is None
    with pytest.raises(AssertionError):
        _documented_default("20 s")


# ----------------------------------------------------------------------
# fast


@pytest.mark.parametrize("value", ["0", "false", "No", " OFF ", "no\n"])
def test_fast_is_off_when_the_environment_says_so(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("NONSTOP_FAST", value)
    assert options(URL).driver.fast is False
    assert options(URL, fast=True).driver.fast is True


@pytest.mark.parametrize("value", ["1", "yes", "on", "true", ""])
def test_fast_is_on_otherwise(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("NONSTOP_FAST", value)
    assert options(URL).driver.fast is True
    assert options(URL, fast=False).driver.fast is False


def test_fast_is_on_without_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NONSTOP_FAST", raising=False)
    assert options(URL).driver.fast is True


def test_fast_is_read_at_each_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NONSTOP_FAST", "0")
    assert options(URL).driver.fast is False
    monkeypatch.setenv("NONSTOP_FAST", "1")
    assert options(URL).driver.fast is True


# ----------------------------------------------------------------------
# what options() returns


def test_options_are_frozen_and_slotted() -> None:
    chosen = options(URL, queue_size=8, overflow="drop_oldest", subscribe=["a", {"op": "b"}])
    assert not hasattr(chosen, "__dict__") and not hasattr(chosen.driver, "__dict__")
    with pytest.raises(FrozenInstanceError):
        chosen.rng = random.Random()  # type: ignore[misc]
    assert chosen.driver.queue_size == 8
    assert chosen.driver.overflow is nonstop.Overflow.DROP_OLDEST
    assert [s.payload for s in chosen.config.subscription_list] == ["a", '{"op":"b"}']


def test_defaults_are_filled_in() -> None:
    chosen = options(URL)
    assert chosen.config.backoff == nonstop.Backoff()
    assert chosen.config.alerts == nonstop.AlertPolicy()
    assert chosen.driver.logger is logging.getLogger("nonstop")
    assert chosen.driver.ssl_context is None
    assert isinstance(options("wss://feed.example/").driver.ssl_context, ssl.SSLContext)
    assert isinstance(chosen.new_core(), FeedCore)
    assert chosen.new_core() is not chosen.new_core()


def test_prepare_takes_the_arguments_by_name() -> None:
    rng = random.Random(1)
    core, driver = prepare({"url": URL, "queue_size": 3, "rng": rng, "fast": False})
    assert isinstance(core, FeedCore) and isinstance(driver, DriverOptions)
    assert driver.queue_size == 3 and driver.fast is False


def test_names_moved_here_are_the_same_objects_where_they_were() -> None:
    assert nonstop.Overflow is _options.Overflow is _common.Overflow
    assert _common.DriverOptions is DriverOptions
    assert _common.prepare is prepare
    assert isinstance(options(URL), Options)


# ----------------------------------------------------------------------
# bad options: ConfigError from the call, naming the option


BAD: list[tuple[dict[str, Any], str]] = [
    ({"queue_size": 0}, "queue_size"),
    ({"queue_size": True}, "queue_size"),
    ({"overflow": "drop_newest"}, "overflow"),
    ({"read_size": 100}, "read_size"),
    ({"write_timeout": 0}, "write_timeout"),
    ({"write_timeout": "10"}, "write_timeout"),
    ({"on_event": 5}, "on_event"),
    ({"ssl": "yes"}, "ssl"),
    ({"ssl": ssl.create_default_context()}, "wss://"),
    ({"fast": "no"}, "fast"),
    ({"fast": 0}, "fast"),
    ({"subscribe": '{"op": "sub"}'}, "subscribe"),
    ({"subscribe": 5}, "subscribe"),
    ({"subprotocols": "chat"}, "subprotocols"),
    ({"subprotocols": 5}, "subprotocols"),
    ({"fatal_statuses": 401}, "fatal_statuses"),
    ({"fatal_statuses": ["401"]}, "fatal_statuses"),
    ({"fatal_close_codes": [True]}, "fatal_close_codes"),
    ({"ping_interval": -1}, "ping_interval"),
    ({"connect_timeout": None}, "connect_timeout"),
    ({"max_message_size": 0}, "max_message_size"),
    ({"backoff": 5}, "backoff"),
    ({"alerts": {}}, "alerts"),
    ({"user_agent": 5}, "user_agent"),
]


@pytest.mark.parametrize("connect", CONNECTS, ids=["async", "sync"])
@pytest.mark.parametrize(("bad", "named"), BAD, ids=[next(iter(b)) for b, _ in BAD])
def test_a_bad_option_raises_config_error_naming_it(
    connect: Callable[..., object], bad: dict[str, Any], named: str
) -> None:
    with pytest.raises(nonstop.ConfigError, match=re.escape(named)):
        connect(URL, **bad)


@pytest.mark.parametrize("connect", CONNECTS, ids=["async", "sync"])
def test_a_bad_url_raises_invalid_url(connect: Callable[..., object]) -> None:
    with pytest.raises(nonstop.InvalidURL):
        connect("https://feed.example/")


@pytest.mark.parametrize("connect", CONNECTS, ids=["async", "sync"])
def test_a_misspelt_option_is_a_type_error_at_run_time(connect: Callable[..., object]) -> None:
    with pytest.raises(TypeError, match="queue_sise"):
        connect(URL, queue_sise=8)


# ----------------------------------------------------------------------
# mypy sees the full signature on both entry points


SNIPPET = """\
from __future__ import annotations

import nonstop
import nonstop.sync


def use() -> None:
    feed: nonstop.AsyncFeed = nonstop.connect(
        "ws://x/", subscribe=["a"], queue_size=8, overflow="drop_oldest", fast=False
    )
    blocking: nonstop.SyncFeed = nonstop.sync.connect("ws://x/", read_size=1 << 16, fast=None)
    nonstop.connect(url="ws://x/", ping_interval=None, max_message_size=None)
    nonstop.connect("ws://x/", queue_sise=8)  # error: call-arg
    nonstop.sync.connect("ws://x/", queue_sise=8)  # error: call-arg
    nonstop.connect("ws://x/", overflow="drop_newest")  # error: arg-type
    nonstop.sync.connect("ws://x/", ping_interval="20")  # error: arg-type
    nonstop.sync.connect("ws://x/", fast="no")  # error: arg-type
    nonstop.connect("ws://x/", 5.0)  # error: call-arg
    wrong: nonstop.SyncFeed = nonstop.connect("ws://x/")  # error: assignment
    also_wrong: nonstop.AsyncFeed = nonstop.sync.connect("ws://x/")  # error: assignment
"""


def test_mypy_sees_every_option_on_both_entry_points(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    snippet = tmp_path / "use_connect.py"
    snippet.write_text(SNIPPET, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--show-error-codes",
         "--no-error-summary", "--cache-dir", str(tmp_path / "cache"), str(snippet)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={"MYPYPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    expected = {
        number: line.rsplit("# error: ", 1)[1]
        for number, line in enumerate(SNIPPET.splitlines(), 1)
        if "# error: " in line
    }
    found: dict[int, set[str]] = {}
    for line in result.stdout.splitlines():
        match = re.match(r".*use_connect\.py:(\d+): error: .*\[([\w-]+)\]$", line)
        if match:
            found.setdefault(int(match.group(1)), set()).add(match.group(2))
    assert found.keys() == expected.keys(), result.stdout + result.stderr
    for number, code in expected.items():
        assert code in found[number], (number, result.stdout)


# ----------------------------------------------------------------------
# redundant feeds


@pytest.mark.parametrize(("arguments", "says"), [
    (dict(url=URL, redundancy=0), "redundancy must be an integer >= 1"),
    (dict(url=URL, redundancy=True), "redundancy must be an integer >= 1"),
    (dict(url=URL, redundancy=1.5), "redundancy must be an integer >= 1"),
    (dict(url=URL, urls=[URL]), "give url or urls"),
    (dict(), "no URL"),
    (dict(urls=[]), "no URL"),
    (dict(urls=URL), "urls must be a list of URLs"),
    (dict(urls=[URL, 3]), "urls must contain URL strings"),
    (dict(urls=[URL, "http://x/"]), "ws://"),
    (dict(url=URL, redundancy=2, sequence=3), "sequence must be a function"),
    (dict(url=URL, dedupe="payload"), "dedupe must be a function"),
    (dict(url=URL, sequence=len, dedupe=len), "not both"),
    (dict(url=URL, redundancy=2, reorder_window=-1), "reorder_window"),
    (dict(url=URL, redundancy=2, dedupe_count=0), "dedupe_count"),
])
@pytest.mark.parametrize("connect", CONNECTS, ids=["async", "sync"])
def test_bad_redundancy_options_are_refused_up_front(
        connect: Callable[..., object], arguments: dict[str, Any], says: str) -> None:
    with pytest.raises(nonstop.ConfigError, match=says):
        connect(**arguments)


def test_legs_get_the_urls_in_turn_their_labels_and_a_spread_after_the_first() -> None:
    chosen = options(urls=["ws://a.test/", "ws://b.test/"], redundancy=3, name="book")
    assert [leg.url for leg in chosen.legs] == ["ws://a.test/", "ws://b.test/", "ws://a.test/"]
    assert [leg.label for leg in chosen.legs] == ["book#0", "book#1", "book#2"]
    assert [leg.backoff.first for leg in chosen.legs] == [0.0, _options.LEG_SPREAD, _options.LEG_SPREAD]
    cores = chosen.leg_cores()
    assert len({id(core) for core in cores}) == 3
    assert chosen.new_merge is not None and chosen.new_merge().held == 0
    assert options(urls=["ws://a.test/", "ws://b.test/"]).legs[1].url == "ws://b.test/"


def test_one_connection_without_sequence_is_no_merged_feed() -> None:
    chosen = options(URL)
    assert chosen.legs == () and chosen.new_merge is None
    assert options(URL, sequence=len).new_merge is not None  # gaps by number, one leg
