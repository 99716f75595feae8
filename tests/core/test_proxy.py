"""Proxies in the core, with no socket: the proxy's answers are bytes.

* ``parse_proxy`` and :class:`Proxy`: every scheme and its default port,
  credentials (percent-decoded, never shown), every ``ConfigError``;
* :class:`ProxyRules`: ``fixed``, ``choose`` and the ``no_proxy`` matching of
  ``bypasses``; ``rules_from_environment`` as curl reads the environment;
* :class:`ProxyHandshake`, byte for byte, for HTTP ``CONNECT``, SOCKS4A,
  SOCKS5 and socks5h: what the client writes, and what each answer of the
  proxy means -- every answer is fed both in one piece and byte by byte;
* the guard: ``ProxyError``, ``classify_error``, ``transport_error``,
  ``proxy_retry_after``, ``proxy_unreachable``;
* ``Config(proxy=...)`` and the core: the proxy in the ``OpenTransport``
  effect, a proxy's ``Retry-After`` as the backoff wait, a fatal proxy
  failure stopping the feed in the proxy's own words.

Credentials are the distinctive :data:`USER` and :data:`SECRET`: no message
may contain either.  Time is the numbers passed as ``now`` (the fake clock of
:class:`tests.helpers.Pair`); nothing sleeps.
"""

from __future__ import annotations

import base64
import struct
import sys
from collections.abc import Callable

import pytest

from nonstop.core import (
    ERROR,
    Backoff,
    CloseTransport,
    Config,
    ConfigError,
    Connected,
    Connecting,
    Disconnected,
    Event,
    FetchUrl,
    NonstopError,
    OpenTransport,
    Proxy,
    ProxyError,
    ProxyHandshake,
    ProxyRules,
    Reason,
    State,
    Stopped,
    classify_error,
    parse_proxy,
    proxy_unreachable,
    rules_from_environment,
)
from nonstop.core._guard import proxy_retry_after, transport_error
from nonstop.core._proxy import MAX_ANSWER
from tests.helpers import Pair

if sys.version_info >= (3, 11):
    import builtins

    ExceptionGroup = builtins.ExceptionGroup
else:  # pragma: no cover - exercised on Python 3.10 only
    ExceptionGroup = pytest.importorskip("exceptiongroup").ExceptionGroup

T0 = 1000.0
#: A user name and a password no message may ever contain.
USER = "Al1ce-L0gin"
SECRET = "Hunter2-s3cret"
#: Quiet, exact timing for the core: no pings, no jitter.
QUIET = {
    "ping_interval": None,
    "silence_timeout": None,
    "stable_after": 10_000.0,
    "backoff": Backoff(initial=1, factor=2, cap=60, jitter=0),
}

Deliver = Callable[[ProxyHandshake, bytes], None]


def assert_no_credentials(text: str) -> None:
    assert SECRET not in text
    assert USER not in text


@pytest.fixture(params=["in one piece", "byte by byte"])
def deliver(request: pytest.FixtureRequest) -> Deliver:
    """Feed the proxy's bytes to a handshake in one piece, or one at a time."""
    one_by_one = request.param == "byte by byte"

    def feed(shake: ProxyHandshake, data: bytes) -> None:
        pieces = [data[i:i + 1] for i in range(len(data))] if one_by_one else [data]
        for piece in pieces:
            shake.receive_data(piece)

    return feed


def refusal(deliver: Deliver, shake: ProxyHandshake, *answers: bytes) -> ProxyError:
    """The :class:`ProxyError` the proxy's *answers* raise (checked free of credentials)."""
    with pytest.raises(ProxyError) as raised:
        for answer in answers:
            deliver(shake, answer)
    assert_no_credentials(str(raised.value))
    return raised.value


# ===========================================================================
# parse_proxy
@pytest.mark.parametrize(("url", "scheme", "host", "port"), [
    ("http://proxy.example", "http", "proxy.example", 8080),
    ("https://proxy.example", "https", "proxy.example", 443),
    ("socks5://proxy.example", "socks5", "proxy.example", 1080),
    ("socks5h://proxy.example", "socks5h", "proxy.example", 1080),
    ("socks4a://proxy.example", "socks4a", "proxy.example", 1080),
    ("http://proxy.example:3128", "http", "proxy.example", 3128),
    ("https://proxy.example:8443", "https", "proxy.example", 8443),
    ("socks5://127.0.0.1:9050", "socks5", "127.0.0.1", 9050),
    ("socks5h://proxy.example:1", "socks5h", "proxy.example", 1),
    ("socks4a://proxy.example:65535", "socks4a", "proxy.example", 65535),
    # no scheme: HTTP, as curl takes it
    ("proxy.example", "http", "proxy.example", 8080),
    ("proxy.example:3128", "http", "proxy.example", 3128),
    ("10.1.2.3:3128", "http", "10.1.2.3", 3128),
    ("[::1]:3128", "http", "::1", 3128),
    # IPv6 in brackets
    ("http://[2001:db8::1]:3128", "http", "2001:db8::1", 3128),
    ("socks5h://[::1]", "socks5h", "::1", 1080),
    # case, white space, an empty path or port
    ("SOCKS5H://Proxy.EXAMPLE:9050", "socks5h", "proxy.example", 9050),
    ("  http://proxy.example:1  ", "http", "proxy.example", 1),
    ("http://proxy.example:3128/", "http", "proxy.example", 3128),
    ("http://proxy.example:", "http", "proxy.example", 8080),
])
def test_a_proxy_url_gives_scheme_host_and_port(url: str, scheme: str, host: str, port: int) -> None:
    proxy = parse_proxy(url)
    assert proxy == Proxy(scheme, host, port)
    assert proxy.username is None and proxy.password is None


@pytest.mark.parametrize(("url", "username", "password"), [
    (f"http://{USER}:{SECRET}@p", USER, SECRET),
    ("http://al%40ice:p%3Ass%2Fw%25rd%40@p", "al@ice", "p:ss/w%rd@"),
    ("http://a+b:c+d@p", "a+b", "c+d"),  # percent-decoding, not form decoding
    ("http://%C3%A9t%C3%A9:%E2%82%AC@p", "\u00e9t\u00e9", "\u20ac"),
    ("http://bob@p", "bob", None),
    ("http://bob:@p", "bob", ""),
    ("http://:pw@p", "", "pw"),
    (f"{USER}:{SECRET}@p:3128", USER, SECRET),
    (f"socks4a://{USER}@p", USER, None),
    ("socks4a://me:@p", "me", ""),
])
def test_credentials_are_percent_decoded(url: str, username: str, password: str | None) -> None:
    proxy = parse_proxy(url)
    assert (proxy.username, proxy.password) == (username, password)
    assert "***@" in str(proxy)


def test_socks5_credentials_of_255_bytes_are_allowed() -> None:
    longest = "n" * 255
    proxy = parse_proxy(f"socks5://{longest}:{longest}@p")
    assert (proxy.username, proxy.password) == (longest, longest)
    assert parse_proxy("http://" + "u" * 300 + ":" + "p" * 300 + "@p").username == "u" * 300


LONG_NAME = "N4me" * 64  # 256 bytes
E_ACUTE_128 = "%C3%A9" * 128  # 128 characters, 256 bytes


