"""API misuse raises at once and leaves the core exactly as it was.

"Exactly as it was" is checked by comparing a snapshot taken before and after
the bad call: state, next deadline, metrics, subscriptions, queued events and
bytes, and the core's notion of time (a later valid call at the earlier
``now`` must still be accepted).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable
from typing import Any

import pytest

from nonstop.core import (
    Alert,
    AlertKind,
    CloseTransport,
    Config,
    ConfigError,
    Connected,
    Connecting,
    Disconnected,
    FeedCore,
    InvalidURL,
    LocalProtocolError,
    Message,
    NonstopError,
    NotConnected,
    OpenTransport,
    Reason,
    State,
    Stopped,
    Subscribed,
    Subscription,
)
from tests.helpers import Pair, frame

Call = Callable[[FeedCore, float], Any]

TEXT_FRAME = frame(0x1, b"a")


def in_state(name: str) -> Pair:
    """A pair driven into the named state, with every event and byte drained."""
    pair = Pair(ping_interval=None, silence_timeout=None, subscriptions=["sub"])
    core = pair.core
    if name != "idle":
        pair.start()
    if name in ("handshaking", "open", "closing", "stopping"):
        pair.open()
    if name in ("open", "closing", "stopping"):
        pair.accept()
    if name == "closing":
        pair.server_close(1000)
    if name == "stopping":
        core.stop(pair.now)
    if name == "backoff":
        core.transport_failed(ConnectionRefusedError(), pair.now)
    if name == "stopped":
        core.stop(pair.now)
    pair.pump()
    assert core.state.value == name
    assert core.next_event() is None and core.data_to_send() == b""
    return pair


def snapshot(pair: Pair) -> tuple[Any, ...]:
    core = pair.core
    return (core.state, core.next_deadline(), core.metrics(pair.now), core.subscriptions,
            core.connection, core.reading_paused)


def assert_untouched(pair: Pair, before: tuple[Any, ...]) -> None:
    core = pair.core
    assert snapshot(pair) == before
    assert core.next_event() is None
    assert core.data_to_send() == b""
    core.handle_timer(pair.now)  # the clock did not move forward either
    assert snapshot(pair) == before


ALL_STATES = [s.value for s in State]

STATE_INPUTS: dict[str, tuple[Call, set[str]]] = {
    "start": (lambda c, t: c.start(t), {"idle"}),
    "transport_opened": (lambda c, t: c.transport_opened(t), {"connecting"}),
    "transport_failed": (
        lambda c, t: c.transport_failed(ConnectionResetError(), t),
        {"connecting", "handshaking", "open", "closing", "stopping"},
    ),
    "receive_data": (
        lambda c, t: c.receive_data(TEXT_FRAME, t),
        {"handshaking", "open", "closing", "stopping"},
    ),
    "receive_eof": (
        lambda c, t: c.receive_eof(t),
        {"handshaking", "open", "closing", "stopping"},
    ),
    "subscribe": (
        lambda c, t: c.subscribe("new", t),
        {"idle", "connecting", "handshaking", "open", "closing", "backoff"},
    ),
}

REFUSED = [
    (name, state)
    for name, (_, accepted) in STATE_INPUTS.items()
    for state in ALL_STATES
    if state not in accepted
]
ACCEPTED = [
    (name, state)
    for name, (_, accepted) in STATE_INPUTS.items()
    for state in sorted(accepted)
]


@pytest.mark.parametrize(("name", "state"), REFUSED, ids=[f"{n}-{s}" for n, s in REFUSED])
def test_input_in_a_state_that_cannot_take_it_raises_and_changes_nothing(name: str, state: str) -> None:
    pair = in_state(state)
    before = snapshot(pair)
    call, _ = STATE_INPUTS[name]
    with pytest.raises(LocalProtocolError, match=state):
        call(pair.core, pair.now + 5.0)
    assert_untouched(pair, before)


@pytest.mark.parametrize(("name", "state"), ACCEPTED, ids=[f"{n}-{s}" for n, s in ACCEPTED])
def test_input_in_a_state_that_can_take_it_is_accepted(name: str, state: str) -> None:
    """The other half of the table above: these are not misuse."""
    pair = in_state(state)
    call, _ = STATE_INPUTS[name]
    call(pair.core, pair.now + 5.0)


def test_misuse_error_is_a_nonstop_error_naming_the_input() -> None:
    pair = in_state("open")
    with pytest.raises(LocalProtocolError, match="can't handle start in state open") as info:
        pair.core.start(pair.now)
    assert isinstance(info.value, NonstopError)


# ----------------------------------------------------------------------
# time


TIMED: dict[str, tuple[str, Call]] = {
    "start": ("idle", lambda c, t: c.start(t)),
    "transport_opened": ("connecting", lambda c, t: c.transport_opened(t)),
    "transport_failed": ("open", lambda c, t: c.transport_failed(ConnectionResetError(), t)),
    "receive_data": ("open", lambda c, t: c.receive_data(TEXT_FRAME, t)),
    "receive_eof": ("open", lambda c, t: c.receive_eof(t)),
    "handle_timer": ("open", lambda c, t: c.handle_timer(t)),
    "send": ("open", lambda c, t: c.send("x", t)),
    "subscribe": ("open", lambda c, t: c.subscribe("new", t)),
    "unsubscribe": ("open", lambda c, t: c.unsubscribe("sub", t)),
    "reconnect": ("open", lambda c, t: c.reconnect(t)),
    "stop": ("open", lambda c, t: c.stop(t)),
    "pause_reading": ("open", lambda c, t: c.pause_reading(t)),
    "resume_reading": ("open", lambda c, t: c.resume_reading(t)),
}


def timed_pair(state: str) -> Pair:
    pair = in_state(state)
    pair.clock.advance(5.0)  # before any timeout
    pair.core.handle_timer(pair.now)  # the core has now seen pair.now
    pair.pump()
    assert pair.core.state.value == state
    return pair


@pytest.mark.parametrize("name", list(TIMED))
def test_time_going_backwards_raises(name: str) -> None:
    state, call = TIMED[name]
    pair = timed_pair(state)
    before = snapshot(pair)
    with pytest.raises(LocalProtocolError, match="backwards"):
        call(pair.core, pair.now - 0.001)
    assert_untouched(pair, before)


@pytest.mark.parametrize("name", list(TIMED))
def test_same_time_twice_is_fine(name: str) -> None:
    state, call = TIMED[name]
    pair = timed_pair(state)
    call(pair.core, pair.now)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, True, "1000", None],
                         ids=["nan", "inf", "-inf", "bool", "str", "none"])
@pytest.mark.parametrize("name", list(TIMED))
def test_now_must_be_a_finite_number(name: str, bad: Any) -> None:
    state, call = TIMED[name]
    pair = timed_pair(state)
    before = snapshot(pair)
    with pytest.raises(LocalProtocolError, match="finite"):
        call(pair.core, bad)
    assert_untouched(pair, before)


def test_start_rejects_nan_before_anything_happened() -> None:
    pair = Pair()
    with pytest.raises(LocalProtocolError):
        pair.core.start(math.nan)
    assert pair.core.state is State.IDLE
    assert pair.core.next_deadline() is None
    assert pair.core.next_event() is None


def test_integer_time_is_accepted() -> None:
    pair = Pair(ping_interval=None)
    pair.core.start(1000)
    assert pair.core.next_deadline() == 1010.0


# ----------------------------------------------------------------------
# receive_data arguments


@pytest.mark.parametrize("state", ["handshaking", "open", "closing", "stopping"])
def test_receive_data_empty_is_not_eof(state: str) -> None:
    pair = in_state(state)
    before = snapshot(pair)
    with pytest.raises(LocalProtocolError, match="receive_eof"):
        pair.core.receive_data(b"", pair.now)
    assert_untouched(pair, before)


@pytest.mark.parametrize("data", ["\x81\x01a", None, 5, [0x81, 0x01, 0x61], bytearray(), memoryview(b"")],
                         ids=["str", "none", "int", "list", "empty-bytearray", "empty-memoryview"])
def test_receive_data_rejects_non_bytes_and_empty(data: Any) -> None:
    pair = in_state("open")
    before = snapshot(pair)
    with pytest.raises(LocalProtocolError):
        pair.core.receive_data(data, pair.now)
    assert_untouched(pair, before)


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_receive_data_accepts_bytes_like(wrap: Callable[[bytes], Any]) -> None:
    pair = in_state("open")
    pair.core.receive_data(wrap(TEXT_FRAME), pair.now)
    assert pair.drain() == [Message(data="a", connection=1, received_at=pair.now)]


# ----------------------------------------------------------------------
# send, subscribe, unsubscribe


@pytest.mark.parametrize("state", ["idle", "connecting", "handshaking", "closing", "backoff",
                                   "stopping", "stopped"])
def test_send_while_not_open_raises_not_connected(state: str) -> None:
    pair = in_state(state)
    before = snapshot(pair)
    with pytest.raises(NotConnected):
        pair.core.send("hello", pair.now + 1.0)
    assert_untouched(pair, before)


@pytest.mark.parametrize("message", [object(), {1, 2}, math.nan, {"x": math.inf}, {"f": print}],
                         ids=["object", "set", "nan", "inf-in-dict", "function"])
def test_send_of_a_non_json_object_raises(message: Any) -> None:
    pair = in_state("open")
    before = snapshot(pair)
    with pytest.raises(LocalProtocolError, match="JSON"):
        pair.core.send(message, pair.now + 1.0)
    assert_untouched(pair, before)
    assert pair.server_messages == ["sub"]


def test_send_encodes_text_bytes_and_json() -> None:
    pair = in_state("open")
    for message in ("text", b"\x00\x01", bytearray(b"\x02"), {"op": "x", "n": [1, 2]}, ["é"]):
        pair.core.send(message, pair.now)
    pair.pump()
    assert pair.server_messages == ["sub", "text", b"\x00\x01", b"\x02", '{"op":"x","n":[1,2]}', '["é"]']


def test_subscribe_twice_raises() -> None:
    pair = in_state("open")
    before = snapshot(pair)
    with pytest.raises(LocalProtocolError, match="already subscribed"):
        pair.core.subscribe("sub", pair.now + 1.0)
    with pytest.raises(LocalProtocolError, match="already subscribed"):
        pair.core.subscribe(Subscription(message="sub", name="same payload"), pair.now + 1.0)
    assert_untouched(pair, before)


@pytest.mark.parametrize("state", ["idle", "open", "backoff"])
def test_unsubscribe_unknown_raises(state: str) -> None:
    pair = in_state(state)
    before = snapshot(pair)
    with pytest.raises(LocalProtocolError, match="not subscribed"):
        pair.core.unsubscribe("never", pair.now + 1.0)
    assert_untouched(pair, before)


def test_subscribe_non_json_raises_config_error_and_changes_nothing() -> None:
    pair = in_state("open")
    before = snapshot(pair)
    with pytest.raises(ConfigError):
        pair.core.subscribe(object(), pair.now + 1.0)
    assert_untouched(pair, before)


def test_bad_url_is_rejected_at_construction() -> None:
    with pytest.raises(InvalidURL) as info:
        Config(url="https://feed.example/ws")
    assert isinstance(info.value, ConfigError)
    assert info.value.url == "https://feed.example/ws"
    assert "ws or wss" in info.value.problem
    assert str(info.value).startswith("invalid WebSocket URL 'https://feed.example/ws': ")


def test_feedcore_needs_a_config() -> None:
    with pytest.raises(ConfigError):
        FeedCore({"url": "ws://x/"}, rng=random.Random(0))  # type: ignore[arg-type]


# ----------------------------------------------------------------------
# events are frozen, slotted, keyword-only


def one_of_each() -> list[Any]:
    sub = Subscription(message="s")
    return [
        OpenTransport(host="h", port=80, tls=False, server_hostname=None),
        CloseTransport(abort=False),
        Connecting(attempt=1, total_attempts=1, url="ws://h/"),
        Connected(connection=1, attempt=1, subprotocol=None, handshake_time=0.0, downtime=None),
        Subscribed(subscription=sub, connection=1, acked=False),
        Message(data="x", connection=1, received_at=0.0),
        Disconnected(reason=Reason.EOF, code=1006, status=None, detail="d", level=40,
                     connection=1, uptime=1.0, failures=1, retry_in=1.0, retry_at=2.0),
        Alert(kind=AlertKind.DOWN, active=True, detail="d", level=40),
        Stopped(reason=Reason.STOPPED, detail="d"),
    ]


@pytest.mark.parametrize("event", one_of_each(), ids=lambda e: type(e).__name__)
def test_events_are_frozen(event: Any) -> None:
    for field in dataclasses.fields(event):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(event, field.name, None)
    with pytest.raises((dataclasses.FrozenInstanceError, AttributeError, TypeError)):
        event.extra = 1


@pytest.mark.parametrize("event", one_of_each(), ids=lambda e: type(e).__name__)
def test_events_are_slotted_and_keyword_only(event: Any) -> None:
    cls = type(event)
    assert "__slots__" in cls.__dict__
    assert not hasattr(event, "__dict__")
    values = [getattr(event, f.name) for f in dataclasses.fields(event)]
    with pytest.raises(TypeError):
        cls(*values)
    assert cls(**{f.name: getattr(event, f.name) for f in dataclasses.fields(event)}) == event


def test_events_from_a_real_run_are_frozen() -> None:
    pair = in_state("stopped")
    assert pair.events
    for event in pair.events:
        assert dataclasses.is_dataclass(event)
        assert not hasattr(event, "__dict__")
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(event, dataclasses.fields(event)[0].name, None)


def test_config_is_frozen() -> None:
    config = Config(url="ws://h/")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.url = "ws://other/"  # type: ignore[misc]
