"""The agent's reconnect backoff and the words its status shows.

SPEC (Scale): "A relay restart sends agents back with jittered backoff so that 10,000
machines do not reconnect in the same second."
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from tether.agent.status import TunnelState, TunnelStatus
from tether.agent.tunnel import backoff_delay

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
RELAY = "relay.example.com:2222"


@pytest.mark.parametrize("attempt", [0, 1, 2, 3, 4, 5, 6, 7, 10, 31, 32, 33, 64, 1000])
def test_full_jitter_stays_within_zero_and_the_exponential_ceiling(attempt: int) -> None:
    rng = random.Random(attempt)
    ceiling = min(60.0, 1.0 * 2.0 ** min(attempt, 64))

    delays = [backoff_delay(attempt, initial=1.0, cap=60.0, rng=rng) for _ in range(500)]

    assert all(0.0 <= d <= ceiling for d in delays)
    # Full jitter uses the whole range, not just its top.
    assert min(delays) < 0.1 * ceiling
    assert max(delays) > 0.9 * ceiling


def test_the_delay_reaches_the_cap_and_never_exceeds_it() -> None:
    rng = random.Random(7)

    late = [backoff_delay(a, initial=1.0, cap=60.0, rng=rng) for a in range(6, 1006)]

    assert max(late) <= 60.0
    assert max(late) > 57.0


def test_attempt_1000_does_not_overflow() -> None:
    delay = backoff_delay(1000, initial=0.5, cap=60.0, rng=random.Random(1))

    assert 0.0 <= delay <= 60.0


def test_early_attempts_are_short() -> None:
    rng = random.Random(3)

    assert all(backoff_delay(0, initial=1.0, cap=60.0, rng=rng) <= 1.0 for _ in range(100))
    assert all(backoff_delay(2, initial=1.0, cap=60.0, rng=rng) <= 4.0 for _ in range(100))


def test_ten_thousand_agents_do_not_reconnect_in_the_same_second() -> None:
    rng = random.Random(42)

    delays = [backoff_delay(6, initial=1.0, cap=60.0, rng=rng) for _ in range(10_000)]

    per_second = [0] * 61
    for d in delays:
        per_second[int(d)] += 1
    assert len(set(delays)) == len(delays)
    assert max(per_second) < 400  # ~167 expected per second when spread over 60 s


def test_the_rng_decides_the_delay() -> None:
    a = [backoff_delay(5, initial=1.0, cap=60.0, rng=random.Random(1)) for _ in range(3)]
    b = [backoff_delay(5, initial=1.0, cap=60.0, rng=random.Random(2)) for _ in range(3)]

    assert a[0] == a[1] == a[2]  # same seed, same delay: reproducible in tests
    assert a[0] != b[0]


# --- status words -------------------------------------------------------------------


def test_connected_says_since_when() -> None:
    status = TunnelStatus(TunnelState.CONNECTED, RELAY, NOW, ports=(22, 443))

    assert status.describe(NOW + timedelta(hours=1)) == (
        "connected to relay relay.example.com:2222 since 2030-06-01 12:00:00 UTC"
    )


def test_reconnecting_says_in_how_long_and_why() -> None:
    status = TunnelStatus(
        TunnelState.RECONNECTING,
        RELAY,
        NOW,
        NOW + timedelta(seconds=37),
        "relay refused the connection",
    )

    assert status.describe(NOW) == "reconnecting in 37s (relay refused the connection)"
    assert status.describe(NOW + timedelta(seconds=30)) == (
        "reconnecting in 7s (relay refused the connection)"
    )


def test_reconnecting_after_the_retry_time_passed_says_zero() -> None:
    status = TunnelStatus(
        TunnelState.RECONNECTING, RELAY, NOW, NOW, "timed out connecting to the relay"
    )

    assert status.describe(NOW + timedelta(seconds=5)) == (
        "reconnecting in 0s (timed out connecting to the relay)"
    )


def test_reconnecting_without_a_retry_time() -> None:
    status = TunnelStatus(TunnelState.RECONNECTING, RELAY, NOW, None, "connection closed")

    assert status.describe(NOW) == "reconnecting in a moment (connection closed)"


def test_refused_names_the_relay_and_its_message() -> None:
    status = TunnelStatus(
        TunnelState.REFUSED, RELAY, NOW, reason="this key was revoked by the vendor"
    )

    assert status.describe(NOW) == (
        "refused by relay relay.example.com:2222: this key was revoked by the vendor"
    )


def test_connecting_and_stopped() -> None:
    assert TunnelStatus(TunnelState.CONNECTING, RELAY, NOW).describe(NOW) == (
        "connecting to relay relay.example.com:2222"
    )
    assert TunnelStatus(TunnelState.STOPPED, RELAY, NOW).describe(NOW) == "not connected"


def test_status_json() -> None:
    status = TunnelStatus(
        TunnelState.RECONNECTING, RELAY, NOW, NOW + timedelta(seconds=5), "why", (22, 443)
    )

    assert status.to_json() == {
        "state": "reconnecting",
        "relay": RELAY,
        "since": "2030-06-01T12:00:00+00:00",
        "retry_at": "2030-06-01T12:00:05+00:00",
        "reason": "why",
        "ports": [22, 443],
        "transport": None,
    }


@pytest.mark.parametrize(
    "status",
    [
        TunnelStatus(TunnelState.CONNECTED, RELAY, NOW, ports=(22, 443)),
        TunnelStatus(
            TunnelState.CONNECTED, RELAY, NOW, ports=(22,), transport="tls-proxy via p:3128"
        ),
        TunnelStatus(TunnelState.RECONNECTING, RELAY, NOW, NOW + timedelta(seconds=5), "why"),
        TunnelStatus(TunnelState.REFUSED, RELAY, NOW, reason="revoked"),
        TunnelStatus(TunnelState.STOPPED, RELAY, NOW),
    ],
    ids=lambda s: s.state.value,
)
def test_status_survives_json(status: TunnelStatus) -> None:
    """The CLI reads the daemon's status as JSON and must show the same words."""
    again = TunnelStatus.from_json(status.to_json())

    assert again == status
    assert again.describe(NOW) == status.describe(NOW)


def test_a_relays_window_widens_the_backoff_but_never_narrows_it() -> None:
    """A relay's "come back within W s" spreads the return; it never replaces backoff."""
    rng = random.Random(7)
    # A relay with one tether asks for a return within 3 ms: the backoff still applies.
    tiny = [backoff_delay(3, initial=1.0, cap=60.0, rng=rng, window=0.003) for _ in range(2000)]
    assert max(tiny) > 4.0  # drawn from the 8 s backoff ceiling, not from 3 ms
    # A busy relay's 120 s window spreads agents over all of it, also on early attempts.
    wide = [backoff_delay(0, initial=1.0, cap=60.0, rng=rng, window=120.0) for _ in range(2000)]
    assert max(wide) > 100.0
    assert all(0.0 <= d <= 120.0 for d in wide)
