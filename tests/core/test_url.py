"""URL parsing, redaction and configuration validation.

Every bad URL or option must be rejected when the ``Config`` is built, with a
message that names the problem, so a typo never becomes a reconnect loop.
"""

from __future__ import annotations

import base64
import math

import pytest

from nonstop.core import (
    AlertPolicy,
    AppPing,
    Backoff,
    Config,
    ConfigError,
    Endpoint,
    InvalidURL,
    Subscription,
    parse_url,
    redact_url,
)


def basic(creds: str) -> str:
    return "Basic " + base64.b64encode(creds.encode("utf-8")).decode("ascii")


# ---------------------------------------------------------------------------
# schemes and ports


def test_ws_url_defaults_to_port_80_without_tls() -> None:
    assert parse_url("ws://feed.example") == Endpoint(
        url="ws://feed.example",
        host="feed.example",
        port=80,
        tls=False,
        target="/",
        host_header="feed.example",
        basic_auth=None,
        redacted="ws://feed.example",
    )


def test_wss_url_defaults_to_port_443_with_tls() -> None:
    ep = parse_url("wss://feed.example/stream")
    assert (ep.host, ep.port, ep.tls, ep.target, ep.host_header) == (
        "feed.example", 443, True, "/stream", "feed.example")


@pytest.mark.parametrize(
    ("url", "port", "host_header"),
    [
        ("ws://feed.example:8080/", 8080, "feed.example:8080"),
        ("wss://feed.example:8443/", 8443, "feed.example:8443"),
        ("ws://feed.example:65535/", 65535, "feed.example:65535"),
        ("ws://feed.example:1/", 1, "feed.example:1"),
    ],
)
def test_explicit_port_appears_in_host_header(url: str, port: int, host_header: str) -> None:
    ep = parse_url(url)
    assert (ep.port, ep.host_header) == (port, host_header)


@pytest.mark.parametrize(
    ("url", "port"), [("ws://feed.example:80/", 80), ("wss://feed.example:443/", 443)]
)
def test_explicit_default_port_is_left_out_of_host_header(url: str, port: int) -> None:
    ep = parse_url(url)
    assert (ep.port, ep.host_header) == (port, "feed.example")


def test_port_of_the_other_scheme_is_not_a_default() -> None:
    ep = parse_url("ws://feed.example:443/")
    assert (ep.port, ep.tls, ep.host_header) == (443, False, "feed.example:443")


def test_empty_port_means_default_port() -> None:
    ep = parse_url("wss://feed.example:/x")
    assert (ep.port, ep.host_header) == (443, "feed.example")


def test_scheme_and_host_are_case_insensitive() -> None:
    ep = parse_url("WSS://Feed.EXAMPLE:9000/Path")
    assert (ep.tls, ep.host, ep.port, ep.host_header, ep.target) == (
        True, "feed.example", 9000, "feed.example:9000", "/Path")


# ---------------------------------------------------------------------------
# request target


def test_path_and_query_form_the_request_target() -> None:
    ep = parse_url("ws://feed.example/v2/stream?symbols=BTC,ETH&depth=10")
    assert ep.target == "/v2/stream?symbols=BTC,ETH&depth=10"


def test_query_without_path_gets_root_path() -> None:
    assert parse_url("ws://feed.example?x=1").target == "/?x=1"


def test_non_ascii_path_and_query_are_percent_encoded_as_utf8() -> None:
    ep = parse_url("ws://feed.example/caf\u00e9?q=\u00fc|x")
    assert ep.target == "/caf%C3%A9?q=%C3%BC%7Cx"


def test_characters_unsafe_in_a_request_target_are_percent_encoded() -> None:
    ep = parse_url('ws://feed.example/a{b}^c?x="y"&z=<w>')
    assert ep.target == "/a%7Bb%7D%5Ec?x=%22y%22&z=%3Cw%3E"


