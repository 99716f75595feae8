"""Proxies in the core: the URL, which proxy a connection takes, the tunnel's
handshake byte for byte (HTTP CONNECT, SOCKS5, SOCKS4A), and what the core
does with each answer.  No sockets: the proxy's answers are bytes."""

from __future__ import annotations

import base64
import struct

import pytest

from nonstop.core import (
    Backoff,
    Config,
    ConfigError,
    Connected,
    Disconnected,
    Proxy,
    ProxyError,
    ProxyHandshake,
    ProxyRules,
    Reason,
    Stopped,
    classify_error,
    format_event,
    parse_proxy,
    proxy_unreachable,
    rules_from_environment,
)
from nonstop.core._guard import proxy_retry_after, transport_error
from nonstop.core._proxy import MAX_ANSWER
from tests.helpers import Pair

SECRET = "s3cr3t-Pw"


# ---------------------------------------------------------------------------
# the URL
@pytest.mark.parametrize(("url", "scheme", "host", "port"), [
    ("http://proxy.corp:3128", "http", "proxy.corp", 3128),
    ("http://proxy.corp", "http", "proxy.corp", 8080),
    ("proxy.corp:3128", "http", "proxy.corp", 3128),
    ("https://proxy.corp", "https", "proxy.corp", 443),
    ("socks5://127.0.0.1", "socks5", "127.0.0.1", 1080),
    ("SOCKS5H://[::1]:9050", "socks5h", "::1", 9050),
    ("socks4a://p", "socks4a", "p", 1080),
    (" http://p:1/ ", "http", "p", 1),
])
def test_a_proxy_url_is_parsed(url: str, scheme: str, host: str, port: int) -> None:
    proxy = parse_proxy(url)
    assert (proxy.scheme, proxy.host, proxy.port) == (scheme, host, port)
    assert proxy.username is None and proxy.password is None
    assert proxy.tls is (scheme == "https")
    assert proxy.resolves_locally is (scheme == "socks5")


def test_credentials_are_percent_decoded_and_never_shown() -> None:
    proxy = parse_proxy(f"socks5://al%40ice:{SECRET}%3A@[::1]:1080")
    assert (proxy.username, proxy.password) == ("al@ice", SECRET + ":")
    assert str(proxy) == "socks5://***@[::1]:1080"
    assert repr(proxy) == "Proxy('socks5://***@[::1]:1080')"
    assert str(parse_proxy("socks4a://me@host")) == "socks4a://***@host:1080"
    assert str(parse_proxy("http://host:1")) == "http://host:1"


