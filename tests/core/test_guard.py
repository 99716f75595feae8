"""The guard (ConnectionErrorHandler): classifying failures and their log levels.

``classify_error`` must recognise transport errors from the standard library,
anyio and trio without the core importing ``socket`` or ``ssl``; the tests may
import them to build realistic exceptions.
"""

from __future__ import annotations

import errno
import socket
import ssl
import sys

import pytest

from nonstop.core import (
    ERROR,
    INFO,
    CloseTransport,
    Disconnected,
    LocalProtocolError,
    Reason,
    State,
    classify_error,
    level_for,
)
from tests.helpers import Pair, pair_in

if sys.version_info >= (3, 11):
    import builtins

    ExceptionGroup = builtins.ExceptionGroup
else:  # pragma: no cover - exercised on Python 3.10 only
    ExceptionGroup = pytest.importorskip("exceptiongroup").ExceptionGroup


class BrokenResourceError(Exception):
    """Stands in for ``anyio.BrokenResourceError`` (recognised by class name)."""


class BrokenTLSError(Exception):
    """Stands in for ``anyio.BrokenTLSError`` / trio's TLS failure."""


class TrioSSLError(Exception):
    """Stands in for trio's ``TrioSSLError``."""


def chained(outer: BaseException, inner: BaseException, *, cause: bool) -> BaseException:
    """Raise *outer* while handling *inner* (``__context__``) or ``from`` it (``__cause__``)."""
    try:
        try:
            raise inner
        except BaseException as exc:
            if cause:
                raise outer from exc
            raise outer  # noqa: B904 - implicit chaining is the point
    except BaseException as exc:
        return exc


# ----------------------------------------------------------------------
# classify_error: one exception


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), Reason.REFUSED),
        (ConnectionRefusedError(), Reason.REFUSED),
        (OSError(errno.ECONNREFUSED, "Connection refused"), Reason.REFUSED),
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), Reason.RESET),
        (ConnectionResetError(), Reason.RESET),
        (BrokenPipeError(errno.EPIPE, "Broken pipe"), Reason.RESET),
        (ConnectionAbortedError(errno.ECONNABORTED, "aborted"), Reason.RESET),
        (OSError(errno.ECONNRESET, "Connection reset by peer"), Reason.RESET),
        (OSError(errno.EPIPE, "Broken pipe"), Reason.RESET),
        (OSError(errno.ECONNABORTED, "Software caused connection abort"), Reason.RESET),
        (OSError(errno.ESHUTDOWN, "Cannot send after transport endpoint shutdown"), Reason.RESET),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), Reason.DNS),
        (socket.herror(1, "Unknown host"), Reason.DNS),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), Reason.TLS),
        (ssl.CertificateError("hostname mismatch"), Reason.TLS),
        (ssl.SSLError(1, "wrong version number"), Reason.TLS),
        (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), Reason.TLS),
        (ssl.SSLZeroReturnError(6, "TLS/SSL connection has been closed"), Reason.TLS),
        (BrokenTLSError("tls broke"), Reason.TLS),
        (TrioSSLError("tls broke"), Reason.TLS),
        (TimeoutError(), Reason.CONNECT_TIMEOUT),
        (BrokenResourceError(), Reason.RESET),
        (OSError(errno.EHOSTUNREACH, "No route to host"), Reason.NETWORK),
        (OSError("no errno at all"), Reason.NETWORK),
        (ValueError("something else"), Reason.NETWORK),
        (RuntimeError(), Reason.NETWORK),
        (KeyboardInterrupt(), Reason.NETWORK),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.value,
)
def test_classify_error(error: BaseException, reason: Reason) -> None:
    assert classify_error(error) is reason


def test_subclass_of_a_recognised_class_name_is_recognised() -> None:
    class MyCertError(ssl.SSLCertVerificationError):
        pass

    class MyBrokenResource(BrokenResourceError):
        pass

    assert classify_error(MyCertError(1, "bad cert")) is Reason.TLS
    assert classify_error(MyBrokenResource()) is Reason.RESET


# ----------------------------------------------------------------------
# classify_error: chains and groups