def test_existing_percent_escapes_are_kept_not_double_encoded() -> None:
    ep = parse_url("ws://feed.example/a%20b?q=c%2Fd")
    assert ep.target == "/a%20b?q=c%2Fd"


def test_reserved_characters_allowed_in_a_target_are_kept() -> None:
    url = "ws://feed.example/p:a@t;h!$'()*+=~-._?k=v&l=/x:y@z"
    assert parse_url(url).target == "/p:a@t;h!$'()*+=~-._?k=v&l=/x:y@z"


# ---------------------------------------------------------------------------
# IPv6 literals


def test_ipv6_literal_without_port() -> None:
    ep = parse_url("ws://[::1]/feed")
    assert (ep.host, ep.port, ep.host_header, ep.target) == ("::1", 80, "[::1]", "/feed")


def test_ipv6_literal_with_port_keeps_brackets_in_host_header() -> None:
    ep = parse_url("ws://[::1]:9000")
    assert (ep.host, ep.port, ep.host_header) == ("::1", 9000, "[::1]:9000")


def test_ipv6_literal_with_default_tls_port() -> None:
    ep = parse_url("wss://[2001:db8::7]:443/")
    assert (ep.host, ep.port, ep.tls, ep.host_header) == (
        "2001:db8::7", 443, True, "[2001:db8::7]")


def test_ipv6_literal_after_userinfo() -> None:
    ep = parse_url("ws://user:pw@[::1]:9000/")
    assert (ep.host, ep.host_header, ep.basic_auth) == ("::1", "[::1]:9000", basic("user:pw"))


def test_ipv4_mapped_ipv6_literal() -> None:
    ep = parse_url("ws://[::ffff:10.0.0.1]/")
    assert (ep.host, ep.host_header) == ("::ffff:10.0.0.1", "[::ffff:10.0.0.1]")


# ---------------------------------------------------------------------------
# user info


def test_userinfo_becomes_basic_authorization() -> None:
    ep = parse_url("wss://alice:s3cret@feed.example/")
    assert ep.basic_auth == basic("alice:s3cret")
    assert ep.host == "feed.example"


def test_userinfo_is_percent_decoded_before_encoding() -> None:
    ep = parse_url("ws://al%40ice:p%3Ass%20w@feed.example/")
    assert ep.basic_auth == basic("al@ice:p:ss w")


def test_userinfo_with_non_ascii_password_is_utf8() -> None:
    ep = parse_url("ws://bob:p%C3%A4ss@feed.example/")
    assert ep.basic_auth == basic("bob:p\u00e4ss")


def test_user_without_password() -> None:
    assert parse_url("ws://alice@feed.example/").basic_auth == basic("alice:")


def test_password_without_user() -> None:
    assert parse_url("ws://:pw@feed.example/").basic_auth == basic(":pw")


def test_userinfo_is_redacted() -> None:
    ep = parse_url("wss://alice:s3cret@feed.example:9000/x")
    assert ep.redacted == "wss://***@feed.example:9000/x"
    assert "alice" not in ep.redacted and "s3cret" not in ep.redacted


def test_no_userinfo_means_no_basic_auth() -> None:
    assert parse_url("ws://feed.example/").basic_auth is None


# ---------------------------------------------------------------------------
# redact_url


@pytest.mark.parametrize(
    "name",
    ["token", "access_token", "api_key", "ApiKey", "apikey", "signature", "X-Amz-Signature",
     "sig", "secret", "client_secret", "password", "passphrase", "auth", "authorization",
     "session", "session_id", "credential", "jwt", "cookie", "TOKEN"],
)
def test_secret_query_values_are_redacted(name: str) -> None:
    assert redact_url(f"wss://h/feed?{name}=abc123&symbol=BTC") == (
        f"wss://h/feed?{name}=***&symbol=BTC")