@pytest.mark.parametrize(("url", "says"), [
    (42, "must be a proxy URL string, got int"),
    (f"ftp://u:{SECRET}@p:21", "proxy scheme 'ftp' is not supported"),
    (f"http://u:{SECRET}@:3128", "names no proxy host"),
    (f"http://u:{SECRET}@p:3128/path", "has no path, query or fragment"),
    ("http://p:3128?q=1", "has no path, query or fragment"),
    ("http://p:3128#f", "has no path, query or fragment"),
    (f"http://u:{SECRET}@p:99999", "is not a usable proxy URL"),
    (f"http://u:{SECRET}@p:port", "is not a usable proxy URL"),
    (f"socks4a://u:{SECRET}@p", "SOCKS4A has a user id but no password"),
    ("socks5://" + "u" * 256 + ":pw@p", "255 bytes at most"),
    ("socks5h://u:" + "p" * 256 + "@p", "255 bytes at most"),
])
def test_a_bad_proxy_url_says_what_is_wrong_and_hides_the_credentials(url: object, says: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_proxy(url, what="the option")  # type: ignore[arg-type]
    assert says in str(raised.value) and "the option" in str(raised.value)
    assert SECRET not in str(raised.value)


# ---------------------------------------------------------------------------
# which proxy a connection takes
def test_a_fixed_proxy_serves_every_connection() -> None:
    rules = ProxyRules.fixed("http://p:3128")
    assert rules.choose(tls=True, host="a", port=443) == rules.choose(tls=False, host="b", port=80)
    proxy = parse_proxy("socks5h://p")
    assert ProxyRules.fixed(proxy).choose(tls=True, host="x", port=1) is proxy
    assert ProxyRules(None, proxy).choose(tls=False, host="x", port=1) is None


@pytest.mark.parametrize(("entries", "host", "port", "bypass"), [
    (("*",), "anything", 1, True),
    (("example.com",), "example.com", 443, True),
    (("example.com",), "ws.Example.COM", 443, True),
    (("example.com",), "notexample.com", 443, False),
    (("example.com",), "example.com.", 443, True),
    (("example.com:443",), "example.com", 443, True),
    (("example.com:443",), "example.com", 80, False),
    (("10.0.0.0/8",), "10.1.2.3", 80, True),
    (("10.0.0.0/8",), "11.1.2.3", 80, False),
    (("10.0.0.0/8",), "ten.example", 80, False),
    (("10.0.0.0/8:80",), "10.1.2.3", 443, False),
    (("not/a/block",), "10.1.2.3", 80, False),
    (("::1/128",), "[::1]", 80, True),
    (("::1",), "::1", 80, True),
    (("[::1]:8080",), "::1", 8080, True),
    (("[::1]:8080",), "::1", 8081, False),
    (("[::1]",), "::1", 1, True),
    (("127.0.0.1",), "127.0.0.10", 1, False),
    (("host:x",), "host", 1, True),
])
def test_no_proxy_entries(entries: tuple[str, ...], host: str, port: int, bypass: bool) -> None:
    rules = ProxyRules(parse_proxy("http://p"), parse_proxy("http://p"), entries)
    assert rules.bypasses(host, port) is bypass
    assert (rules.choose(tls=False, host=host, port=port) is None) is bypass


def test_the_environment_as_curl_reads_it() -> None:
    assert rules_from_environment({}) is None
    assert rules_from_environment({"http_proxy": "  ", "NO_PROXY": "x"}) is None
    rules = rules_from_environment({
        "http_proxy": "http://lower:1", "HTTP_PROXY": "http://upper:1",
        "HTTPS_PROXY": "socks5h://s:2",
        "no_proxy": " .example.com, ,localhost. 10.0.0.0/8,,",
    })
    assert rules is not None and rules.source == "the environment"
    assert rules.ws is not None and rules.ws.host == "lower"
    assert rules.wss is not None and (rules.wss.scheme, rules.wss.host) == ("socks5h", "s")
    assert rules.no_proxy == ("example.com", "localhost", "10.0.0.0/8")
    fallback = rules_from_environment({"ALL_PROXY": "socks5://a:3", "https_proxy": "http://h:4"})
    assert fallback is not None and fallback.ws is not None and fallback.wss is not None
    assert (fallback.ws.host, fallback.wss.host, fallback.no_proxy) == ("a", "h", ())
    only = rules_from_environment({"https_proxy": "h:5"})
    assert only is not None and only.ws is None and only.wss == Proxy("http", "h", 5)


def test_a_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="the environment variable HTTPS_PROXY"):
        rules_from_environment({"HTTPS_PROXY": f"gopher://u:{SECRET}@p"})


# ---------------------------------------------------------------------------
# HTTP CONNECT
def http(answer: bytes, *, proxy: str = "http://p:3128", host: str = "feed.example",
         port: int = 443, one_by_one: bool = False) -> ProxyHandshake:
    shake = ProxyHandshake(parse_proxy(proxy), host, port, user_agent="nonstop/1")
    shake.data_to_send()
    pieces = [answer[i:i + 1] for i in range(len(answer))] if one_by_one else [answer]
    for piece in pieces:
        shake.receive_data(piece)
    return shake


def test_connect_request_bytes() -> None:
    shake = ProxyHandshake(parse_proxy(f"http://alice:{SECRET}@p"), "feed.example", 443,
                           user_agent="nonstop/1")
    credentials = base64.b64encode(f"alice:{SECRET}".encode()).decode()
    assert shake.data_to_send() == (
        "CONNECT feed.example:443 HTTP/1.1\r\nHost: feed.example:443\r\n"
        f"Proxy-Authorization: Basic {credentials}\r\nUser-Agent: nonstop/1\r\n\r\n").encode()
    assert shake.data_to_send() == b""
    bare = ProxyHandshake(parse_proxy("https://p"), "::1", 8443)
    assert bare.data_to_send() == b"CONNECT [::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\n\r\n"
    no_password = ProxyHandshake(parse_proxy("http://bob@p"), "h", 1)
    assert base64.b64encode(b"bob:") in no_password.data_to_send()


