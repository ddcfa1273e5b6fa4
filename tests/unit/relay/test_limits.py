"""Per-source rate limits of the relay."""

from __future__ import annotations

from tether.relay.limits import RateLimiter


def test_rate_limiter_sliding_window() -> None:
    limiter = RateLimiter(3, 60.0)
    assert [limiter.allow("x", t) for t in (0, 1, 2, 3)] == [True, True, True, False]
    assert limiter.allow("y", 3)  # per source
    assert not limiter.allow("x", 59.9)
    assert limiter.allow("x", 60.0)  # the first event left the window