def test_all_secret_values_are_redacted_and_others_kept() -> None:
    url = "wss://h/f?token=t1&symbol=BTC&api_key=k1&depth=10&signature=s1"
    out = redact_url(url)
    assert out == "wss://h/f?token=***&symbol=BTC&api_key=***&depth=10&signature=***"
    for secret in ("t1", "k1", "s1"):
        assert secret not in out


def test_repeated_secret_parameter_is_redacted_every_time() -> None:
    assert redact_url("ws://h/?token=a&token=b") == "ws://h/?token=***&token=***"


def test_percent_encoded_secret_name_is_recognised() -> None:
    assert redact_url("ws://h/?%74oken=abc") == "ws://h/?token=***"


def test_secret_parameter_without_value_is_still_marked() -> None:
    assert redact_url("ws://h/?token") == "ws://h/?token=***"


def test_query_without_secrets_is_returned_verbatim() -> None:
    url = "ws://h:81/p?q=a%20b&sym=x&empty="
    assert redact_url(url) == url


def test_url_without_query_or_userinfo_is_unchanged() -> None:
    assert redact_url("wss://feed.example:8443/v1/stream") == "wss://feed.example:8443/v1/stream"


def test_userinfo_and_secret_query_are_both_redacted() -> None:
    assert redact_url("ws://alice:pw@h:9/?token=t&x=1") == "ws://***@h:9/?token=***&x=1"


def test_unparseable_url_loses_query_and_userinfo() -> None:
    out = redact_url("ws://alice:pw@[::1/?token=abc")
    assert out == "[::1/"


def test_fragment_is_dropped_by_redaction() -> None:
    assert redact_url("ws://h/#token=abc") == "ws://h/"


def test_endpoint_redacted_matches_redact_url() -> None:
    url = "wss://u:p@feed.example/s?api_key=K&x=1"
    ep = parse_url(url)
    assert ep.redacted == redact_url(url) == "wss://***@feed.example/s?api_key=***&x=1"
    assert ep.url == url


def test_config_label_is_redacted_url_unless_named() -> None:
    url = "wss://u:p@feed.example/s?token=T"
    assert Config(url=url).label == "wss://***@feed.example/s?token=***"
    assert Config(url=url, name="prices").label == "prices"


# ---------------------------------------------------------------------------
# InvalidURL: each case names its problem


def problem(url: object) -> str:
    with pytest.raises(InvalidURL) as info:
        parse_url(url)  # type: ignore[arg-type]
    err = info.value
    assert isinstance(err, ConfigError) and isinstance(err, ValueError)
    assert str(err).startswith("invalid WebSocket URL ")
    return err.problem


@pytest.mark.parametrize("url", ["http://feed.example/", "https://feed.example/", "HTTP://h/"])
def test_http_scheme_is_rejected_with_a_hint(url: str) -> None:
    msg = problem(url)
    assert "scheme must be ws or wss" in msg
    assert "(use ws:// or wss://)" in msg


def test_other_scheme_is_rejected_without_the_http_hint() -> None:
    msg = problem("ftp://feed.example/")
    assert msg == "scheme must be ws or wss, not 'ftp'"


@pytest.mark.parametrize("url", ["feed.example/stream", "//feed.example/"])
def test_missing_scheme_is_named(url: str) -> None:
    assert problem(url) == "scheme must be ws or wss, not 'missing'"


@pytest.mark.parametrize("url", ["ws://", "ws:///stream", "wss://user:pw@/x", "ws://:80/"])
def test_missing_host_is_rejected(url: str) -> None:
    assert problem(url) == "no host; write it as ws://host:port/path"


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        ("ws://feed.example:abc/", "'abc'"),
        ("ws://feed.example:-1/", "'-1'"),
        ("ws://feed.example:70000/", "out of range"),
        ("ws://feed.example:99999999999/", "out of range"),
    ],
)
def test_bad_port_is_rejected(url: str, detail: str) -> None:
    msg = problem(url)
    assert detail in msg
    assert "the port must be a number from 1 to 65535" in msg