@pytest.mark.parametrize("one_by_one", [False, True])
@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 Connection established\r\n\r\n",
    b"HTTP/1.0 200 Connection established\r\nProxy-agent: tinyproxy\r\n\r\n",
    b"HTTP/1.1 204\r\n\r\n",
])
def test_a_2xx_answer_opens_the_tunnel(answer: bytes, one_by_one: bool) -> None:
    shake = http(answer, one_by_one=one_by_one)
    assert shake.done and shake.data_to_send() == b""


def refused(answer: bytes, **kwargs: object) -> ProxyError:
    with pytest.raises(ProxyError) as raised:
        http(answer, **kwargs)  # type: ignore[arg-type]
    assert SECRET not in str(raised.value)
    return raised.value


@pytest.mark.parametrize("status", [b"407 Proxy Authentication Required", b"401 Unauthorized"])
def test_a_proxy_wanting_credentials_is_fatal_and_says_which(status: bytes) -> None:
    none = refused(b"HTTP/1.1 " + status + b"\r\n\r\n")
    assert (none.reason, none.fatal) == (Reason.PROXY_AUTH, True)
    assert "wants a user name and password" in str(none) and "http://user:password@host:port" in str(none)
    wrong = refused(b"HTTP/1.1 " + status + b"\r\n\r\n", proxy=f"http://u:{SECRET}@p")
    assert (wrong.reason, wrong.fatal) == (Reason.PROXY_AUTH, True)
    assert "refused the credentials" in str(wrong)


