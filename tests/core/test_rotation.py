"""Rotation before a connection's lifetime: when to open the replacement.

With ``max_lifetime`` set, the core asks for a replacement (a ``Rotating``
event, ``[ROTATING]``) ``rotation_lead`` seconds before an open connection
reaches it: time for the replacement's connect, upgrade and slowest ACK.
A server that closes with 1001 ("going away") at a younger age teaches a
shorter lifetime; another connection's lesson can be handed over
(``limit_lifetime``).  Fake clock.
"""

from __future__ import annotations

import pytest

from nonstop.core import Config, ConfigError, Rotating, Subscription, format_event
from tests.helpers import Pair

QUICK = dict(connect_timeout=1.0, handshake_timeout=1.0, ping_interval=None,
             silence_timeout=None, stable_after=1.0)


def test_the_lead_is_a_connect_an_upgrade_and_the_slowest_ack() -> None:
    subs = [Subscription(message="a", ack=lambda m: m == "ok", ack_timeout=3.0),
            Subscription(message="b")]
    config = Config(url="ws://x.test/", subscriptions=subs, max_lifetime=60.0, **QUICK)
    assert config.rotation_lead == 1.0 + 1.0 + 3.0
    assert Config(url="ws://x.test/", **QUICK).rotation_lead == 2.0


@pytest.mark.parametrize("lifetime", [2.0, 1.0, 0, -5])
def test_a_lifetime_no_replacement_can_make_is_refused(lifetime: float) -> None:
    with pytest.raises(ConfigError, match="max_lifetime"):
        Config(url="ws://x.test/", max_lifetime=lifetime, **QUICK)


def test_rotating_comes_the_lead_before_the_lifetime_once_per_connection() -> None:
    pair = Pair(max_lifetime=10.0, **QUICK)
    pair.connect()
    opened = pair.now
    pair.advance(7.9)
    assert pair.of(Rotating) == []
    pair.advance(0.2)
    assert pair.of(Rotating) == [Rotating(connection=1, age=8.0, lifetime=10.0)]
    assert pair.core.lifetime == 10.0
    pair.advance(5.0)
    assert len(pair.of(Rotating)) == 1  # once: the replacement is the driver's to make
    assert opened + 8.0 == pytest.approx(pair.now - 5.1)
    line = format_event(pair.of(Rotating)[0], "book")
    assert line is not None and line[1].startswith("[ROTATING] feed=book connection=1")


def test_without_max_lifetime_nothing_rotates() -> None:
    pair = Pair(**QUICK)
    pair.connect()
    pair.advance(100_000.0)
    assert pair.of(Rotating) == [] and pair.core.lifetime is None
    pair.core.limit_lifetime(5.0)
    assert pair.core.lifetime is None


def test_a_servers_close_1001_at_a_younger_age_teaches_the_lifetime() -> None:
    pair = Pair(max_lifetime=100.0, **QUICK)
    pair.connect()
    pair.advance(6.0)
    pair.server_close(1001, "going away")
    assert pair.core.lifetime == 6.0
    pair.fire_next()  # the retry at once (a stable connection)
    pair.open()
    pair.accept()
    pair.advance(3.9)
    assert pair.of(Rotating) == []
    pair.advance(0.2)
    assert pair.of(Rotating) == [Rotating(connection=2, age=4.0, lifetime=6.0)]


@pytest.mark.parametrize(("code", "age"), [(1000, 6.0), (1011, 6.0), (1001, 1.5)])
def test_other_closes_and_early_1001s_teach_nothing(code: int, age: float) -> None:
    pair = Pair(max_lifetime=100.0, **QUICK)
    pair.connect()
    pair.advance(age)
    pair.server_close(code)
    assert pair.core.lifetime == 100.0


def test_a_lifetime_learned_elsewhere_moves_the_open_connections_rotation() -> None:
    pair = Pair(max_lifetime=100.0, **QUICK)
    pair.connect()
    pair.advance(5.0)
    pair.core.limit_lifetime(200.0)  # longer: nothing
    pair.core.limit_lifetime(1.0)  # shorter than the lead: nothing
    assert pair.core.lifetime == 100.0
    pair.core.limit_lifetime(8.0)
    assert pair.core.lifetime == 8.0
    pair.advance(0.9)
    assert pair.of(Rotating) == []
    pair.advance(0.2)
    assert [e.age for e in pair.of(Rotating)] == [pytest.approx(6.0)]


def test_a_lifetime_learned_while_not_connected_applies_to_the_next_connection() -> None:
    pair = Pair(max_lifetime=100.0, **QUICK)
    pair.start()
    pair.core.limit_lifetime(10.0)
    pair.open()
    pair.accept()
    pair.advance(8.1)
    assert [e.lifetime for e in pair.of(Rotating)] == [10.0]