@pytest.mark.parametrize("cause", [True, False], ids=["cause", "context"])
@pytest.mark.parametrize(
    ("inner", "reason"),
    [
        (ConnectionRefusedError(), Reason.REFUSED),
        (ConnectionResetError(), Reason.RESET),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), Reason.DNS),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), Reason.TLS),
        (TimeoutError(), Reason.CONNECT_TIMEOUT),
        (BrokenResourceError(), Reason.RESET),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.value,
)
def test_classify_error_follows_chained_exceptions(
    inner: BaseException, reason: Reason, cause: bool
) -> None:
    """A wrapper such as ``OSError("connect failed") from ConnectionRefusedError``
    is classified by what it wraps."""
    outer = chained(RuntimeError("wrapper"), inner, cause=cause)
    assert (outer.__cause__ if cause else outer.__context__) is inner
    assert classify_error(outer) is reason


def test_classify_error_follows_a_chain_several_levels_deep() -> None:
    level1 = chained(OSError("read failed"), ConnectionResetError(), cause=True)
    level2 = chained(RuntimeError("stream broke"), level1, cause=False)
    level3 = chained(ValueError("driver"), level2, cause=True)
    assert classify_error(level3) is Reason.RESET


def test_classify_error_terminates_on_a_cyclic_chain() -> None:
    a = ValueError("a")
    b = ValueError("b")
    a.__context__ = b
    b.__context__ = a
    assert classify_error(a) is Reason.NETWORK
    b.__cause__ = ConnectionRefusedError()
    assert classify_error(a) is Reason.REFUSED


def test_classify_error_terminates_on_a_very_long_chain() -> None:
    head: BaseException = ValueError("0")
    for i in range(1, 10_000):
        nxt = ValueError(str(i))
        nxt.__context__ = head
        head = nxt
    assert classify_error(head) is Reason.NETWORK


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (ConnectionRefusedError(), Reason.REFUSED),
        (OSError(errno.ECONNREFUSED, "refused"), Reason.REFUSED),
        (ConnectionResetError(), Reason.RESET),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), Reason.DNS),
        (ssl.SSLError(1, "bad record"), Reason.TLS),
        (TimeoutError(), Reason.CONNECT_TIMEOUT),
        (BrokenResourceError(), Reason.RESET),
        (ValueError(), Reason.NETWORK),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.value,
)
def test_classify_error_looks_into_exception_groups(member: Exception, reason: Reason) -> None:
    group = ExceptionGroup("all attempts failed", [OSError("other address"), member])
    assert classify_error(group) is reason


def test_classify_error_looks_into_nested_groups_and_their_chains() -> None:
    wrapped = chained(OSError("connect to ::1 failed"), ConnectionRefusedError(), cause=True)
    inner = ExceptionGroup("ipv6", [wrapped])
    outer = ExceptionGroup("happy eyeballs", [ValueError("x"), inner])
    assert classify_error(outer) is Reason.REFUSED


def test_classify_error_ignores_a_non_sequence_exceptions_attribute() -> None:
    class Odd(Exception):
        exceptions = "not a list of exceptions"

    assert classify_error(Odd()) is Reason.NETWORK


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([TimeoutError(), ConnectionResetError()], Reason.RESET),
        ([ConnectionResetError(), ConnectionRefusedError()], Reason.REFUSED),
        ([ConnectionRefusedError(), socket.gaierror(-2, "dns")], Reason.DNS),
        ([socket.gaierror(-2, "dns"), ssl.SSLError(1, "tls")], Reason.TLS),
    ],
    ids=["reset>timeout", "refused>reset", "dns>refused", "tls>dns"],
)
def test_classify_error_prefers_the_most_specific_reason(
    members: list[Exception], reason: Reason
) -> None:
    """TLS > DNS > refused > reset > timeout, whatever the order of the members."""
    assert classify_error(ExceptionGroup("g", members)) is reason
    assert classify_error(ExceptionGroup("g", members[::-1])) is reason


# ----------------------------------------------------------------------
# transport_failed goes through the guard


def _in_state(state: State) -> Pair:
    pair = Pair(ping_interval=None)
    pair.start()
    if state is not State.CONNECTING:
        pair.open()
    if state is State.OPEN:
        pair.accept()
    assert pair.core.state is state
    return pair