@pytest.mark.parametrize(("url", "says"), [
    (42, "must be a proxy URL string, got int"),
    (None, "must be a proxy URL string, got NoneType"),
    (b"http://p:3128", "must be a proxy URL string, got bytes"),
    (f"ftp://{USER}:{SECRET}@p:21", "proxy scheme 'ftp' is not supported"),
    ("socks4://p", "proxy scheme 'socks4' is not supported"),
    ("ws://p", "use http://, https://, socks5://, socks5h:// or socks4a://"),
    (f"http://{USER}:{SECRET}@", "names no proxy host"),
    (f"http://{USER}:{SECRET}@:3128", "names no proxy host"),
    ("", "names no proxy host"),
    ("   ", "names no proxy host"),
    (f"http://{USER}:{SECRET}@p:3128/path", "has no path, query or fragment"),
    (f"http://{USER}:{SECRET}@p:3128?q=1", "has no path, query or fragment"),
    (f"http://{USER}:{SECRET}@p:3128#frag", "has no path, query or fragment"),
    ("http://p/?q", "has no path, query or fragment"),
    (f"http://{USER}:{SECRET}@p:99999", "is not a usable proxy URL: Port out of range"),
    (f"http://{USER}:{SECRET}@p:port", "is not a usable proxy URL"),
    (f"http://{USER}:{SECRET}@p:-1", "is not a usable proxy URL"),
    (f"http://{USER}:{SECRET}@[::1", "is not a usable proxy URL: Invalid IPv6 URL"),
    (f"socks4a://{USER}:{SECRET}@p", "SOCKS4A has a user id but no password"),
    (f"socks5://{LONG_NAME}:{SECRET}@p", "a SOCKS5 user name and password have 255 bytes at most"),
    (f"socks5h://{USER}:{LONG_NAME}@p", "255 bytes at most"),
    (f"socks5://:{LONG_NAME}@p", "255 bytes at most"),
    (f"socks5://{E_ACUTE_128}@p", "255 bytes at most"),
])
def test_a_bad_proxy_url_is_a_config_error_naming_the_option(url: object, says: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_proxy(url, what="the option")  # type: ignore[arg-type]
    message = str(raised.value)
    assert says in message
    assert message.startswith("the option")
    assert_no_credentials(message)
    assert "N4me" not in message


def test_what_defaults_to_proxy_and_the_url_is_shown_redacted() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_proxy(f"gopher://{USER}:{SECRET}@p:70")
    assert str(raised.value).startswith("proxy='gopher://***@p:70': proxy scheme 'gopher'")
    with pytest.raises(ConfigError, match=r"^proxy='http://p/x': a proxy URL has no path"):
        parse_proxy("p/x")  # the scheme curl would assume is shown


# ===========================================================================
# Proxy: how it is shown
@pytest.mark.parametrize(("proxy", "shown"), [
    (Proxy("http", "p", 3128), "http://p:3128"),
    (Proxy("http", "p", 3128, USER, SECRET), "http://***@p:3128"),
    (Proxy("socks4a", "p", 1080, USER), "socks4a://***@p:1080"),
    (Proxy("socks5", "p", 1080, None, SECRET), "socks5://***@p:1080"),
    (Proxy("socks5h", "::1", 1080), "socks5h://[::1]:1080"),
    (Proxy("https", "2001:db8::1", 443, USER, SECRET), "https://***@[2001:db8::1]:443"),
])
def test_a_proxy_is_shown_without_its_credentials(proxy: Proxy, shown: str) -> None:
    assert str(proxy) == shown
    assert f"{proxy}" == shown
    assert repr(proxy) == f"Proxy({shown!r})"
    assert_no_credentials(repr(proxy))


def test_a_parsed_proxy_is_shown_as_it_was_given_without_credentials() -> None:
    proxy = parse_proxy(f"socks5://{USER}:{SECRET}@[::1]:1080")
    assert str(proxy) == "socks5://***@[::1]:1080"
    assert repr(proxy) == "Proxy('socks5://***@[::1]:1080')"
    assert repr([proxy]) == "[Proxy('socks5://***@[::1]:1080')]"


@pytest.mark.parametrize(("scheme", "tls", "resolves_locally"), [
    ("http", False, False),
    ("https", True, False),
    ("socks5", False, True),
    ("socks5h", False, False),
    ("socks4a", False, False),
])
def test_tls_and_resolves_locally(scheme: str, tls: bool, resolves_locally: bool) -> None:
    proxy = parse_proxy(f"{scheme}://p")
    assert proxy.tls is tls
    assert proxy.resolves_locally is resolves_locally


# ===========================================================================
# ProxyRules: which proxy a connection goes through
HTTP_PROXY = Proxy("http", "plain.example", 3128)
SOCKS_PROXY = Proxy("socks5h", "socks.example", 1080)


def test_fixed_rules_from_a_url_serve_every_connection() -> None:
    rules = ProxyRules.fixed(f"socks5h://{USER}:{SECRET}@127.0.0.1:1080")
    expected = Proxy("socks5h", "127.0.0.1", 1080, USER, SECRET)
    assert rules == ProxyRules(expected, expected, (), "proxy=")
    assert rules.ws is rules.wss
    assert rules.source == "proxy=" and rules.no_proxy == ()
    assert rules.choose(tls=True, host="feed.example", port=443) == expected
    assert rules.choose(tls=False, host="10.0.0.1", port=80) == expected


def test_fixed_rules_take_a_proxy_as_it_is() -> None:
    rules = ProxyRules.fixed(SOCKS_PROXY)
    assert rules.ws is SOCKS_PROXY and rules.wss is SOCKS_PROXY
    assert rules.choose(tls=False, host="h", port=1) is SOCKS_PROXY


def test_fixed_rules_from_a_bad_url_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^proxy='ftp://\*\*\*@p'") as raised:
        ProxyRules.fixed(f"ftp://{USER}:{SECRET}@p")
    assert_no_credentials(str(raised.value))


def test_choose_takes_the_proxy_of_the_feed_s_scheme() -> None:
    rules = ProxyRules(HTTP_PROXY, SOCKS_PROXY)
    assert rules.choose(tls=False, host="h", port=80) is HTTP_PROXY
    assert rules.choose(tls=True, host="h", port=443) is SOCKS_PROXY
    only_wss = ProxyRules(None, SOCKS_PROXY)
    assert only_wss.choose(tls=False, host="h", port=80) is None
    assert only_wss.choose(tls=True, host="h", port=443) is SOCKS_PROXY
    only_ws = ProxyRules(HTTP_PROXY, None)
    assert only_ws.choose(tls=True, host="h", port=443) is None
    assert ProxyRules(None, None).choose(tls=True, host="h", port=443) is None


def test_choose_goes_direct_for_a_bypassed_host() -> None:
    rules = ProxyRules(HTTP_PROXY, SOCKS_PROXY, ("direct.example",))
    assert rules.choose(tls=True, host="direct.example", port=443) is None
    assert rules.choose(tls=False, host="ws.direct.example", port=80) is None
    assert rules.choose(tls=True, host="other.example", port=443) is SOCKS_PROXY


@pytest.mark.parametrize(("entries", "host", "port", "bypass"), [
    ((), "feed.example", 443, False),
    # everything
    (("*",), "feed.example", 443, True),
    (("*",), "10.0.0.1", 1, True),
    (("*",), "::1", 1, True),
    (("other.example", "*"), "feed.example", 443, True),
    # a name: itself and the names under it
    (("example.com",), "example.com", 443, True),
    (("example.com",), "a.example.com", 443, True),
    (("example.com",), "a.b.example.com", 80, True),
    (("example.com",), "notexample.com", 443, False),
    (("example.com",), "example.com.evil", 443, False),
    (("example.com",), "example.org", 443, False),
    (("a.example.com",), "example.com", 443, False),
    (("other.example", "example.com"), "ws.example.com", 443, True),
    # a trailing dot in the host, names in any case
    (("example.com",), "example.com.", 443, True),
    (("example.com",), "a.example.com.", 443, True),
    (("example.com",), "WS.Example.COM", 443, True),
    (("example.com",), "EXAMPLE.COM.", 443, True),
    # host:port: the port must match
    (("example.com:443",), "example.com", 443, True),
    (("example.com:443",), "a.example.com", 443, True),
    (("example.com:443",), "example.com", 80, False),
    (("example.com:",), "example.com", 80, True),
    (("example.com:x",), "example.com", 80, True),
    # IP addresses: exact, never by suffix
    (("127.0.0.1",), "127.0.0.1", 80, True),
    (("127.0.0.1",), "127.0.0.10", 80, False),
    (("0.0.1",), "127.0.0.1", 80, False),
    (("127.0.0.1:8080",), "127.0.0.1", 8080, True),
    (("127.0.0.1:8080",), "127.0.0.1", 8081, False),
    (("::1",), "::1", 80, True),
    (("::1",), "[::1]", 80, True),
    (("::1",), "::2", 80, False),
    (("2001:db8::1",), "2001:db8::1", 443, True),
    # bracketed IPv6, with or without a port
    (("[::1]:8080",), "::1", 8080, True),
    (("[::1]:8080",), "[::1]", 8080, True),
    (("[::1]:8080",), "::1", 8081, False),
    (("[::1]",), "::1", 1, True),
    (("[2001:db8::1]",), "2001:db8::1", 443, True),
    # CIDR blocks
    (("10.0.0.0/8",), "10.1.2.3", 80, True),
    (("10.0.0.0/8",), "11.1.2.3", 80, False),
    (("10.0.0.0/8",), "ten.example", 80, False),
    (("10.0.0.0/8",), "::1", 80, False),
    (("192.168.1.0/24",), "192.168.1.200", 80, True),
    (("192.168.1.0/24",), "192.168.2.1", 80, False),
    (("10.1.2.3/8",), "10.200.0.1", 80, True),  # host bits set: taken leniently
    (("10.0.0.0/8:80",), "10.1.2.3", 80, True),
    (("10.0.0.0/8:80",), "10.1.2.3", 443, False),
    (("2001:db8::/32",), "2001:db8:1::5", 443, True),
    (("2001:db8::/32",), "[2001:db8::7]", 443, True),
    (("2001:db8::/32",), "2001:db9::1", 443, False),
    (("::1/128",), "::1", 443, True),
    (("::1/128",), "127.0.0.1", 443, False),
    # a bad CIDR entry is skipped, not fatal: the next entries still count
    (("10.0.0.0/33",), "10.1.2.3", 80, False),
    (("not/a/block",), "10.1.2.3", 80, False),
    (("10.0.0.0/8/9",), "10.1.2.3", 80, False),
    (("10.0.0.0/33", "10.1.2.3"), "10.1.2.3", 80, True),
    (("not/a/block", "*"), "10.1.2.3", 80, True),
    (("not/a/block",), "not/a/block", 80, True),  # a name host: compared as a name
])
def test_no_proxy_entries(entries: tuple[str, ...], host: str, port: int, bypass: bool) -> None:
    rules = ProxyRules(HTTP_PROXY, SOCKS_PROXY, entries)
    assert rules.bypasses(host, port) is bypass
    assert (rules.choose(tls=True, host=host, port=port) is None) is bypass
    assert (rules.choose(tls=False, host=host, port=port) is None) is bypass


# ===========================================================================
# rules_from_environment
@pytest.mark.parametrize("environ", [
    {},
    {"no_proxy": "*", "NO_PROXY": "example.com"},
    {"http_proxy": "", "https_proxy": "   ", "all_proxy": "\t", "HTTP_PROXY": " ",
     "HTTPS_PROXY": "", "ALL_PROXY": "\n"},
    {"PATH": "/usr/bin", "ftp_proxy": "http://p:21"},
])
def test_an_environment_without_a_proxy_gives_no_rules(environ: dict[str, str]) -> None:
    assert rules_from_environment(environ) is None


def test_http_proxy_is_for_ws_and_https_proxy_for_wss() -> None:
    rules = rules_from_environment({"http_proxy": "http://plain:1", "https_proxy": "socks5h://s:2"})
    assert rules == ProxyRules(Proxy("http", "plain", 1), Proxy("socks5h", "s", 2), (),
                               source="the environment")
    assert rules.source == "the environment"
    assert rules.choose(tls=False, host="feed", port=80) == Proxy("http", "plain", 1)
    assert rules.choose(tls=True, host="feed", port=443) == Proxy("socks5h", "s", 2)


def test_one_scheme_only_leaves_the_other_direct() -> None:
    ws_only = rules_from_environment({"http_proxy": "p:1"})
    assert ws_only is not None
    assert (ws_only.ws, ws_only.wss) == (Proxy("http", "p", 1), None)
    wss_only = rules_from_environment({"HTTPS_PROXY": "p:2"})
    assert wss_only is not None
    assert (wss_only.ws, wss_only.wss) == (None, Proxy("http", "p", 2))


@pytest.mark.parametrize(("environ", "ws_host", "wss_host"), [
    # lower case before upper case
    ({"http_proxy": "lower", "HTTP_PROXY": "upper"}, "lower", None),
    ({"https_proxy": "lower", "HTTPS_PROXY": "upper"}, None, "lower"),
    ({"all_proxy": "lower", "ALL_PROXY": "upper"}, "lower", "lower"),
    # upper case when lower case is unset or blank
    ({"HTTP_PROXY": "upper"}, "upper", None),
    ({"http_proxy": "  ", "HTTP_PROXY": "upper"}, "upper", None),
    ({"https_proxy": "", "HTTPS_PROXY": "upper"}, None, "upper"),
    ({"ALL_PROXY": "upper"}, "upper", "upper"),
    # all_proxy for whichever scheme has none of its own
    ({"all_proxy": "every", "http_proxy": "plain"}, "plain", "every"),
    ({"all_proxy": "every", "HTTPS_PROXY": "secure"}, "every", "secure"),
    ({"all_proxy": "every", "http_proxy": "plain", "https_proxy": "secure"}, "plain", "secure"),
    ({"all_proxy": "every", "http_proxy": " "}, "every", "every"),
    ({"ALL_PROXY": "every", "HTTP_PROXY": "plain"}, "plain", "every"),
])
def test_which_variable_wins(environ: dict[str, str], ws_host: str | None, wss_host: str | None) -> None:
    rules = rules_from_environment(environ)
    assert rules is not None
    assert (None if rules.ws is None else rules.ws.host) == ws_host
    assert (None if rules.wss is None else rules.wss.host) == wss_host


def test_environment_values_are_parsed_as_proxy_urls() -> None:
    rules = rules_from_environment({"all_proxy": f"  socks5://{USER}:{SECRET}@[::1]:9050  "})
    assert rules is not None
    assert rules.ws == Proxy("socks5", "::1", 9050, USER, SECRET)


@pytest.mark.parametrize(("value", "entries"), [
    ("example.com", ("example.com",)),
    ("a.example,b.example", ("a.example", "b.example")),
    ("a.example b.example", ("a.example", "b.example")),
    ("a.example, b.example ,c.example", ("a.example", "b.example", "c.example")),
    (" .example.com, ,localhost. 10.0.0.0/8,,", ("example.com", "localhost", "10.0.0.0/8")),
    ("..deep.example..", ("deep.example",)),
    (",,, . .., ", ()),
    ("Example.COM,FOO.bar:8080", ("example.com", "foo.bar:8080")),
    ("*", ("*",)),
    ("[::1]:8080,2001:DB8::/32,127.0.0.1", ("[::1]:8080", "2001:db8::/32", "127.0.0.1")),
])
def test_no_proxy_is_split_and_normalised(value: str, entries: tuple[str, ...]) -> None:
    rules = rules_from_environment({"http_proxy": "p", "no_proxy": value})
    assert rules is not None and rules.no_proxy == entries


def test_no_proxy_lower_case_before_upper_case_and_blank_ignored() -> None:
    lower = rules_from_environment({"http_proxy": "p", "no_proxy": "low", "NO_PROXY": "up"})
    assert lower is not None and lower.no_proxy == ("low",)
    upper = rules_from_environment({"http_proxy": "p", "no_proxy": "  ", "NO_PROXY": "up"})
    assert upper is not None and upper.no_proxy == ("up",)
    blank = rules_from_environment({"http_proxy": "p", "NO_PROXY": " "})
    assert blank is not None and blank.no_proxy == ()


def test_no_proxy_from_the_environment_matches_as_curl_does() -> None:
    rules = rules_from_environment({
        "https_proxy": "socks5h://s:1", "http_proxy": "http://h:2",
        "NO_PROXY": ".Example.COM, internal., 10.0.0.0/8, [::1]:8080",
    })
    assert rules is not None
    # a leading dot changes nothing: the name itself and every name under it
    assert rules.choose(tls=True, host="example.com", port=443) is None
    assert rules.choose(tls=True, host="WS.EXAMPLE.COM", port=443) is None
    assert rules.choose(tls=True, host="notexample.com", port=443) == Proxy("socks5h", "s", 1)
    assert rules.choose(tls=False, host="db.internal", port=80) is None
    assert rules.choose(tls=False, host="10.9.8.7", port=80) is None
    assert rules.choose(tls=False, host="::1", port=8080) is None
    assert rules.choose(tls=False, host="::1", port=8081) == Proxy("http", "h", 2)
    everything = rules_from_environment({"all_proxy": "p", "no_proxy": "*"})
    assert everything is not None
    assert everything.choose(tls=True, host="feed.example", port=443) is None


@pytest.mark.parametrize(("environ", "variable"), [
    ({"HTTPS_PROXY": f"gopher://{USER}:{SECRET}@p"}, "HTTPS_PROXY"),
    ({"https_proxy": f"http://{USER}:{SECRET}@p:99999"}, "https_proxy"),
    ({"http_proxy": f"http://{USER}:{SECRET}@p/path"}, "http_proxy"),
    ({"HTTP_PROXY": "socks5://"}, "HTTP_PROXY"),
    ({"all_proxy": f"socks4a://{USER}:{SECRET}@p"}, "all_proxy"),
    ({"ALL_PROXY": "ftp://p"}, "ALL_PROXY"),
    ({"http_proxy": "http://fine:1", "https_proxy": "bad://p"}, "https_proxy"),
])
def test_a_bad_environment_value_names_the_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as raised:
        rules_from_environment(environ)
    message = str(raised.value)
    assert message.startswith(f"the environment variable {variable}")
    assert_no_credentials(message)


# ===========================================================================
# ProxyHandshake: HTTP CONNECT
def connect(proxy: str = "http://p:3128", host: str = "feed.example", port: int = 443,
            user_agent: str | None = "nonstop/1") -> ProxyHandshake:
    """A ``CONNECT`` handshake whose request was already written."""
    shake = ProxyHandshake(parse_proxy(proxy), host, port, user_agent=user_agent)
    assert shake.data_to_send().startswith(b"CONNECT ")
    return shake


def test_connect_request_with_credentials_and_user_agent() -> None:
    shake = ProxyHandshake(parse_proxy(f"http://{USER}:{SECRET}@p:3128"), "feed.example", 443,
                           user_agent="nonstop/1.2")
    basic = base64.b64encode(f"{USER}:{SECRET}".encode()).decode("ascii")
    assert shake.data_to_send() == (
        b"CONNECT feed.example:443 HTTP/1.1\r\n"
        b"Host: feed.example:443\r\n"
        b"Proxy-Authorization: Basic " + basic.encode() + b"\r\n"
        b"User-Agent: nonstop/1.2\r\n"
        b"\r\n")
    assert shake.data_to_send() == b""  # taken
    assert not shake.done


def test_connect_request_without_credentials_or_user_agent() -> None:
    for user_agent in (None, ""):
        shake = ProxyHandshake(parse_proxy("https://p"), "feed.example", 8443, user_agent=user_agent)
        assert shake.data_to_send() == (b"CONNECT feed.example:8443 HTTP/1.1\r\n"
                                        b"Host: feed.example:8443\r\n\r\n")


def test_connect_to_an_ipv6_feed_puts_it_in_brackets() -> None:
    shake = ProxyHandshake(parse_proxy("http://p"), "2001:db8::1", 9443)
    assert shake.data_to_send() == (b"CONNECT [2001:db8::1]:9443 HTTP/1.1\r\n"
                                    b"Host: [2001:db8::1]:9443\r\n\r\n")


@pytest.mark.parametrize(("proxy", "pair"), [
    ("http://bob@p", b"bob:"),
    ("http://bob:@p", b"bob:"),
    ("http://:pw@p", b":pw"),
    ("http://al%40ice:p%3Ass@p", b"al@ice:p:ss"),
    ("http://%C3%A9:%E2%82%AC@p", "\u00e9:\u20ac".encode()),
])
def test_connect_credentials_are_basic_of_user_colon_password(proxy: str, pair: bytes) -> None:
    shake = ProxyHandshake(parse_proxy(proxy), "h", 1)
    assert shake.data_to_send() == (b"CONNECT h:1 HTTP/1.1\r\nHost: h:1\r\nProxy-Authorization: Basic "
                                    + base64.b64encode(pair) + b"\r\n\r\n")


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 Connection established\r\n\r\n",
    b"HTTP/1.0 200 Connection established\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nProxy-Agent: tinyproxy/1.11\r\nVia: 1.1 p\r\n\r\n",
    b"HTTP/1.1 200\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 299 Whatever\r\n\r\n",
])
def test_a_2xx_answer_opens_the_tunnel(answer: bytes, deliver: Deliver) -> None:
    shake = connect()
    deliver(shake, answer)
    assert shake.done
    assert shake.data_to_send() == b""