@pytest.mark.parametrize("url", ["ws://feed.example:0/", "wss://[::1]:0/"])
def test_port_zero_is_rejected(url: str) -> None:
    assert problem(url) == "port 0 is not a port you can connect to"


@pytest.mark.parametrize(
    "url", ["ws://feed.example/#top", "ws://feed.example/x?a=1#frag", "ws://feed.example/#"]
)
def test_fragment_is_rejected(url: str) -> None:
    msg = problem(url)
    assert "fragments (#...) are not allowed" in msg


@pytest.mark.parametrize(
    "url",
    ["ws://feed.example/a b", " ws://feed.example/", "ws://feed.example/\t", "ws://feed .example/",
     "ws://feed.example/\n", "ws://feed.example/?q=a\u00a0b"],
)
def test_whitespace_is_rejected(url: str) -> None:
    assert problem(url) == "contains white space; percent-encode it as %20"


@pytest.mark.parametrize(
    ("value", "kind"), [(None, "NoneType"), (b"ws://feed.example/", "bytes"), (42, "int")]
)
def test_non_str_url_is_rejected(value: object, kind: str) -> None:
    assert problem(value) == f"expected a str, got {kind}"


def test_ipv4_address_in_brackets_is_rejected() -> None:
    assert "IPv4 address cannot be in brackets" in problem("ws://[10.0.0.1]/")


def test_bracketed_name_that_is_not_ipv6_is_rejected() -> None:
    assert problem("ws://[v1.fe]/") == "brackets are only for IPv6 addresses"


def test_unclosed_ipv6_bracket_is_rejected() -> None:
    assert "Invalid IPv6 URL" in problem("ws://[::1/")


@pytest.mark.parametrize("url", ["ws://[::1/", "ws://[abc]/", "ws://[10.0.0.1]/"])
def test_bracket_errors_do_not_blame_the_port(url: str) -> None:
    """The port is fine here; a hint about it would send the user the wrong way."""
    assert "port" not in problem(url)


def test_host_that_is_not_encodable_is_rejected() -> None:
    host = "\u00e4" * 64 + ".example"
    assert problem(f"ws://{host}/") == f"host {host!r} is not a valid host name"


def test_internationalised_host_name_is_accepted() -> None:
    ep = parse_url("ws://b\u00fccher.example/")
    assert ep.host == "b\u00fccher.example"


@pytest.mark.parametrize("host", ["exa<mple.com", 'fe"ed.example', "fe\\ed.example", "h\x00st"])
def test_host_with_characters_not_allowed_in_a_host_is_rejected(host: str) -> None:
    """RFC 3986 reg-name: such a host can never resolve (or even be sent in
    a Host header), so it must fail at construction, not on every attempt."""
    assert "not a valid host name" in problem(f"ws://{host}/")


def test_config_rejects_a_bad_url_at_construction() -> None:
    with pytest.raises(InvalidURL) as info:
        Config(url="http://feed.example/")
    assert info.value.url == "http://feed.example/"


# ---------------------------------------------------------------------------
# Config validation: every error names its option


def config_error(**options: object) -> str:
    with pytest.raises(ConfigError) as info:
        Config(url="ws://feed.example/", **options)  # type: ignore[arg-type]
    assert not isinstance(info.value, InvalidURL)
    return str(info.value)


@pytest.mark.parametrize(
    "name", ["connect_timeout", "handshake_timeout", "close_timeout", "stable_after"]
)
@pytest.mark.parametrize("value", [0, -1, -0.5, math.inf, math.nan])
def test_required_timeouts_must_be_finite_and_positive(name: str, value: float) -> None:
    assert config_error(**{name: value}) == (
        f"{name} must be finite and > 0, got {value!r}")  # required: no "use None"