TRANSPORT_ERRORS = [
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), Reason.REFUSED),
    (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), Reason.RESET),
    (BrokenPipeError(errno.EPIPE, "Broken pipe"), Reason.RESET),
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), Reason.DNS),
    (ssl.SSLCertVerificationError(1, "certificate verify failed"), Reason.TLS),
    (TimeoutError("timed out"), Reason.CONNECT_TIMEOUT),
    (BrokenResourceError("stream broke"), Reason.RESET),
    (OSError(errno.EHOSTUNREACH, "No route to host"), Reason.NETWORK),
]


@pytest.mark.parametrize("state", [State.CONNECTING, State.HANDSHAKING, State.OPEN])
@pytest.mark.parametrize(
    ("error", "reason"), TRANSPORT_ERRORS,
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.value,
)
def test_transport_failed_is_classified(state: State, error: Exception, reason: Reason) -> None:
    pair = _in_state(state)
    was_open = state is State.OPEN
    now = pair.clock.advance(2.0)
    pair.core.transport_failed(error, now)
    events = pair.drain()
    disconnected = events[0]
    assert isinstance(disconnected, Disconnected)
    assert disconnected.reason is reason
    assert disconnected.level == ERROR
    assert disconnected.code is None
    assert disconnected.status is None
    assert disconnected.detail.startswith(f"{type(error).__name__}: {error}")
    hinted = state is State.CONNECTING and reason in (Reason.TLS, Reason.DNS, Reason.REFUSED)
    assert disconnected.detail.endswith(")") == hinted  # what to check, while connecting
    assert disconnected.connection == (1 if was_open else None)
    assert disconnected.uptime == (2.0 if was_open else 0.0)
    assert disconnected.failures == 1
    assert disconnected.retry_at == pytest.approx(now + disconnected.retry_in)
    assert events[-1] == CloseTransport(abort=True)
    assert pair.core.state is State.BACKOFF
    assert pair.core.next_deadline() == disconnected.retry_at
    assert pair.core.data_to_send() == b""


# transport_lost: a read or write failed on a transport the core may have let go of


def _pair_in(when: str) -> Pair:
    """A pair in the state named *when*, a moment after it got there."""
    pair = pair_in(when)
    pair.clock.advance(0.25)
    return pair


@pytest.mark.parametrize("when", ["handshaking", "open", "closing", "stopping"])
def test_transport_lost_past_connecting_fails_the_transport_as_transport_failed_does(
    when: str,
) -> None:
    error = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    lost, failed = _pair_in(when), _pair_in(when)
    assert lost.core.transport_lost(error, lost.now) is True
    failed.core.transport_failed(error, failed.now)
    events = lost.drain()
    assert events == failed.drain()
    assert CloseTransport(abort=True) in events
    assert lost.core.state is failed.core.state
    assert lost.core.state in (State.BACKOFF, State.STOPPED)
    assert lost.core.next_deadline() == failed.core.next_deadline()
    assert lost.core.metrics(lost.now) == failed.core.metrics(failed.now)


@pytest.mark.parametrize("when", ["idle", "connecting", "backoff", "stopped"])
def test_transport_lost_without_a_transport_past_connecting_is_ignored(when: str) -> None:
    pair = _pair_in(when)
    state, deadline = pair.core.state, pair.core.next_deadline()
    metrics = pair.core.metrics(pair.now)
    assert pair.core.transport_lost(ConnectionResetError(), pair.now) is False
    assert pair.core.transport_lost(BrokenResourceError("late"), pair.now) is False
    assert (pair.core.state, pair.core.next_deadline()) == (state, deadline)
    assert pair.core.next_event() is None and pair.core.data_to_send() == b""
    assert pair.core.metrics(pair.now) == metrics


@pytest.mark.parametrize("when", ["idle", "connecting", "open", "stopped"])
@pytest.mark.parametrize("bad", [float("nan"), float("-inf"), "now", True])
def test_transport_lost_validates_now_in_every_state(when: str, bad: object) -> None:
    pair = _pair_in(when)
    with pytest.raises(LocalProtocolError):
        pair.core.transport_lost(ConnectionResetError(), bad)  # type: ignore[arg-type]
    assert pair.core.state.value == when
    assert pair.core.next_event() is None


def test_connect_failures_say_what_to_check() -> None:
    pair = _in_state(State.CONNECTING)
    pair.core.transport_failed(ConnectionRefusedError(111, "Connection refused"), pair.now)
    (disconnected,) = pair.of(Disconnected, pair.drain())
    assert disconnected.detail == (
        "ConnectionRefusedError: [Errno 111] Connection refused "
        "(nothing accepts connections on feed.example:80; is the server up?)"
    )