def test_a_partial_answer_waits() -> None:
    shake = connect()
    answer = b"HTTP/1.1 200 Connection established\r\n\r\n"
    for end in range(len(answer)):
        shake.receive_data(answer[end:end + 1])
        assert shake.done is (end == len(answer) - 1)


def test_bytes_after_the_answer_are_the_proxy_s_fault(deliver: Deliver) -> None:
    error = refusal(deliver, connect(), b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 101")
    assert error.reason is Reason.PROXY and not error.fatal
    assert str(error) == ("the proxy http://p:3128 sent data for the feed before the client spoke")


def test_data_after_the_tunnel_opened_is_the_proxy_s_fault() -> None:
    shake = connect()
    shake.receive_data(b"HTTP/1.1 200 OK\r\n\r\n")
    assert shake.done
    with pytest.raises(ProxyError, match="sent data for the feed before the client spoke") as raised:
        shake.receive_data(b"\x16\x03\x01")
    assert raised.value.reason is Reason.PROXY


@pytest.mark.parametrize("status", [b"407 Proxy Authentication Required", b"401 Unauthorized"])
def test_a_proxy_that_wants_credentials_is_fatal_and_says_where_to_put_them(
        status: bytes, deliver: Deliver) -> None:
    error = refusal(deliver, connect(), b"HTTP/1.1 " + status + b"\r\nProxy-Authenticate: Basic\r\n\r\n")
    assert (error.reason, error.fatal) == (Reason.PROXY_AUTH, True)
    assert str(error) == (f"the proxy http://p:3128 wants a user name and password (HTTP {status.decode()}); "
                          "put them in the proxy URL, http://user:password@host:port")


@pytest.mark.parametrize("status", [b"407 Proxy Authentication Required", b"401 Unauthorized"])
def test_a_proxy_that_refuses_the_credentials_is_fatal(status: bytes, deliver: Deliver) -> None:
    shake = connect(f"http://{USER}:{SECRET}@p:3128")
    error = refusal(deliver, shake, b"HTTP/1.1 " + status + b"\r\n\r\n")
    assert (error.reason, error.fatal) == (Reason.PROXY_AUTH, True)
    assert str(error) == (f"the proxy http://***@p:3128 refused the credentials (HTTP {status.decode()}): "
                          "check the user name and password in the proxy URL")


@pytest.mark.parametrize(("answer", "said"), [
    (b"HTTP/1.1 403 Forbidden\r\n\r\n", "HTTP 403 Forbidden"),
    (b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n", "HTTP 502 Bad Gateway"),
    (b"HTTP/1.0 502\r\n\r\n", "HTTP 502"),
    (b"HTTP/1.1 404  Not  Found \r\n\r\n", "HTTP 404 Not  Found"),
])
def test_a_proxy_that_will_not_reach_the_feed_is_retried(answer: bytes, said: str, deliver: Deliver) -> None:
    error = refusal(deliver, connect(f"http://{USER}:{SECRET}@p:3128"), answer)
    assert (error.reason, error.fatal, error.later, error.retry_after) == (
        Reason.PROXY_REFUSED, False, False, None)
    assert str(error) == f"the proxy http://***@p:3128 would not open a tunnel to feed.example:443 ({said})"


@pytest.mark.parametrize(("answer", "later", "retry_after"), [
    (b"HTTP/1.1 503 Service Unavailable\r\n\r\n", True, None),
    (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\n\r\n", True, 7.0),
    (b"HTTP/1.1 429 Too Many Requests\r\n\r\n", True, None),
    (b"HTTP/1.1 429 Too Many Requests\r\nretry-after:  30 \r\n\r\n", True, 30.0),
    (b"HTTP/1.1 403 Forbidden\r\nRetry-After: 12\r\n\r\n", True, 12.0),
    (b"HTTP/1.1 502 Bad Gateway\r\nX: y\r\nnot a header\r\nRETRY-AFTER: 0\r\n\r\n", True, 0.0),
    (b"HTTP/1.1 503 Busy\r\nRetry-After: Wed, 21 Oct 2015 07:28:30 GMT\r\n"
     b"Date: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n", True, 30.0),
    (b"HTTP/1.1 503 Busy\r\nRetry-After: Wed, 21 Oct 2015 07:28:30 GMT\r\n\r\n", True, None),
    (b"HTTP/1.1 403 Forbidden\r\nRetry-After: soon\r\n\r\n", False, None),
])
def test_retry_after_and_later(answer: bytes, later: bool, retry_after: float | None,
                               deliver: Deliver) -> None:
    error = refusal(deliver, connect(), answer)
    assert (error.reason, error.fatal) == (Reason.PROXY_REFUSED, False)
    assert (error.later, error.retry_after) == (later, retry_after)


@pytest.mark.parametrize("answer", [
    b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    b"HTTP/2 200\r\n\r\n",
    b"HTTP/1.1 OK\r\n\r\n",
    b"HTTP/1.1\r\n\r\n",
    b"HTTP/1.1 2OO OK\r\n\r\n",
    b"HTTP/1.1  200 OK\r\n\r\n",
    b"ICY 200 OK\r\n\r\n",
    b"\r\n\r\n",
    b"\x05\x00\x00\x01\r\n\r\n",
])
def test_an_answer_that_is_not_http_asks_what_kind_of_proxy_it_is(answer: bytes, deliver: Deliver) -> None:
    error = refusal(deliver, connect(f"http://{USER}:{SECRET}@p:3128"), answer)
    assert (error.reason, error.fatal) == (Reason.PROXY, False)
    status_line = answer.split(b"\r\n")[0].decode("latin-1")
    assert str(error) == (f"the proxy http://***@p:3128 answered with the answer {status_line!r} to CONNECT: "
                          "is it the kind of proxy its URL says?")


def test_a_long_garbage_status_line_is_cut_in_the_message() -> None:
    error = refusal(lambda s, d: s.receive_data(d), connect(), b"X" * 200 + b"\r\n\r\n")
    assert f"the answer {'X' * 80!r} to CONNECT" in str(error)
    assert "X" * 81 not in str(error)


def test_an_answer_header_over_max_answer_bytes_is_refused(deliver: Deliver) -> None:
    shake = connect()
    head = b"HTTP/1.1 200 OK\r\nX-Padding: "
    deliver(shake, head + b"y" * (MAX_ANSWER - len(head)))  # exactly MAX_ANSWER, unfinished: waits
    assert not shake.done
    error = refusal(deliver, shake, b"y")
    assert (error.reason, error.fatal) == (Reason.PROXY, False)
    assert str(error) == (f"the proxy http://p:3128 answered with an answer header over {MAX_ANSWER} bytes: "
                          "is it the kind of proxy its URL says?")


def test_a_long_header_that_ends_in_one_read_is_accepted() -> None:
    shake = connect()
    shake.receive_data(b"HTTP/1.1 200 OK\r\nX: " + b"y" * MAX_ANSWER + b"\r\n\r\n")
    assert shake.done


@pytest.mark.parametrize("before", [b"", b"HTTP/1.1 200 OK\r\n"])
def test_the_proxy_closing_mid_handshake_is_the_proxy_s_fault(before: bytes) -> None:
    shake = connect(f"https://{USER}:{SECRET}@p")
    if before:
        shake.receive_data(before)
    with pytest.raises(ProxyError) as raised:
        shake.receive_data(b"")
    assert (raised.value.reason, raised.value.fatal) == (Reason.PROXY, False)
    assert str(raised.value) == ("the proxy https://***@p:443 closed the connection "
                                 "in the middle of its handshake")


def test_an_https_proxy_speaks_connect_too(deliver: Deliver) -> None:
    shake = ProxyHandshake(parse_proxy("https://p"), "feed.example", 443)
    assert shake.data_to_send() == b"CONNECT feed.example:443 HTTP/1.1\r\nHost: feed.example:443\r\n\r\n"
    deliver(shake, b"HTTP/1.1 200 OK\r\n\r\n")
    assert shake.done


def test_connect_sends_an_internationalised_name_in_its_idna_form() -> None:
    shake = ProxyHandshake(parse_proxy("http://p"), "b\u00fccher.example", 443)
    assert shake.data_to_send() == (b"CONNECT xn--bcher-kva.example:443 HTTP/1.1\r\n"
                                    b"Host: xn--bcher-kva.example:443\r\n\r\n")


# ===========================================================================
# ProxyHandshake: SOCKS4A
def socks4a(proxy: str = f"socks4a://{USER}@p", host: str = "feed.example",
            port: int = 443) -> ProxyHandshake:
    return ProxyHandshake(parse_proxy(proxy), host, port)


GRANTED = b"\x00\x5a" + bytes(6)


def test_socks4a_request_bytes() -> None:
    shake = socks4a()
    assert shake.data_to_send() == (b"\x04\x01\x01\xbb\x00\x00\x00\x01" + USER.encode() + b"\x00"
                                    + b"feed.example\x00")
    assert shake.data_to_send() == b""
    anonymous = socks4a("socks4a://p", "h.example", 0x1234)
    assert anonymous.data_to_send() == b"\x04\x01\x12\x34\x00\x00\x00\x01\x00h.example\x00"
    idn = socks4a("socks4a://p", "b\u00fccher.example", 80)
    assert idn.data_to_send() == b"\x04\x01\x00\x50\x00\x00\x00\x01\x00xn--bcher-kva.example\x00"


def test_socks4a_request_layout() -> None:
    data = socks4a(f"socks4a://{USER}@p", "x.example", 8443).data_to_send()
    version, command, port = struct.unpack("!BBH", data[:4])
    assert (version, command, port) == (4, 1, 8443)
    assert data[4:8] == bytes([0, 0, 0, 1])  # 0.0.0.x: SOCKS4A, the proxy looks the name up
    user, name, end = data[8:].split(b"\x00")
    assert (user, name, end) == (USER.encode(), b"x.example", b"")


@pytest.mark.parametrize("proxy", [f"socks4a://{USER}@p", "socks4a://p"])
def test_socks4a_granted(proxy: str, deliver: Deliver) -> None:
    shake = socks4a(proxy)
    shake.data_to_send()
    deliver(shake, b"\x00\x5a\x1f\x90\x7f\x00\x00\x01")  # port and address are ignored
    assert shake.done and shake.data_to_send() == b""


def test_socks4a_partial_answer_waits() -> None:
    shake = socks4a()
    for i in range(7):
        shake.receive_data(GRANTED[i:i + 1])
        assert not shake.done
    shake.receive_data(GRANTED[7:])
    assert shake.done


@pytest.mark.parametrize(("code", "reason", "said"), [
    (0x5B, Reason.PROXY_REFUSED, "request rejected or failed"),
    (0x5C, Reason.PROXY_AUTH, "the proxy could not reach our identd"),
    (0x5D, Reason.PROXY_AUTH, "the proxy's identd check refused our user id"),
    (0x42, Reason.PROXY_REFUSED, "reply code 0x42"),
    (0x00, Reason.PROXY_REFUSED, "reply code 0x00"),
    (0xFF, Reason.PROXY_REFUSED, "reply code 0xff"),
])
def test_socks4a_refusals(code: int, reason: Reason, said: str, deliver: Deliver) -> None:
    error = refusal(deliver, socks4a(), bytes([0, code]) + bytes(6))
    assert error.reason is reason
    assert error.fatal is (reason is Reason.PROXY_AUTH)
    assert (error.later, error.retry_after) == (False, None)
    if reason is Reason.PROXY_AUTH:
        assert str(error) == (f"the proxy socks4a://***@p:1080 refused us: {said}; "
                              "check the user id in the proxy URL (socks4a://user@host:port)")
    else:
        assert str(error) == (f"the proxy socks4a://***@p:1080 would not open a tunnel to "
                              f"feed.example:443 ({said})")


@pytest.mark.parametrize("version", [4, 5, 0x48])
def test_socks4a_answer_of_another_version_is_nonsense(version: int, deliver: Deliver) -> None:
    error = refusal(deliver, socks4a(), bytes([version, 0x5A]) + bytes(6))
    assert (error.reason, error.fatal) == (Reason.PROXY, False)
    assert str(error) == (f"the proxy socks4a://***@p:1080 answered with a SOCKS4 answer of version "
                          f"{version}: is it the kind of proxy its URL says?")


def test_socks4a_bytes_after_the_answer_are_the_proxy_s_fault(deliver: Deliver) -> None:
    error = refusal(deliver, socks4a(), GRANTED + b"!")
    assert (error.reason, error.fatal) == (Reason.PROXY, False)
    assert "sent data for the feed before the client spoke" in str(error)


def test_socks4a_a_name_idna_cannot_encode_is_a_fatal_proxy_error() -> None:
    with pytest.raises(ProxyError) as raised:
        socks4a(host="a" * 64 + ".example")  # a label over 63 characters
    assert (raised.value.reason, raised.value.fatal) == (Reason.PROXY, True)
    assert "cannot be sent to the proxy" in str(raised.value)


# ===========================================================================
# ProxyHandshake: SOCKS5 and socks5h
def socks5(proxy: str, host: str = "feed.example", port: int = 443,
           address: str | None = None) -> ProxyHandshake:
    return ProxyHandshake(parse_proxy(proxy), host, port, address=address)


PORT_443 = b"\x01\xbb"
NAME_REQUEST = b"\x05\x01\x00\x03\x0cfeed.example" + PORT_443
REPLY_V4 = b"\x05\x00\x00\x01" + bytes([10, 0, 0, 1]) + b"\x04\x38"
AUTH_REPLY = b"\x01" + bytes([len(USER)]) + USER.encode() + bytes([len(SECRET)]) + SECRET.encode()


@pytest.mark.parametrize(("proxy", "greeting"), [
    ("socks5h://p", b"\x05\x01\x00"),
    ("socks5://p", b"\x05\x01\x00"),
    (f"socks5h://{USER}:{SECRET}@p", b"\x05\x02\x00\x02"),
    (f"socks5://{USER}:{SECRET}@p", b"\x05\x02\x00\x02"),
    (f"socks5h://{USER}@p", b"\x05\x02\x00\x02"),
])
def test_socks5_greeting_offers_user_password_with_credentials(proxy: str, greeting: bytes) -> None:
    shake = socks5(proxy, address="192.0.2.1")
    assert shake.data_to_send() == greeting
    assert shake.data_to_send() == b""
    assert not shake.done


def test_socks5h_without_credentials_sends_the_name(deliver: Deliver) -> None:
    shake = socks5("socks5h://p")
    assert shake.data_to_send() == b"\x05\x01\x00"
    deliver(shake, b"\x05\x00")
    assert shake.data_to_send() == NAME_REQUEST
    assert not shake.done
    deliver(shake, REPLY_V4)
    assert shake.done and shake.data_to_send() == b""


def test_socks5h_sends_the_name_even_when_given_an_address() -> None:
    shake = socks5("socks5h://p", address="192.0.2.1")
    shake.data_to_send()
    shake.receive_data(b"\x05\x00")
    assert shake.data_to_send() == NAME_REQUEST


def test_socks5h_sends_an_idn_name_in_its_idna_form() -> None:
    shake = socks5("socks5h://p", host="b\u00fccher.example", port=80)
    shake.data_to_send()
    shake.receive_data(b"\x05\x00")
    assert shake.data_to_send() == b"\x05\x01\x00\x03\x15xn--bcher-kva.example\x00\x50"


def test_socks5h_with_credentials_authenticates_then_sends_the_name(deliver: Deliver) -> None:
    shake = socks5(f"socks5h://{USER}:{SECRET}@p")
    assert shake.data_to_send() == b"\x05\x02\x00\x02"
    deliver(shake, b"\x05\x02")
    assert shake.data_to_send() == AUTH_REPLY  # RFC 1929: version 1, ulen, user, plen, password
    deliver(shake, b"\x01\x00")
    assert shake.data_to_send() == NAME_REQUEST
    deliver(shake, REPLY_V4)
    assert shake.done


def test_socks5_user_without_password_sends_an_empty_password() -> None:
    shake = socks5("socks5h://bob@p")
    shake.data_to_send()
    shake.receive_data(b"\x05\x02")
    assert shake.data_to_send() == b"\x01\x03bob\x00"


def test_socks5_credentials_offered_but_not_asked_for_go_straight_to_the_request() -> None:
    shake = socks5(f"socks5h://{USER}:{SECRET}@p")
    shake.data_to_send()
    shake.receive_data(b"\x05\x00")
    assert shake.data_to_send() == NAME_REQUEST


def test_socks5_answers_in_one_read_run_the_whole_conversation() -> None:
    shake = socks5(f"socks5h://{USER}:{SECRET}@p")
    shake.data_to_send()
    shake.receive_data(b"\x05\x02" + b"\x01\x00" + REPLY_V4)
    assert shake.done
    assert shake.data_to_send() == AUTH_REPLY + NAME_REQUEST


@pytest.mark.parametrize(("address", "where"), [
    ("192.0.2.7", b"\x01\xc0\x00\x02\x07"),
    ("2001:db8::1", b"\x04" + bytes.fromhex("20010db8000000000000000000000001")),
    ("::ffff:10.0.0.1", b"\x04" + bytes(10) + b"\xff\xff\x0a\x00\x00\x01"),
])
def test_socks5_sends_the_looked_up_address(address: str, where: bytes, deliver: Deliver) -> None:
    shake = socks5(f"socks5://{USER}:{SECRET}@p", address=address)
    assert shake.data_to_send() == b"\x05\x02\x00\x02"
    deliver(shake, b"\x05\x02")
    assert shake.data_to_send() == AUTH_REPLY
    deliver(shake, b"\x01\x00")
    assert shake.data_to_send() == b"\x05\x01\x00" + where + PORT_443
    deliver(shake, REPLY_V4)
    assert shake.done


@pytest.mark.parametrize(("host", "where"), [
    ("10.0.0.1", b"\x01\x0a\x00\x00\x01"),
    ("::1", b"\x04" + bytes(15) + b"\x01"),
])
def test_socks5_an_ip_host_needs_no_lookup(host: str, where: bytes) -> None:
    shake = socks5("socks5://p", host=host, port=8080)
    shake.data_to_send()
    shake.receive_data(b"\x05\x00")
    assert shake.data_to_send() == b"\x05\x01\x00" + where + b"\x1f\x90"


@pytest.mark.parametrize("address", [None, "", "feed.example", "not an address"])
def test_socks5_a_name_without_an_address_is_a_value_error(address: str | None) -> None:
    with pytest.raises(ValueError, match="socks5:// sends an IP address: give the looked-up address"):
        socks5("socks5://p", host="feed.example", address=address)


def test_socks5_credentials_refused_are_fatal(deliver: Deliver) -> None:
    for status in (1, 0xFF):
        error = refusal(deliver, socks5(f"socks5h://{USER}:{SECRET}@p"), b"\x05\x02", bytes([1, status]))
        assert (error.reason, error.fatal) == (Reason.PROXY_AUTH, True)
        assert str(error) == (f"the proxy socks5h://***@p:1080 refused the credentials (SOCKS5 status "
                              f"{status}): check the user name and password in the proxy URL")


def test_socks5_partial_auth_answer_waits() -> None:
    shake = socks5(f"socks5h://{USER}:{SECRET}@p")
    shake.data_to_send()
    shake.receive_data(b"\x05\x02\x01")
    assert shake.data_to_send() == AUTH_REPLY and not shake.done
    shake.receive_data(b"\x00")
    assert shake.data_to_send() == NAME_REQUEST


def test_socks5_no_acceptable_method_without_credentials_asks_for_them(deliver: Deliver) -> None:
    error = refusal(deliver, socks5("socks5h://p"), b"\x05\xff")
    assert (error.reason, error.fatal) == (Reason.PROXY_AUTH, True)
    assert str(error) == ("the proxy socks5h://p:1080 wants a user name and password; "
                          "put them in the proxy URL, socks5://user:password@host:port")


@pytest.mark.parametrize(("proxy", "method"), [
    ("socks5h://p", 0x02),  # user/password, which was not offered
    ("socks5h://p", 0x01),  # GSSAPI
    (f"socks5h://{USER}:{SECRET}@p", 0x01),
    (f"socks5://{USER}:{SECRET}@p", 0x80),
])
def test_socks5_a_method_not_offered_is_nonsense(proxy: str, method: int, deliver: Deliver) -> None:
    error = refusal(deliver, socks5(proxy, address="192.0.2.1"), bytes([5, method]))
    assert (error.reason, error.fatal) == (Reason.PROXY, False)
    assert f"SOCKS5 method {method:#04x}, which the client did not offer" in str(error)
    assert "is it the kind of proxy its URL says?" in str(error)


def test_socks5_no_acceptable_method_despite_credentials_is_fatal(deliver: Deliver) -> None:
    error = refusal(deliver, socks5(f"socks5h://{USER}:{SECRET}@p"), b"\x05\xff")
    assert (error.reason, error.fatal) == (Reason.PROXY_AUTH, True)
    assert "accepts neither a user name and password nor no authentication" in str(error)


def test_socks5_a_password_answer_of_another_version_is_nonsense(deliver: Deliver) -> None:
    error = refusal(deliver, socks5(f"socks5h://{USER}:{SECRET}@p"), b"\x05\x02", b"\x05\x00")
    assert error.reason is Reason.PROXY and "user name and password answer of version 5" in str(error)


@pytest.mark.parametrize(("answers", "version"), [
    ((b"\x04\x00",), 4),
    ((b"\x00\x5a",), 0),
    ((b"HT",), 72),
    ((b"\x05\x00", b"\x04\x00\x00\x01" + bytes(6)), 4),
    ((b"\x05\x00", b"\x00\x00\x00\x01" + bytes(6)), 0),
])
def test_socks5_answer_of_another_version_is_nonsense(answers: tuple[bytes, ...], version: int,
                                                      deliver: Deliver) -> None:
    error = refusal(deliver, socks5("socks5h://p"), *answers)
    assert (error.reason, error.fatal) == (Reason.PROXY, False)
    assert str(error) == (f"the proxy socks5h://p:1080 answered with a SOCKS answer of version {version}: "
                          "is it the kind of proxy its URL says?")


@pytest.mark.parametrize(("code", "said"), [
    (1, "general SOCKS server failure"),
    (2, "connection not allowed by ruleset"),
    (3, "network unreachable"),
    (4, "host unreachable"),
    (5, "connection refused"),
    (6, "TTL expired"),
    (7, "command not supported"),
    (8, "address type not supported"),
    (9, "reply code 9"),
    (255, "reply code 255"),
])
def test_socks5_reply_codes_are_refusals_with_their_text(code: int, said: str, deliver: Deliver) -> None:
    error = refusal(deliver, socks5(f"socks5h://{USER}:{SECRET}@p"), b"\x05\x02", b"\x01\x00",
                    bytes([5, code, 0, 1]) + bytes(6))
    assert (error.reason, error.fatal, error.later, error.retry_after) == (
        Reason.PROXY_REFUSED, False, False, None)
    assert str(error) == (f"the proxy socks5h://***@p:1080 would not open a tunnel to "
                          f"feed.example:443 ({said})")


def test_socks5_refusal_names_an_ipv6_feed_in_brackets() -> None:
    shake = socks5("socks5://p", host="2001:db8::1")
    shake.receive_data(b"\x05\x00")
    with pytest.raises(ProxyError, match=r"to \[2001:db8::1\]:443 \(host unreachable\)"):
        shake.receive_data(b"\x05\x04\x00\x01")
        shake.receive_data(b"\x00")  # the refusal is known from the fifth byte


@pytest.mark.parametrize("reply", [
    b"\x05\x00\x00\x01" + bytes(4) + b"\x00\x00",
    b"\x05\x00\x00\x03\x04abcd\x01\xbb",
    b"\x05\x00\x00\x03\x00\x01\xbb",
    b"\x05\x00\x00\x03\xff" + b"n" * 255 + b"\x01\xbb",
    b"\x05\x00\x00\x04" + bytes(16) + b"\x00\x00",
])
def test_socks5_reply_address_types(reply: bytes, deliver: Deliver) -> None:
    shake = socks5("socks5h://p")
    deliver(shake, b"\x05\x00")
    shake.data_to_send()
    deliver(shake, reply)
    assert shake.done and shake.data_to_send() == b""


@pytest.mark.parametrize("reply", [
    b"\x05\x00\x00\x01" + bytes(4) + b"\x00\x00",
    b"\x05\x00\x00\x03\x04abcd\x01\xbb",
    b"\x05\x00\x00\x04" + bytes(16) + b"\x00\x00",
])
def test_socks5_partial_replies_wait(reply: bytes) -> None:
    for cut in range(len(reply)):
        shake = socks5("socks5h://p")
        shake.receive_data(b"\x05\x00")
        shake.receive_data(reply[:cut] or b"\x05")  # (empty data would mean a close)
        assert not shake.done
        rest = reply[cut:] if cut else reply[1:]
        if rest:
            shake.receive_data(rest)
        assert shake.done


@pytest.mark.parametrize("kind", [0, 2, 5, 9, 255])
def test_socks5_reply_of_an_unknown_address_type_is_nonsense(kind: int, deliver: Deliver) -> None:
    error = refusal(deliver, socks5("socks5h://p"), b"\x05\x00", bytes([5, 0, 0, kind, 0]))
    assert (error.reason, error.fatal) == (Reason.PROXY, False)
    assert str(error) == (f"the proxy socks5h://p:1080 answered with a SOCKS5 answer with address type "
                          f"{kind}: is it the kind of proxy its URL says?")


@pytest.mark.parametrize("reply", [REPLY_V4, b"\x05\x00\x00\x03\x01a\x00\x00"])
def test_socks5_bytes_after_the_reply_are_the_proxy_s_fault(reply: bytes, deliver: Deliver) -> None:
    error = refusal(deliver, socks5("socks5h://p"), b"\x05\x00", reply + b"GET")
    assert (error.reason, error.fatal) == (Reason.PROXY, False)
    assert str(error) == "the proxy socks5h://p:1080 sent data for the feed before the client spoke"


def test_socks5h_name_of_255_bytes_is_sent() -> None:
    name = ".".join(c * 63 for c in "abcd")
    assert len(name) == 255
    shake = socks5("socks5h://p", host=name)
    assert shake.data_to_send() == b"\x05\x01\x00"
    shake.receive_data(b"\x05\x00")
    assert shake.data_to_send() == b"\x05\x01\x00\x03\xff" + name.encode() + PORT_443


def test_socks5h_name_over_255_bytes_is_a_fatal_proxy_error() -> None:
    name = ".".join(c * 63 for c in "abcd") + ".e"  # 257 bytes, every label fine
    shake = socks5(f"socks5h://{USER}:{SECRET}@p", host=name)
    shake.data_to_send()
    with pytest.raises(ProxyError) as raised:
        shake.receive_data(b"\x05\x00")
    assert (raised.value.reason, raised.value.fatal) == (Reason.PROXY, True)
    assert str(raised.value) == (f"the host name {name[:40]}... is too long for SOCKS5 (255 bytes at most)")
    assert_no_credentials(str(raised.value))


def test_socks5h_name_idna_cannot_encode_is_a_fatal_proxy_error() -> None:
    shake = socks5("socks5h://p", host="a" * 64 + ".example")
    with pytest.raises(ProxyError, match="cannot be sent to the proxy") as raised:
        shake.receive_data(b"\x05\x00")
    assert (raised.value.reason, raised.value.fatal) == (Reason.PROXY, True)


# ===========================================================================
# the guard: ProxyError, classification, the wait a proxy asks for
def test_proxy_error_carries_the_decision() -> None:
    plain = ProxyError(Reason.PROXY, "down")
    assert isinstance(plain, NonstopError)
    assert (str(plain), plain.reason, plain.fatal, plain.retry_after, plain.later) == (
        "down", Reason.PROXY, False, None, False)
    busy = ProxyError(Reason.PROXY_REFUSED, "busy", retry_after=7.0, later=True)
    assert (busy.retry_after, busy.later, busy.fatal) == (7.0, True, False)
    auth = ProxyError(Reason.PROXY_AUTH, "no", fatal=True)
    assert auth.fatal


def test_the_proxy_reasons() -> None:
    assert (Reason.PROXY.value, Reason.PROXY_AUTH.value, Reason.PROXY_REFUSED.value) == (
        "proxy", "proxy_auth", "proxy_refused")
    assert Reason.PROXY.level == Reason.PROXY_AUTH.level == Reason.PROXY_REFUSED.level == ERROR


def wrapped_as_cause(inner: BaseException) -> OSError:
    outer = OSError("tunnel failed")
    outer.__cause__ = inner
    return outer


def wrapped_as_context(inner: BaseException) -> RuntimeError:
    try:
        try:
            raise inner
        except BaseException:
            raise RuntimeError("while cleaning up") from None
    except RuntimeError as exc:
        exc.__suppress_context__ = False
        return exc


@pytest.mark.parametrize("reason", [Reason.PROXY, Reason.PROXY_AUTH, Reason.PROXY_REFUSED])
def test_a_proxy_error_is_classified_by_its_reason_wherever_it_is(reason: Reason) -> None:
    error = ProxyError(reason, "words")
    assert classify_error(error) is reason
    assert classify_error(wrapped_as_cause(error)) is reason
    assert classify_error(wrapped_as_context(error)) is reason
    assert classify_error(ExceptionGroup("many", [ValueError("x"), error])) is reason
    assert classify_error(wrapped_as_cause(wrapped_as_cause(error))) is reason


def test_a_proxy_error_wins_over_the_os_error_it_came_from() -> None:
    """A driver raises ``proxy_unreachable(...) from exc``: the proxy's reason,
    not ``refused``/``reset``/``dns``, even though the chain holds those."""
    refused = ConnectionRefusedError(111, "Connection refused")
    error = proxy_unreachable(parse_proxy("http://p"), refused)
    error.__cause__ = refused
    assert classify_error(refused) is Reason.REFUSED
    assert classify_error(error) is Reason.PROXY
    assert classify_error(wrapped_as_cause(error)) is Reason.PROXY


@pytest.mark.parametrize("connecting_to", [None, ("feed.example", 443)])
def test_transport_error_takes_the_proxy_s_verdict(connecting_to: tuple[str, int] | None) -> None:
    for error in (ProxyError(Reason.PROXY_REFUSED, "busy", retry_after=3.0, later=True),
                  ProxyError(Reason.PROXY_AUTH, "wants credentials", fatal=True),
                  ProxyError(Reason.PROXY, "nonsense")):
        for raised in (error, wrapped_as_cause(error), wrapped_as_context(error)):
            verdict = transport_error(raised, connecting_to=connecting_to)
            assert verdict.reason is error.reason
            assert verdict.detail == str(error)  # no hint, no wrapping text
            assert (verdict.later, verdict.fatal) == (error.later, error.fatal)
            assert (verdict.code, verdict.status, verdict.auth) == (None, None, False)
            assert verdict.level == ERROR


def test_proxy_retry_after_finds_the_proxy_s_wait() -> None:
    busy = ProxyError(Reason.PROXY_REFUSED, "busy", retry_after=7.0, later=True)
    assert proxy_retry_after(busy) == 7.0
    assert proxy_retry_after(wrapped_as_cause(busy)) == 7.0
    assert proxy_retry_after(wrapped_as_context(busy)) == 7.0
    assert proxy_retry_after(ExceptionGroup("g", [OSError("x"), busy])) == 7.0
    assert proxy_retry_after(ProxyError(Reason.PROXY_REFUSED, "no wait")) is None
    assert proxy_retry_after(OSError("plain")) is None
    assert proxy_retry_after(wrapped_as_cause(ConnectionResetError())) is None


@pytest.mark.parametrize(("error", "detail"), [
    (ConnectionRefusedError(111, "Connection refused"),
     "ConnectionRefusedError: [Errno 111] Connection refused"),
    (TimeoutError(), "TimeoutError"),
    (OSError("Network is unreachable"), "OSError: Network is unreachable"),
])
def test_proxy_unreachable_names_the_proxy_redacted(error: BaseException, detail: str) -> None:
    failure = proxy_unreachable(parse_proxy(f"socks5://{USER}:{SECRET}@[::1]:1080"), error)
    assert isinstance(failure, ProxyError)
    assert (failure.reason, failure.fatal, failure.later, failure.retry_after) == (
        Reason.PROXY, False, False, None)
    assert str(failure) == (f"cannot reach the proxy socks5://***@[::1]:1080 ({detail}); "
                            "is it up, and is its address right?")
    assert_no_credentials(str(failure))


# ===========================================================================
# Config(proxy=...)
@pytest.mark.parametrize("proxy", ["http://p:3128", Proxy("http", "p", 3128), 42, {"http": "p"}])
def test_config_takes_proxy_rules_or_none_only(proxy: object) -> None:
    with pytest.raises(ConfigError, match=r"^proxy must be a nonstop.core.ProxyRules or None, got "):
        Config(url="ws://feed.example/", proxy=proxy)  # type: ignore[arg-type]


def test_config_keeps_the_rules() -> None:
    rules = ProxyRules.fixed("http://p:3128")
    assert Config(url="ws://feed.example/", proxy=rules).proxy is rules
    assert Config(url="ws://feed.example/", proxy=None).proxy is None
    assert Config(url="ws://feed.example/").proxy is None


# ===========================================================================
# the core: the proxy in OpenTransport, and what a proxy's failure does
def proxied(rules: ProxyRules | None, url: object = "ws://feed.example/stream", **options: object) -> Pair:
    config = Config(url=url, proxy=rules, **{**QUIET, **options})  # type: ignore[arg-type]
    return Pair(config=config, now=T0)


def test_open_transport_carries_a_fixed_proxy() -> None:
    rules = ProxyRules.fixed(f"socks5h://{USER}:{SECRET}@127.0.0.1:1080")
    pair = proxied(rules)
    pair.start()
    assert pair.opens == [OpenTransport(host="feed.example", port=80, tls=False, server_hostname=None,
                                        proxy=Proxy("socks5h", "127.0.0.1", 1080, USER, SECRET))]
    assert pair.opens[0].proxy is rules.ws
    assert_no_credentials(repr(pair.events))


def test_open_transport_through_a_proxy_keeps_the_feed_s_tls_and_name() -> None:
    rules = ProxyRules.fixed("http://p:3128")
    pair = proxied(rules, url="wss://feed.example:9443/stream")
    pair.start()
    assert pair.opens == [OpenTransport(host="feed.example", port=9443, tls=True,
                                        server_hostname="feed.example", proxy=Proxy("http", "p", 3128))]


def test_open_transport_is_direct_without_rules() -> None:
    pair = proxied(None)
    pair.start()
    assert pair.opens[-1].proxy is None


@pytest.mark.parametrize(("url", "bypassed"), [
    ("wss://feed.example/", True),
    ("wss://ws.feed.example/", True),
    ("wss://feed.example:443/", True),
    ("wss://feed.example:8443/", False),  # the entry names port 443
    ("ws://feed.example/", False),  # port 80
    ("wss://other.example/", False),
])
def test_open_transport_is_direct_for_a_no_proxy_host(url: str, bypassed: bool) -> None:
    rules = rules_from_environment({"all_proxy": "socks5h://p:1080", "no_proxy": ".FEED.example:443"})
    pair = proxied(rules, url=url)
    pair.start()
    expected = None if bypassed else Proxy("socks5h", "p", 1080)
    assert pair.opens[-1].proxy == expected


def test_open_transport_follows_the_scheme_s_proxy() -> None:
    rules = rules_from_environment({"https_proxy": "http://secure:1"})
    plain = proxied(rules, url="ws://feed.example/")
    plain.start()
    assert plain.opens[-1].proxy is None
    secure = proxied(rules, url="wss://feed.example/")
    secure.start()
    assert secure.opens[-1].proxy == Proxy("http", "secure", 1)


def test_every_attempt_asks_the_rules_again_for_the_url_provider_s_host() -> None:
    def feed_url() -> str:  # pragma: no cover - the driver calls it, not the core
        return "unused"

    rules = ProxyRules(Proxy("http", "p", 1), Proxy("socks5h", "s", 2), ("direct.example",))
    pair = proxied(rules, url=feed_url)
    pair.start()
    assert isinstance(pair.events[-1], FetchUrl) and not pair.opens
    pair.core.url_fetched("wss://direct.example/a", pair.now)
    pair.pump()
    assert pair.opens[-1].proxy is None
    pair.core.transport_failed(ConnectionResetError(), pair.now)
    pair.pump()
    pair.fire_next()
    pair.core.url_fetched("wss://elsewhere.example/b", pair.now)
    pair.pump()
    assert pair.opens[-1].proxy == Proxy("socks5h", "s", 2)
    pair.core.transport_failed(ConnectionResetError(), pair.now)
    pair.pump()
    pair.fire_next()
    pair.core.url_fetched("ws://elsewhere.example/c", pair.now)
    pair.pump()
    assert pair.opens[-1].proxy == Proxy("http", "p", 1)


def test_a_tunnel_is_invisible_to_the_websocket_handshake() -> None:
    """The driver opens the tunnel with the effect's proxy, then tells the
    core the transport is open: the upgrade runs as without a proxy."""
    pair = proxied(ProxyRules.fixed(f"http://{USER}:{SECRET}@p:3128"))
    pair.start()
    effect = pair.opens[-1]
    assert effect.proxy is not None
    shake = ProxyHandshake(effect.proxy, effect.host, effect.port)
    assert shake.data_to_send().startswith(b"CONNECT feed.example:80 HTTP/1.1\r\n")
    shake.receive_data(b"HTTP/1.1 200 Connection established\r\n\r\n")
    assert shake.done
    events = pair.open() + pair.accept()
    assert pair.requests[-1].host == "feed.example"
    assert pair.of(Connected, events) and pair.core.state is State.OPEN
    assert_no_credentials(repr(pair.events))


def failed_attempt(pair: Pair, error: BaseException) -> tuple[Disconnected, list[Event]]:
    """Start *pair* and fail its first attempt with *error*: its ``Disconnected``, and the new events."""
    pair.start()
    pair.core.transport_failed(error, pair.now)
    events = pair.pump()
    gone: Disconnected = pair.of(Disconnected, events)[-1]
    return gone, events


def test_a_proxy_s_retry_after_is_the_wait_before_the_next_attempt() -> None:
    pair = proxied(ProxyRules.fixed("http://p:3128"))
    error = ProxyError(Reason.PROXY_REFUSED, "the proxy http://p:3128 would not open a tunnel",
                       retry_after=7.0, later=True)
    gone, events = failed_attempt(pair, error)
    assert gone.reason is Reason.PROXY_REFUSED
    assert gone.detail == str(error) and gone.level == ERROR
    assert gone.retry_in == 7.0  # at least what the proxy asked (the series says 1)
    assert gone.retry_at == T0 + 7.0
    assert gone.connection is None and gone.failures == 1
    assert CloseTransport(abort=True) in events
    assert pair.core.state is State.BACKOFF
    assert pair.core.next_deadline() == T0 + 7.0
    assert pair.fire_next() == T0 + 7.0
    assert pair.of(Connecting)[-1].attempt == 2
    assert pair.opens[-1].proxy == Proxy("http", "p", 3128)


def test_a_wrapped_proxy_error_s_retry_after_counts_too() -> None:
    pair = proxied(ProxyRules.fixed("http://p:3128"))
    inner = ProxyError(Reason.PROXY_REFUSED, "busy", retry_after=12.5, later=True)
    gone, _ = failed_attempt(pair, wrapped_as_cause(inner))
    assert (gone.reason, gone.retry_in, gone.detail) == (Reason.PROXY_REFUSED, 12.5, "busy")


def test_a_proxy_s_retry_after_is_bounded_by_the_cap() -> None:
    pair = proxied(ProxyRules.fixed("http://p:3128"), backoff=Backoff(initial=1, factor=2, cap=30, jitter=0))
    gone, _ = failed_attempt(pair, ProxyError(Reason.PROXY_REFUSED, "busy", retry_after=3600.0, later=True))
    assert gone.retry_in == 30.0


def test_a_proxy_that_says_later_without_a_wait_gets_the_full_ceiling() -> None:
    pair = proxied(ProxyRules.fixed("http://p:3128"),
                   backoff=Backoff(initial=4, factor=2, cap=60, jitter=0.9))
    gone, _ = failed_attempt(pair, ProxyError(Reason.PROXY_REFUSED, "busy", later=True))
    assert gone.retry_in == 4.0  # un-jittered


def test_a_proxy_refusal_without_later_follows_the_series() -> None:
    pair = proxied(ProxyRules.fixed("http://p:3128"))
    gone, _ = failed_attempt(pair, ProxyError(Reason.PROXY_REFUSED, "no", retry_after=9.0))
    assert gone.retry_in == 1.0  # a wait without "later" is not a hint


def test_the_retry_after_of_a_real_503_answer_reaches_the_backoff() -> None:
    pair = proxied(ProxyRules.fixed("http://p:3128"))
    pair.start()
    effect = pair.opens[-1]
    assert effect.proxy is not None
    shake = ProxyHandshake(effect.proxy, effect.host, effect.port)
    with pytest.raises(ProxyError) as raised:
        shake.receive_data(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\n\r\n")
    pair.core.transport_failed(raised.value, pair.now)
    pair.pump()
    gone = pair.of(Disconnected)[-1]
    assert (gone.reason, gone.retry_in) == (Reason.PROXY_REFUSED, 7.0)
    assert gone.detail == ("the proxy http://p:3128 would not open a tunnel to feed.example:80 "
                           "(HTTP 503 Service Unavailable)")


def test_a_fatal_proxy_auth_failure_stops_the_feed_in_the_proxy_s_words() -> None:
    pair = proxied(ProxyRules.fixed("http://p:3128"))
    pair.start()
    effect = pair.opens[-1]
    assert effect.proxy is not None
    shake = ProxyHandshake(effect.proxy, effect.host, effect.port)
    with pytest.raises(ProxyError) as raised:
        shake.receive_data(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
    pair.core.transport_failed(raised.value, pair.now)
    events = pair.pump()
    gone = pair.of(Disconnected, events)[-1]
    assert (gone.reason, gone.retry_in, gone.retry_at) == (Reason.PROXY_AUTH, None, None)
    stopped = pair.of(Stopped, events)
    assert stopped == [Stopped(reason=Reason.PROXY_AUTH, detail=str(raised.value))]
    assert "wants a user name and password" in stopped[0].detail
    assert events[-1] == stopped[0]
    assert pair.core.state is State.STOPPED
    assert pair.core.next_deadline() is None


def test_a_wrapped_fatal_proxy_auth_failure_stops_the_feed_too() -> None:
    pair = proxied(ProxyRules.fixed(f"socks5h://{USER}:{SECRET}@p"))
    inner = ProxyError(Reason.PROXY_AUTH, "the proxy socks5h://***@p:1080 refused the credentials",
                       fatal=True)
    gone, events = failed_attempt(pair, wrapped_as_cause(inner))
    assert gone.reason is Reason.PROXY_AUTH
    assert pair.of(Stopped, events) == [Stopped(reason=Reason.PROXY_AUTH, detail=str(inner))]


def test_a_fatal_proxy_failure_of_reason_proxy_stops_in_its_words_too() -> None:
    pair = proxied(ProxyRules.fixed("socks5h://p"))
    error = ProxyError(Reason.PROXY, "the host name is too long for SOCKS5", fatal=True)
    _, events = failed_attempt(pair, error)
    assert pair.of(Stopped, events) == [Stopped(reason=Reason.PROXY, detail=str(error))]


def test_a_fatal_proxy_refusal_gives_up_as_any_fatal_failure() -> None:
    pair = proxied(ProxyRules.fixed("socks5h://p"))
    _, events = failed_attempt(pair, ProxyError(Reason.PROXY_REFUSED, "never", fatal=True))
    assert pair.of(Stopped, events) == [Stopped(reason=Reason.GAVE_UP, detail="proxy_refused: fatal")]


def test_an_unreachable_proxy_is_retried_until_max_attempts() -> None:
    pair = proxied(ProxyRules.fixed("http://p:3128"), max_attempts=2)
    error = proxy_unreachable(parse_proxy("http://p:3128"), ConnectionRefusedError(111, "Connection refused"))
    gone, _ = failed_attempt(pair, error)
    assert (gone.reason, gone.retry_in) == (Reason.PROXY, 1.0)
    assert gone.detail == str(error)
    pair.fire_next()
    pair.core.transport_failed(error, pair.now)
    events = pair.pump()
    assert pair.of(Stopped, events) == [
        Stopped(reason=Reason.GAVE_UP, detail="proxy: 2 failures in a row (max_attempts)")]


# ===========================================================================
# found while writing these tests, mended since
def test_port_zero_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse_proxy("http://p:0")


def test_a_password_with_an_unescaped_reserved_character_is_not_quoted() -> None:
    for url in (f"http://{USER}:Hunter2/s3cret@p:3128", f"http://{USER}:Hunter2?s3cret@p:3128",
                f"http://{USER}:12#s3cret@p"):
        with pytest.raises(ConfigError) as raised:
            parse_proxy(url, what="HTTPS_PROXY")
        assert "s3cret" not in str(raised.value)
        assert USER not in str(raised.value)


def test_a_no_proxy_port_of_superscript_digits_does_not_crash_the_core() -> None:
    rules = rules_from_environment({"http_proxy": "http://p:3128", "no_proxy": "example.com:\u00b2"})
    assert rules is not None and rules.no_proxy == ("example.com:\u00b2",)
    pair = proxied(rules, url="ws://feed.example/")
    pair.start()
    assert pair.opens[-1].proxy == Proxy("http", "p", 3128)