@pytest.mark.parametrize(
    "name", ["connect_timeout", "handshake_timeout", "close_timeout", "stable_after"]
)
@pytest.mark.parametrize("value", ["10", True, None, [1]])
def test_required_timeouts_must_be_numbers(name: str, value: object) -> None:
    assert config_error(**{name: value}) == f"{name} must be a number of seconds, got {value!r}"


@pytest.mark.parametrize("name", ["ping_interval", "ping_timeout", "silence_timeout"])
def test_optional_timeouts_accept_none(name: str) -> None:
    assert getattr(Config(url="ws://h/", **{name: None}), name) is None


@pytest.mark.parametrize("name", ["ping_interval", "ping_timeout", "silence_timeout"])
@pytest.mark.parametrize("value", [0, -3, math.inf])
def test_optional_timeouts_must_be_positive_when_set(name: str, value: float) -> None:
    msg = config_error(**{name: value})
    assert msg.startswith(f"{name} must be finite and > 0")
    assert "use None to disable it" in msg


@pytest.mark.parametrize("value", [-1, -0.5, math.inf, math.nan])
def test_failure_grace_must_be_finite_and_not_negative(value: float) -> None:
    assert config_error(failure_grace=value).startswith(
        f"failure_grace must be finite and >= 0, got {value!r}")


@pytest.mark.parametrize("value", ["1", True, None])
def test_failure_grace_must_be_a_number(value: object) -> None:
    assert config_error(failure_grace=value) == (
        f"failure_grace must be a number of seconds, got {value!r}")


@pytest.mark.parametrize("value", [0, 0.0, 2, 0.25])
def test_failure_grace_may_be_zero(value: float) -> None:
    assert Config(url="ws://h/", failure_grace=value).failure_grace == value
    assert Config(url="ws://h/").failure_grace == 1.0


def test_integer_timeouts_are_accepted() -> None:
    config = Config(url="ws://h/", connect_timeout=3, close_timeout=1)
    assert (config.connect_timeout, config.close_timeout) == (3, 1)


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_max_attempts_must_be_a_positive_integer(value: object) -> None:
    assert config_error(max_attempts=value).startswith("max_attempts must be")


@pytest.mark.parametrize("value", [0, 1.0, "1024"])
def test_max_message_size_must_be_a_positive_integer(value: object) -> None:
    assert config_error(max_message_size=value).startswith("max_message_size must be")


def test_max_message_size_none_disables_the_limit() -> None:
    assert Config(url="ws://h/", max_message_size=None).max_message_size is None


# -- backoff


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"initial": 0}, "backoff.initial must be finite and > 0, got 0"),
        ({"initial": -1.0}, "backoff.initial must be finite and > 0, got -1.0"),
        ({"cap": math.inf}, "backoff.cap must be finite and > 0, got inf"),
        ({"factor": 0.5}, "backoff.factor must be >= 1, got 0.5"),
        ({"factor": "2"}, "backoff.factor must be a number of seconds, got '2'"),
        ({"initial": 5.0, "cap": 1.0}, "backoff.cap (1.0) must be >= backoff.initial (5.0)"),
        ({"jitter": 1.5}, "backoff.jitter must be between 0 and 1, got 1.5"),
        ({"jitter": -0.1}, "backoff.jitter must be finite and >= 0, got -0.1"),
    ],
)
def test_backoff_validation_names_the_option(options: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        Backoff(**options)  # type: ignore[arg-type]
    assert str(info.value).startswith(expected)


def test_backoff_without_jitter_and_factor_one_is_valid() -> None:
    b = Backoff(initial=1.0, factor=1.0, cap=1.0, jitter=0)
    assert (b.initial, b.factor, b.cap, b.jitter) == (1.0, 1.0, 1.0, 0)


def test_backoff_option_must_be_a_backoff() -> None:
    assert config_error(backoff={"initial": 1}) == (
        "backoff must be a nonstop.Backoff, got {'initial': 1}")


def test_alerts_option_must_be_an_alert_policy() -> None:
    assert config_error(alerts=None) == "alerts must be a nonstop.AlertPolicy, got None"


def test_app_ping_option_must_be_an_app_ping() -> None:
    assert config_error(app_ping="ping").startswith("app_ping must be a nonstop.AppPing")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"interval": 0}, "app_ping.interval must be finite and > 0, got 0"),
        ({"timeout": -1.0}, "app_ping.timeout must be finite and > 0, got -1.0"),
        ({"is_pong": "pong"}, "app_ping.is_pong must be callable, got 'pong'"),
        ({"message": {1}}, "app ping message must be str, bytes or JSON-serialisable"),
    ],
)
def test_app_ping_validation_names_the_option(options: dict[str, object], expected: str) -> None:
    kwargs: dict[str, object] = {"message": "ping", "is_pong": lambda m: m == "pong", **options}
    with pytest.raises(ConfigError) as info:
        AppPing(**kwargs)  # type: ignore[arg-type]
    assert str(info.value).startswith(expected)