def test_transport_failed_detail_is_the_type_name_when_the_message_is_empty() -> None:
    pair = _in_state(State.CONNECTING)
    pair.core.transport_failed(ConnectionResetError(), pair.now)
    (disconnected,) = pair.of(Disconnected, pair.drain())
    assert disconnected.detail == "ConnectionResetError"


def test_transport_failed_while_closing_ends_the_close_without_a_second_disconnect() -> None:
    """The failure of a connection already being closed is not a new failure."""
    pair = _in_state(State.OPEN)
    pair.server_close(1000)
    assert pair.core.state is State.CLOSING
    before = pair.core.metrics(pair.now)
    pair.core.transport_failed(ConnectionResetError(), pair.now)
    assert pair.drain() == [CloseTransport(abort=True)]
    assert pair.core.state is State.BACKOFF
    after = pair.core.metrics(pair.now)
    assert after.disconnects == before.disconnects == {"server_closed": 1}
    assert after.consecutive_failures == before.consecutive_failures == 1


# ----------------------------------------------------------------------
# log levels


@pytest.mark.parametrize("code", [1000, 1001, 1005])
def test_level_for_normal_server_closes_is_info(code: int) -> None:
    assert level_for(Reason.SERVER_CLOSED, code) == INFO


@pytest.mark.parametrize("code", [None, 1000, 1001])
def test_level_for_stop_and_client_reconnect_is_info(code: int | None) -> None:
    assert level_for(Reason.STOPPED, code) == INFO
    assert level_for(Reason.CLIENT_RECONNECT, code) == INFO


@pytest.mark.parametrize("code", [1002, 1003, 1006, 1007, 1008, 1009, 1011, 1012, 1013, 1014, 4000])
def test_level_for_abnormal_server_closes_is_error(code: int) -> None:
    assert level_for(Reason.SERVER_CLOSED, code) == ERROR


@pytest.mark.parametrize(
    "reason",
    [r for r in Reason if r not in (Reason.SERVER_CLOSED, Reason.STOPPED, Reason.CLIENT_RECONNECT)],
    ids=lambda r: r.value,
)
@pytest.mark.parametrize("code", [None, 1000, 1001, 1006])
def test_level_for_every_other_reason_is_error(reason: Reason, code: int | None) -> None:
    """A normal close code does not make a failure normal."""
    assert level_for(reason, code) == ERROR
    assert reason.level == ERROR


def test_reason_level_property() -> None:
    assert Reason.STOPPED.level == INFO
    assert Reason.CLIENT_RECONNECT.level == INFO
    assert Reason.SERVER_CLOSED.level == ERROR


@pytest.mark.parametrize(("code", "level"), [(1000, INFO), (1001, INFO), (1011, ERROR), (4001, ERROR)])
def test_server_close_disconnect_carries_the_level(code: int, level: int) -> None:
    pair = _in_state(State.OPEN)
    events = pair.server_close(code, "bye")
    (disconnected,) = pair.of(Disconnected, events)
    assert disconnected.reason is Reason.SERVER_CLOSED
    assert disconnected.code == code
    assert disconnected.level == level
    assert disconnected.detail == "server closed the connection: bye"


def test_server_close_without_a_status_code_is_a_normal_close() -> None:
    """An empty close frame means 1005 "no status": a normal close, logged at INFO."""
    pair = _in_state(State.OPEN)
    pair.feed(bytes([0x88, 0x00]))  # FIN + close, empty payload
    events = pair.pump()
    (disconnected,) = pair.of(Disconnected, events)
    assert disconnected.reason is Reason.SERVER_CLOSED
    assert disconnected.code is None
    assert disconnected.detail == "server closed the connection"
    assert disconnected.level == INFO


def test_a_wrapped_error_shows_its_cause() -> None:
    """anyio reports a reset as BrokenResourceError: say what broke."""
    pair = _in_state(State.OPEN)
    try:
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except ConnectionResetError as exc:
            raise BrokenResourceError() from exc
    except BrokenResourceError as wrapped:
        pair.core.transport_failed(wrapped, pair.now)
    (disconnected,) = pair.of(Disconnected, pair.drain())
    assert disconnected.reason is Reason.RESET
    assert disconnected.detail == (
        "BrokenResourceError (ConnectionResetError: [Errno 104] Connection reset by peer)")


