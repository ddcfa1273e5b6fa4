"""The relay's pre-auth gate, with an injected clock and random source."""

from __future__ import annotations

import pytest

from tether.relay.gate import Drop, Gate, GateLimits, Outcome, RefusalSummary, netblock


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gate(rng: float = 0.99, **limits: float) -> tuple[Gate[int], Clock]:
    clock = Clock()
    return Gate(GateLimits(**limits), clock, lambda: rng), clock  # type: ignore[arg-type]


def test_netblocks_group_ipv4_by_24_and_ipv6_by_64() -> None:
    assert netblock("198.51.100.7") == "198.51.100.0/24"
    assert netblock("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert netblock("::ffff:198.51.100.7") == "198.51.100.0/24"
    assert netblock("198.51.100.7", ipv4_prefix=32) == "198.51.100.7/32"
    assert netblock("?") == "?"


def test_per_address_and_per_netblock_caps() -> None:
    g, _ = gate(per_address=2, per_netblock=3)
    assert g.admit(1, "10.0.0.1").admitted
    assert g.admit(2, "10.0.0.1").admitted
    assert g.admit(3, "10.0.0.1").drop is Drop.ADDRESS
    assert g.admit(4, "10.0.0.2").admitted
    # A fresh address of the same /24 is the same source.
    assert g.admit(5, "10.0.0.3").drop is Drop.NETBLOCK
    assert g.admit(6, "10.0.1.3").admitted
    # IPv6: any address of the /64 counts against one block.
    g6, _ = gate(per_address=5, per_netblock=2)
    assert g6.admit(1, "2001:db8::1").admitted
    assert g6.admit(2, "2001:db8::2").admitted
    assert g6.admit(3, "2001:db8::ffff:3").drop is Drop.NETBLOCK
    assert g.drops[Drop.ADDRESS] == 1
    assert g.drops[Drop.NETBLOCK] == 1


def test_random_early_drop_only_hits_busy_blocks_and_rises_to_full() -> None:
    draws = [0.5]
    clock = Clock()
    g: Gate[int] = Gate(
        GateLimits(start=2, rate=0.3, full=12, per_netblock=100, penalty_noauth=0),
        clock,
        lambda: draws[0],
    )
    assert g.admit(1, "10.0.0.1").admitted
    assert g.admit(2, "10.0.0.2").admitted
    # 2 pending (= start): p = 0.3; a draw of 0.5 passes, 0.2 is dropped.
    assert g.admit(3, "10.0.0.3").admitted
    draws[0] = 0.2
    # The block's connections are young: not stalling yet, nobody dropped.
    assert g.admit(4, "10.0.0.4").admitted
    g.closed(4, Outcome.NOAUTH)
    clock.now += 2.0  # stall_after: 10.0.0.0/24 now holds stalling connections
    assert g.admit(4, "10.0.0.4").drop is Drop.EARLY
    # A block with nothing pending is never dropped at random.
    assert g.admit(5, "192.0.2.1").admitted
    # Near full the probability nears 1.
    for i in range(6, 12):
        assert g.admit(i, f"172.16.{i}.1").admitted
    assert len(g) == 10  # p = 0.3 + 0.7 * 8 / 10 = 0.86
    draws[0] = 0.85
    assert g.admit(50, "10.0.0.9").drop is Drop.EARLY
    draws[0] = 0.87
    assert g.admit(51, "10.0.0.9").admitted


def test_early_drop_spares_a_block_whose_connections_all_progress() -> None:
    """Engineers of one office log in one after the other while a flood keeps the gate
    busy: each gets through its key exchange promptly, so their block is never dropped
    at random, however often one is still pending when the next arrives."""
    g, clock = gate(rng=0.0, start=2, rate=1.0, full=100, penalty_noauth=0)
    for i in range(10):  # the flood: one stalled connection in each of 10 blocks
        assert g.admit(100 + i, f"10.{i}.0.1").admitted
    clock.now += 5.0
    for n in range(20):
        # The previous engineer is still pending (logging in), past its key exchange.
        assert g.admit(n, f"192.0.2.{n + 1}").admitted, n
        clock.now += 0.3
        g.progressed(n)
        clock.now += 0.7
        if n:
            g.authenticated(n - 1)
    assert g.drops[Drop.EARLY] == 0
    # The flood's blocks, whose connections sit in their key exchange, are dropped.
    assert g.admit(200, "10.3.0.2").drop is Drop.EARLY
    # One engineer stalls in the key exchange past stall_after: the block is stalling.
    assert g.admit(30, "192.0.2.100").admitted
    clock.now += 1.9
    assert g.admit(31, "192.0.2.101").admitted
    g.closed(31, Outcome.NOAUTH)
    clock.now += 0.1
    assert g.admit(31, "192.0.2.101").drop is Drop.EARLY
    g.progressed(30)  # it got through after all: spared again
    assert g.admit(32, "192.0.2.102").admitted


def test_withdrawn_connections_leave_without_a_penalty() -> None:
    g, _ = gate(per_address=1, penalty_noauth=20, penalty_min=15)
    assert g.admit(1, "10.0.0.1").admitted
    g.withdraw(1)
    assert len(g) == 0
    assert g.admit(2, "10.0.0.1").admitted  # neither the cap nor a penalty holds it
    g.closed(2, Outcome.NOAUTH)
    assert g.admit(3, "10.0.0.1").drop is Drop.PENALTY


def test_full_evicts_the_oldest_stalled_connection_not_a_prompt_one() -> None:
    g, clock = gate(start=3, full=3, rate=1.0)
    assert g.admit(1, "10.0.0.1").admitted  # will stall
    clock.now += 1
    assert g.admit(2, "10.1.0.1").admitted
    g.progressed(2)  # key exchange done, asked to log in
    clock.now += 1
    assert g.admit(3, "10.2.0.1").admitted  # stalls too
    decision = g.admit(4, "192.0.2.1")
    assert decision.admitted
    assert decision.evict == 1
    assert g.admit(5, "198.51.100.1").evict == 3
    assert g.admit(6, "198.51.101.2").evict == 4
    g.progressed(5)
    g.progressed(6)
    # Nobody stalled: now the newcomer is refused.
    assert g.admit(7, "203.0.113.1").drop is Drop.FULL
    assert g.evictions == 3
    assert g.drops[Drop.FULL] == 1
    assert len(g) == 3


def test_full_evicts_the_quietest_stalled_connection_not_an_older_one_still_talking() -> None:
    # An engineer mid key exchange on a busy relay (connection 1) is older than the
    # flood's silent connections that refill around it; it keeps sending, they do not.
    g, clock = gate(start=3, full=3, rate=1.0)
    assert g.admit(1, "192.0.2.1").admitted  # the engineer
    for flood in (2, 3):
        clock.now += 0.01
        assert g.admit(flood, f"10.{flood}.0.1").admitted
    victims = []
    for flood in range(4, 40):
        clock.now += 0.01
        if flood % 2 == 0:
            g.active(1)  # the engineer's next key exchange packet
        decision = g.admit(flood, f"10.{flood}.0.1")
        assert decision.admitted
        victims.append(decision.evict)
    assert 1 not in victims, "the engineer, still talking, was evicted"
    assert victims == list(range(2, 38))  # the flood's, quietest (oldest silent) first
    # Once it goes quiet for longer than the rest it is the one taken.
    g.active(39)
    g.active(38)
    assert g.admit(40, "10.40.0.1").evict == 1
    # Activity after the key exchange (or after leaving) changes nothing.
    g.progressed(38)
    g.active(38)
    assert g.admit(41, "10.41.0.1").evict == 39


def test_login_timeout_shrinks_under_pressure_and_applies_to_old_connections() -> None:
    g, clock = gate(start=2, full=4, login_timeout=30, busy_login_timeout=4, penalty_stall=0)
    assert g.login_timeout() == 30
    g.admit(1, "10.0.0.1")
    clock.now += 10
    g.admit(2, "10.1.0.1")
    assert g.login_timeout() == 30
    assert g.expired() == []
    g.admit(3, "10.2.0.1")
    assert g.login_timeout() == pytest.approx(17)
    g.admit(4, "10.3.0.1")
    assert g.login_timeout() == 4
    # Connection 1 has waited 10 s: over the busy limit now.
    assert g.expired() == [1]
    assert g.login_timeout() == pytest.approx(17)
    clock.now += 17
    assert g.expired() == [2, 3, 4]
    assert g.expirations == 4
    assert len(g) == 0


def test_a_source_that_stalls_repeatedly_is_penalised_then_forgiven() -> None:
    g, clock = gate(penalty_stall=10, penalty_min=15, penalty_max=60, login_timeout=5)
    g.admit(1, "10.0.0.1")
    clock.now += 5
    assert g.expired() == [1]  # 10 s owed: not yet enforced
    assert g.admit(2, "10.0.0.2").admitted
    clock.now += 5
    assert g.expired() == [2]  # 5 s drained + 10 = 15 owed: enforced
    assert g.admit(3, "10.0.0.99").drop is Drop.PENALTY  # the whole block
    assert g.admit(4, "10.9.0.1").admitted  # other blocks are not
    assert g.penalised == 1
    clock.now += 14.9
    assert g.admit(5, "10.0.0.1").drop is Drop.PENALTY
    clock.now += 0.2
    assert g.admit(6, "10.0.0.1").admitted  # drained: forgiven
    assert g.penalised == 0


def test_penalties_grow_capped() -> None:
    g, clock = gate(
        penalty_stall=10, penalty_min=15, penalty_max=30, login_timeout=1, busy_login_timeout=1
    )
    for i in range(20):  # 200 s of stalls, capped at 30
        g.admit(i, "10.0.0.1")
        g.closed(i, Outcome.STALLED)
    assert g.admit(99, "10.0.0.1").drop is Drop.PENALTY
    clock.now += 30.01
    assert g.admit(100, "10.0.0.1").admitted


def test_a_source_that_authenticated_is_never_penalised() -> None:
    g, clock = gate(penalty_stall=10, penalty_min=15, penalty_noauth=20)
    g.admit(1, "10.0.0.1")
    g.progressed(1)
    g.authenticated(1)
    assert len(g) == 0
    for i in range(2, 6):  # the same address fails afterwards: it is not penalised
        g.admit(i, "10.0.0.1")
        g.closed(i, Outcome.STALLED)
    assert g.admit(10, "10.0.0.1").admitted
    # Another address of its block that only fails is; the trusted one is still let in.
    g.admit(11, "10.0.0.2")
    g.closed(11, Outcome.NOAUTH)
    assert g.admit(12, "10.0.0.3").drop is Drop.PENALTY
    assert g.admit(13, "10.0.0.1").admitted
    # Trust ends.
    clock.now += 3600
    g.admit(14, "10.0.0.2")
    g.closed(14, Outcome.NOAUTH)
    assert g.admit(15, "10.0.0.1").drop is Drop.PENALTY


def test_trusted_addresses_are_evicted_last() -> None:
    g, _ = gate(start=2, full=2, rate=1.0)
    g.admit(1, "10.0.0.1")
    g.authenticated(1)
    g.admit(2, "10.0.0.1")  # trusted, stalled, oldest
    g.admit(3, "10.5.0.1")  # untrusted, stalled
    assert g.admit(4, "10.6.0.1").evict == 3


def test_closed_and_authenticated_are_idempotent_and_release_counts() -> None:
    g, _ = gate(per_address=1, penalty_noauth=0)
    g.admit(1, "10.0.0.1")
    g.closed(1, Outcome.NOAUTH)
    g.closed(1, Outcome.NOAUTH)
    g.authenticated(1)
    assert g.pending_from("10.0.0.1") == 0
    assert g.admit(2, "10.0.0.1").admitted


def test_refusal_summary_one_line_per_block_per_interval() -> None:
    clock = Clock()
    summary = RefusalSummary(10.0, clock, max_lines=2)
    for _ in range(1000):
        summary.count("10.0.0.0/24", "full")
    summary.count("10.0.0.0/24", "penalty")
    summary.count("10.1.0.0/24", "early")
    summary.count("10.2.0.0/24", "early")
    summary.count("10.3.0.0/24", "early")
    assert summary.due() == []  # not yet
    clock.now += 10
    assert summary.due() == [
        ("10.0.0.0/24", {"full": 1000, "penalty": 1}),
        ("10.1.0.0/24", {"early": 1}),
        ("2 other blocks", {"early": 2}),
    ]
    assert summary.due() == []
    clock.now += 10
    assert summary.due() == []  # nothing refused: nothing written


def test_inconsistent_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="early_drop_start"):
        GateLimits(start=500, full=400).check()
    with pytest.raises(ValueError, match="login_timeout_busy"):
        GateLimits(login_timeout=5, busy_login_timeout=10).check()
