"""Per-source limits of the relay."""

from __future__ import annotations

from tether.relay.limits import RateLimiter, SourceCounter


def test_source_counter_caps_each_address_separately() -> None:
    counter = SourceCounter(2)
    assert counter.admit("198.51.100.1")
    assert counter.admit("198.51.100.1")
    assert not counter.admit("198.51.100.1")  # the third from one address
    assert counter.admit("203.0.113.9")  # others are not locked out
    counter.release("198.51.100.1")
    assert counter.admit("198.51.100.1")


def test_released_addresses_are_forgotten() -> None:
    counter = SourceCounter(1)
    assert counter.admit("a")
    counter.release("a")
    assert len(counter) == 0


def test_rate_limiter_sliding_window() -> None:
    limiter = RateLimiter(3, 60.0)
    assert [limiter.allow("x", t) for t in (0, 1, 2, 3)] == [True, True, True, False]
    assert limiter.allow("y", 3)  # per source
    assert not limiter.allow("x", 59.9)
    assert limiter.allow("x", 60.0)  # the first event left the window