def test_a_proxy_that_will_not_reach_the_feed_is_retried_with_its_retry_after() -> None:
    forbidden = refused(b"HTTP/1.1 403 Forbidden\r\n\r\n")
    assert (forbidden.reason, forbidden.fatal, forbidden.later, forbidden.retry_after) == (
        Reason.PROXY_REFUSED, False, False, None)
    assert "would not open a tunnel to feed.example:443 (HTTP 403 Forbidden)" in str(forbidden)
    busy = refused(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 30\r\nX: y\r\nbad line\r\n\r\n")
    assert (busy.reason, busy.later, busy.retry_after) == (Reason.PROXY_REFUSED, True, 30.0)
    gateway = refused(b"HTTP/1.1 502\r\nretry-after: 7\r\n\r\n")
    assert (gateway.later, gateway.retry_after) == (True, 7.0)
    assert "(HTTP 502)" in str(gateway)
    plain_503 = refused(b"HTTP/1.1 503 Busy\r\n\r\n")
    assert (plain_503.later, plain_503.retry_after) == (True, None)


@pytest.mark.parametrize("answer", [
    b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 OK\r\n\r\n", b"HTTP/2 200\r\n\r\n", b"HTTP/1.1\r\n\r\n",
])
def test_an_answer_that_is_not_http_is_the_proxy_s_fault(answer: bytes) -> None:
    error = refused(answer)
    assert error.reason is Reason.PROXY and "is it the kind of proxy its URL says?" in str(error)


def test_an_endless_answer_header_is_refused() -> None:
    error = refused(b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * MAX_ANSWER)
    assert error.reason is Reason.PROXY and "answer header over" in str(error)
    shake = http(b"HTTP/1.1 200 OK\r\nX: y")  # short and unfinished: waits
    assert not shake.done


def test_bytes_before_the_client_spoke_or_an_early_close_fail() -> None:
    early = refused(b"HTTP/1.1 200 OK\r\n\r\nHTTP/1.1 101")
    assert early.reason is Reason.PROXY and "before the client spoke" in str(early)
    shake = http(b"HTTP/1.1 200 OK\r\n\r\n")
    with pytest.raises(ProxyError, match="before the client spoke"):
        shake.receive_data(b"x")
    half = ProxyHandshake(parse_proxy("http://p"), "h", 1)
    with pytest.raises(ProxyError, match="closed the connection in the middle") as raised:
        half.receive_data(b"")
    assert raised.value.reason is Reason.PROXY and not raised.value.fatal


# ---------------------------------------------------------------------------
# SOCKS4A
def socks4(answer: bytes, proxy: str = "socks4a://me@p") -> ProxyHandshake:
    shake = ProxyHandshake(parse_proxy(proxy), "feed.example", 443)
    assert shake.data_to_send() == (b"\x04\x01" + struct.pack("!H", 443) + b"\x00\x00\x00\x01"
                                    + (b"me" if "me@" in proxy else b"") + b"\x00feed.example\x00")
    for i in range(len(answer)):
        shake.receive_data(answer[i:i + 1])
    return shake


def test_socks4a_request_and_grant() -> None:
    assert socks4(b"\x00\x5a" + bytes(6)).done
    assert socks4(b"\x00\x5a" + bytes(6), proxy="socks4a://p").done
    assert not socks4(b"\x00\x5a\x00").done


@pytest.mark.parametrize(("code", "reason", "words"), [
    (0x5B, Reason.PROXY_REFUSED, "request rejected or failed"),
    (0x5C, Reason.PROXY_AUTH, "could not reach our identd"),
    (0x5D, Reason.PROXY_AUTH, "identd check refused our user id"),
    (0x42, Reason.PROXY_REFUSED, "reply code 0x42"),
])
def test_socks4a_refusals(code: int, reason: Reason, words: str) -> None:
    with pytest.raises(ProxyError, match=words) as raised:
        socks4(bytes([0, code]) + bytes(6))
    assert raised.value.reason is reason and raised.value.fatal is (reason is Reason.PROXY_AUTH)


def test_socks4a_nonsense() -> None:
    with pytest.raises(ProxyError, match="SOCKS4 answer of version 5") as raised:
        socks4(b"\x05\x5a" + bytes(6))
    assert raised.value.reason is Reason.PROXY
    shake = ProxyHandshake(parse_proxy("socks4a://p"), "h", 1)
    with pytest.raises(ProxyError, match="before the client spoke"):
        shake.receive_data(b"\x00\x5a" + bytes(6) + b"!")


# ---------------------------------------------------------------------------
# SOCKS5
def socks5(proxy: str, host: str = "feed.example", address: str | None = None) -> ProxyHandshake:
    return ProxyHandshake(parse_proxy(proxy), host, 443, address=address)


def drip(shake: ProxyHandshake, data: bytes) -> None:
    for i in range(len(data)):
        shake.receive_data(data[i:i + 1])


REPLY = b"\x05\x00\x00\x01" + bytes(4) + b"\x00\x00"


def test_socks5h_without_credentials_sends_the_name() -> None:
    shake = socks5("socks5h://p")
    assert shake.data_to_send() == b"\x05\x01\x00"
    drip(shake, b"\x05\x00")
    assert shake.data_to_send() == b"\x05\x01\x00\x03\x0cfeed.example" + struct.pack("!H", 443)
    drip(shake, REPLY)
    assert shake.done


@pytest.mark.parametrize(("address", "kind", "packed"), [
    ("192.0.2.7", 1, bytes([192, 0, 2, 7])),
    ("2001:db8::1", 4, bytes.fromhex("20010db8000000000000000000000001")),
])
def test_socks5_with_credentials_sends_the_address(address: str, kind: int, packed: bytes) -> None:
    shake = socks5(f"socks5://alice:{SECRET}@p", address=address)
    assert shake.data_to_send() == b"\x05\x02\x00\x02"
    shake.receive_data(b"\x05\x02")
    assert shake.data_to_send() == b"\x01\x05alice" + bytes([len(SECRET)]) + SECRET.encode()
    shake.receive_data(b"\x01\x00")
    assert shake.data_to_send() == b"\x05\x01\x00" + bytes([kind]) + packed + struct.pack("!H", 443)
    shake.receive_data(REPLY)
    assert shake.done


def test_socks5_accepts_an_ip_host_without_a_lookup_and_a_proxy_that_wants_no_auth() -> None:
    shake = socks5("socks5://u:p@p", host="10.0.0.1")
    shake.data_to_send()
    shake.receive_data(b"\x05\x00" + b"")  # no authentication after all
    assert shake.data_to_send()[3:8] == b"\x01\x0a\x00\x00\x01"
    with pytest.raises(ValueError, match="give the looked-up address"):
        socks5("socks5://p", host="feed.example")


@pytest.mark.parametrize(("reply", "done"), [
    (b"\x05\x00\x00\x03\x04abcd\x01\xbb", True),
    (b"\x05\x00\x00\x04" + bytes(16) + b"\x00\x00", True),
    (b"\x05\x00\x00\x03\x04ab", False),
])
def test_socks5_reply_address_kinds(reply: bytes, done: bool) -> None:
    shake = socks5("socks5h://p")
    shake.receive_data(b"\x05\x00")
    drip(shake, reply)
    assert shake.done is done


@pytest.mark.parametrize(("code", "words"), [
    (1, "general SOCKS server failure"), (2, "not allowed by ruleset"), (3, "network unreachable"),
    (4, "host unreachable"), (5, "connection refused"), (6, "TTL expired"),
    (7, "command not supported"), (8, "address type not supported"), (99, "reply code 99"),
])
def test_socks5_reply_codes_are_retried_refusals(code: int, words: str) -> None:
    shake = socks5("socks5h://p")
    shake.receive_data(b"\x05\x00")
    with pytest.raises(ProxyError, match=words) as raised:
        shake.receive_data(bytes([5, code, 0, 1]) + bytes(6))
    assert raised.value.reason is Reason.PROXY_REFUSED and not raised.value.fatal


def proxy_error(shake: ProxyHandshake, *answers: bytes) -> ProxyError:
    with pytest.raises(ProxyError) as raised:
        for answer in answers:
            shake.receive_data(answer)
    assert SECRET not in str(raised.value)
    return raised.value


def test_socks5_authentication_failures_are_fatal() -> None:
    wrong = proxy_error(socks5(f"socks5h://u:{SECRET}@p"), b"\x05\x02", b"\x01\x01")
    assert (wrong.reason, wrong.fatal) == (Reason.PROXY_AUTH, True)
    assert "refused the credentials (SOCKS5 status 1)" in str(wrong)
    none = proxy_error(socks5("socks5h://p"), b"\x05\xff")
    assert (none.reason, none.fatal) == (Reason.PROXY_AUTH, True)
    assert "socks5://user:password@host:port" in str(none)
    partial = socks5(f"socks5h://u:{SECRET}@p")
    partial.receive_data(b"\x05\x02\x01")  # the sub-negotiation's answer not whole yet
    assert not partial.done


@pytest.mark.parametrize(("proxy", "answers", "words"), [
    ("socks5h://p", (b"\x04\x00",), "SOCKS answer of version 4"),
    ("socks5h://p", (b"\x05\x02",), "method 0x02, which the client did not offer"),
    ("socks5h://u:p@p", (b"\x05\x02", b"\x05\x00"), "user name and password answer of version 5"),
    ("socks5h://p", (b"\x05\x00", b"\x04\x00\x00\x01" + bytes(6)), "SOCKS answer of version 4"),
    ("socks5h://p", (b"\x05\x00", b"\x05\x00\x00\x09\x00"), "address type 9"),
    ("socks5h://p", (b"\x05\x00", REPLY + b"x"), "before the client spoke"),
])
def test_socks5_nonsense_is_the_proxy_s_fault(proxy: str, answers: tuple[bytes, ...], words: str) -> None:
    error = proxy_error(socks5(proxy), *answers)
    assert error.reason is Reason.PROXY and words in str(error)


def test_socks5h_refuses_a_name_over_255_bytes_or_one_idna_cannot_encode() -> None:
    shake = socks5("socks5h://p", host="a." * 128)
    error = proxy_error(shake, b"\x05\x00")
    assert error.reason is Reason.PROXY and error.fatal and "too long for SOCKS5" in str(error)
    label = proxy_error(socks5("socks5h://p", host="a" * 64 + ".example"), b"\x05\x00")
    assert label.reason is Reason.PROXY and label.fatal and "cannot be sent to the proxy" in str(label)
    with pytest.raises(ProxyError, match="cannot be sent to the proxy"):
        ProxyHandshake(parse_proxy("socks4a://p"), "b" * 64 + ".example", 1)


# ---------------------------------------------------------------------------
# classification, and what the core does
def test_proxy_errors_are_classified_by_their_own_reason_even_when_wrapped() -> None:
    inner = ProxyError(Reason.PROXY_REFUSED, "no", retry_after=3.0, later=True)
    outer = OSError("wrapped")
    outer.__cause__ = inner
    assert classify_error(outer) is Reason.PROXY_REFUSED
    verdict = transport_error(outer, connecting_to=("feed", 1))
    assert (verdict.reason, verdict.detail, verdict.later, verdict.fatal) == (
        Reason.PROXY_REFUSED, "no", True, False)
    assert proxy_retry_after(outer) == 3.0 and proxy_retry_after(OSError("x")) is None
    down = proxy_unreachable(parse_proxy(f"http://u:{SECRET}@p:1"), ConnectionRefusedError(111, "refused"))
    assert down.reason is Reason.PROXY and SECRET not in str(down)
    assert "cannot reach the proxy http://***@p:1 (ConnectionRefusedError: [Errno 111] refused)" in str(down)
    assert "(TimeoutError)" in str(proxy_unreachable(parse_proxy("http://p"), TimeoutError()))


def proxied(proxy: str | None, url: str = "ws://feed.example/", **options: object) -> Pair:
    rules = None if proxy is None else ProxyRules(parse_proxy(proxy), parse_proxy(proxy), ("direct.example",))
    config = Config(url=url, proxy=rules, ping_interval=None, silence_timeout=None,  # type: ignore[arg-type]
                    backoff=Backoff(initial=1, factor=2, cap=8, jitter=0), **options)
    return Pair(config=config)


def test_the_open_effect_names_the_proxy_the_rules_choose() -> None:
    pair = proxied(f"socks5h://u:{SECRET}@127.0.0.1:1080")
    pair.start()
    assert pair.opens[-1].proxy == parse_proxy(f"socks5h://u:{SECRET}@127.0.0.1:1080")
    pair.connect()
    connected = pair.of(Connected)[-1]
    assert connected.proxy == "socks5h://***@127.0.0.1:1080"
    line = format_event(connected, "feed")
    assert line is not None and "proxy=socks5h://***@127.0.0.1:1080" in line[1] and SECRET not in line[1]
    direct = proxied("http://p", url="wss://direct.example/")
    direct.start()
    assert direct.opens[-1].proxy is None and direct.opens[-1].tls
    direct.connect()
    line = format_event(direct.of(Connected)[-1], "feed")
    assert direct.of(Connected)[-1].proxy is None and line is not None and "proxy=" not in line[1]
    none = proxied(None)
    none.start()
    assert none.opens[-1].proxy is None


def test_config_takes_proxy_rules_or_none() -> None:
    with pytest.raises(ConfigError, match=r"proxy must be a nonstop\.core\.ProxyRules or None"):
        Config(url="ws://x/", proxy="http://p")  # type: ignore[arg-type]


def test_a_proxy_s_retry_after_sets_the_wait() -> None:
    pair = proxied("http://p")
    pair.start()
    busy = ProxyError(Reason.PROXY_REFUSED, "busy", retry_after=7.0, later=True)
    pair.core.transport_failed(busy, pair.now)
    pair.pump()
    gone = pair.of(Disconnected)[-1]
    assert gone.reason is Reason.PROXY_REFUSED and gone.retry_in is not None and gone.retry_in >= 7.0


@pytest.mark.parametrize("reason", [Reason.PROXY_AUTH, Reason.PROXY])
def test_a_fatal_proxy_failure_stops_the_feed_in_its_own_words(reason: Reason) -> None:
    pair = proxied("http://p")
    pair.start()
    words = "the proxy http://p:8080 wants a user name and password; put them in the proxy URL"
    pair.core.transport_failed(ProxyError(reason, words, fatal=True), pair.now)
    pair.pump()
    assert pair.of(Disconnected)[-1].reason is reason
    stopped = pair.of(Stopped)[-1]
    assert (stopped.reason, stopped.detail) == (reason, words)


def test_no_proxy_details_a_demanding_user_would_check() -> None:
    proxy = parse_proxy("http://p")
    by_hand = ProxyRules(proxy, proxy, (".Example.COM", "2001:db8:0::1", "[2001:DB8::2]:443"))
    assert by_hand.bypasses("ws.example.com", 1) and by_hand.bypasses("2001:db8::1", 1)
    assert by_hand.bypasses("2001:db8::2", 443) and not by_hand.bypasses("2001:db8::2", 80)
    rules = rules_from_environment({"http_proxy": "http://p", "no_proxy": "a.example,\tb.example\nc.example"})
    assert rules is not None and rules.no_proxy == ("a.example", "b.example", "c.example")


def test_a_nul_in_the_credentials_is_refused() -> None:
    with pytest.raises(ConfigError, match="NUL character"):
        parse_proxy("socks4a://a%00b@p")