# ----------------------------------------------------------------------
# the guard's verdicts: reason, detail, level and what the failure means


def test_error_detail_names_the_type_the_message_and_the_cause() -> None:
    from nonstop.core._guard import error_detail

    assert error_detail(TimeoutError()) == "TimeoutError"
    assert error_detail(OSError("boom")) == "OSError: boom"
    wrapped = chained(BrokenResourceError(), ConnectionResetError("reset by peer"), cause=True)
    assert error_detail(wrapped) == "BrokenResourceError (ConnectionResetError: reset by peer)"
    silent_cause = chained(OSError("outer"), ConnectionResetError(), cause=False)
    assert error_detail(silent_cause) == "OSError: outer"


@pytest.mark.parametrize(
    ("error", "reason", "hint"),
    [
        (ConnectionRefusedError("refused"), Reason.REFUSED,
         "nothing accepts connections on feed.example:8443; is the server up?"),
        (socket.gaierror(socket.EAI_NONAME, "unknown"), Reason.DNS,
         "check the host name 'feed.example'"),
        (ssl.SSLCertVerificationError("bad cert"), Reason.TLS, "check the server's certificate"),
    ],
)
def test_transport_error_while_connecting_says_what_to_check(
    error: BaseException, reason: Reason, hint: str
) -> None:
    from nonstop.core._guard import transport_error

    verdict = transport_error(error, connecting_to=("feed.example", 8443))
    assert (verdict.reason, verdict.level, verdict.code, verdict.status) == (reason, ERROR, None, None)
    assert hint in verdict.detail
    assert not (verdict.auth or verdict.later or verdict.fatal)
    later = transport_error(error, connecting_to=None)
    assert later.reason is reason and hint not in later.detail


def test_transport_error_without_a_hint_for_its_reason() -> None:
    from nonstop.core._guard import transport_error

    verdict = transport_error(ConnectionResetError("reset"), connecting_to=("h", 1))
    assert (verdict.reason, verdict.detail) == (Reason.RESET, "ConnectionResetError: reset")


@pytest.mark.parametrize(
    ("status", "auth", "later"),
    [(401, True, False), (403, True, False), (429, False, True), (503, False, True),
     (500, False, False), (404, False, False)],
)
def test_upgrade_rejected_verdicts(status: int, auth: bool, later: bool) -> None:
    from nonstop.core._guard import upgrade_rejected

    verdict = upgrade_rejected(status, fatal_statuses=frozenset({404}))
    assert (verdict.reason, verdict.status, verdict.code, verdict.level) == (
        Reason.REJECTED, status, None, ERROR)
    assert verdict.detail == f"server answered the upgrade with HTTP {status}"
    assert (verdict.auth, verdict.later, verdict.fatal) == (auth, later, status == 404)


@pytest.mark.parametrize(
    ("code", "level", "auth", "later"),
    [(1000, INFO, False, False), (1001, INFO, False, False), (1005, INFO, False, False),
     (None, INFO, False, False), (1008, ERROR, True, False), (1013, ERROR, False, True),
     (1011, ERROR, False, False), (4000, ERROR, False, False)],
)
def test_server_closed_verdicts(code: int | None, level: int, auth: bool, later: bool) -> None:
    from nonstop.core._guard import server_closed

    verdict = server_closed(code, "bye", fatal_close_codes=frozenset({4000}))
    assert (verdict.reason, verdict.code, verdict.status, verdict.level) == (
        Reason.SERVER_CLOSED, code, None, level)
    assert verdict.detail == "server closed the connection: bye"
    assert (verdict.auth, verdict.later, verdict.fatal) == (auth, later, code == 4000)
    assert server_closed(code, "", fatal_close_codes=frozenset()).detail == (
        "server closed the connection")


def test_a_verdict_logs_at_its_reason_and_codes_level() -> None:
    from nonstop.core._guard import Verdict

    assert Verdict(reason=Reason.STOPPED, detail="stop requested", code=1000).level == INFO
    assert Verdict(reason=Reason.EOF, detail="eof", code=1006).level == ERROR
    assert Verdict(reason=Reason.CLIENT_RECONNECT, detail="again").level == INFO