def test_valid_nested_policies_are_accepted() -> None:
    config = Config(
        url="ws://h/",
        backoff=Backoff(jitter=0),
        alerts=AlertPolicy(down_for=None),
        app_ping=AppPing(message={"op": "ping"}, is_pong=lambda m: m == "pong"),
    )
    assert config.app_ping is not None and config.app_ping.payload == '{"op":"ping"}'


# -- subscriptions


@pytest.mark.parametrize("value", ["subscribe", b"subscribe"])
def test_single_message_instead_of_a_list_of_subscriptions(value: object) -> None:
    assert config_error(subscriptions=value) == (
        "subscriptions must be a list of messages, not a single message")


@pytest.mark.parametrize(
    "subs",
    [["a", "a"], [b"a", b"a"], [{"op": "sub", "ch": 1}, {"op": "sub", "ch": 1}],
     ["x", Subscription(message="x", name="again")]],
)
def test_duplicate_subscriptions_are_rejected(subs: list[object]) -> None:
    assert config_error(subscriptions=subs) == "subscriptions contain the same message twice"


@pytest.mark.parametrize("message", [{1, 2}, object(), math.nan, {"x": math.inf}])
def test_subscription_must_be_serialisable(message: object) -> None:
    assert config_error(subscriptions=[message]).startswith(
        "subscription message must be str, bytes or JSON-serialisable")


def test_unsubscribe_message_must_be_serialisable() -> None:
    with pytest.raises(ConfigError) as info:
        Subscription(message="sub", unsubscribe={1})
    assert str(info.value).startswith("unsubscribe message must be str, bytes or JSON-serialisable")


def test_subscription_ack_must_be_callable() -> None:
    with pytest.raises(ConfigError) as info:
        Subscription(message="sub", ack="ok")  # type: ignore[arg-type]
    assert str(info.value) == "subscription ack must be callable, got 'ok'"


@pytest.mark.parametrize("value", [0, -1, math.nan])
def test_subscription_ack_timeout_must_be_positive(value: float) -> None:
    with pytest.raises(ConfigError) as info:
        Subscription(message="sub", ack=bool, ack_timeout=value)
    assert str(info.value).startswith("subscription ack_timeout must be finite and > 0")


def test_subscriptions_are_encoded_once() -> None:
    config = Config(url="ws://h/", subscriptions=["t", b"b", {"op": "sub", "ch": ["x"]},
                                                  bytearray(b"ba")])
    assert [s.payload for s in config.subscription_list] == [
        "t", b"b", '{"op":"sub","ch":["x"]}', b"ba"]


# -- headers


@pytest.mark.parametrize(
    "name",
    ["Host", "upgrade", "Connection", "Sec-WebSocket-Key", "SEC-WEBSOCKET-VERSION",
     "Sec-WebSocket-Protocol", "sec-websocket-extensions", "Content-Length", "Transfer-Encoding"],
)
def test_reserved_header_names_are_rejected(name: str) -> None:
    assert config_error(headers={name: "x"}) == (
        f"headers: {name!r} is set by the WebSocket handshake itself")


@pytest.mark.parametrize("value", ["a\r\nX-Evil: 1", "a\nb", "a\rb", "a\x00b"])
def test_header_value_with_line_break_or_nul_is_rejected(value: str) -> None:
    assert config_error(headers={"X-Token": value}) == (
        "headers: the value of 'X-Token' contains a line break or NUL")


@pytest.mark.parametrize("name", ["", "X Token", "X:Token", "X\tT", "X\r\nY", "X-T\u00f6ken"])
def test_invalid_header_name_is_rejected(name: str) -> None:
    assert config_error(headers=[(name, "v")]).startswith(
        f"headers: {name!r} is not a valid header name"
    )


@pytest.mark.parametrize("name", ["X(Y)", "X/Y", "X@Y", "X\x7fY"])
def test_header_name_that_is_not_an_http_token_is_rejected(name: str) -> None:
    """RFC 9110 5.1: a name with separators can never be sent, so it must fail
    at construction instead of failing every attempt."""
    assert repr(name) in config_error(headers={name: "v"})


def test_header_value_that_is_not_latin1_is_rejected() -> None:
    """A value that cannot be put on the wire must fail at construction."""
    assert "X-Name" in config_error(headers={"X-Name": "\u20ac"})


def test_headers_must_be_a_mapping_or_pairs() -> None:
    assert config_error(headers="X-Token: abc") == (
        "headers must be a mapping or a list of (name, value) pairs, got 'X-Token: abc'")


@pytest.mark.parametrize("item", [("X-Token",), ("a", "b", "c"), ["X-Token", "abc"], "X-Token"])
def test_headers_list_items_must_be_pairs(item: object) -> None:
    assert config_error(headers=[item]) == f"headers: expected (name, value) pairs, got {item!r}"


@pytest.mark.parametrize("item", [("X-Count", 1), (b"X-Token", "abc"), ("X-Token", b"abc")])
def test_header_names_and_values_must_be_str(item: tuple[object, object]) -> None:
    assert config_error(headers=[item]) == (
        f"headers: header names and values must be str, got {item!r}")


def test_valid_headers_as_dict_list_and_tuple_are_accepted() -> None:
    for headers in ({"X-A": "1"}, [("X-A", "1"), ("X-A", "2")], (("X-A", "1"),)):
        assert Config(url="ws://h/", headers=headers).headers == headers


def test_header_provider_is_not_called_at_construction() -> None:
    calls: list[int] = []

    def provider() -> dict[str, str]:
        calls.append(1)
        return {"Host": "evil"}

    Config(url="ws://h/", headers=provider)
    assert calls == []


def test_user_agent_with_line_break_is_rejected() -> None:
    """The User-Agent goes into every upgrade request: CR/LF could never be sent."""
    assert "user_agent" in config_error(user_agent="nonstop\r\nX-Evil: 1")


# -- subprotocols


@pytest.mark.parametrize("proto", ["", "chat v2", "a,b", "chat\t", "ch\u00e4t", 7, None])
def test_invalid_subprotocol_is_rejected(proto: object) -> None:
    assert config_error(subprotocols=["ok", proto]) == (
        f"subprotocols: {proto!r} is not a valid subprotocol token")


def test_subprotocols_as_a_single_string_are_rejected() -> None:
    """``subprotocols="chat"`` would otherwise offer "c", "h", "a" and "t"."""
    assert "subprotocols" in config_error(subprotocols="chat")


def test_valid_subprotocols_are_accepted() -> None:
    config = Config(url="ws://h/", subprotocols=("graphql-ws", "v2.json.example"))
    assert list(config.subprotocols) == ["graphql-ws", "v2.json.example"]


def test_user_agent_must_be_text() -> None:
    assert config_error(user_agent=b"bot/1") == "user_agent must be a str or None, got b'bot/1'"
