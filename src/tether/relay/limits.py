"""Per-source rate limits of the relay (pure): what one address may ask for.

One-click requests are rate-limited per source address, so one host cannot flood the
vendor with cases. Unauthenticated connections are admitted by :mod:`tether.relay.gate`.
"""

from __future__ import annotations

from collections import deque


class RateLimiter:
    """At most ``count`` events per ``window`` seconds per source (sliding window)."""

    def __init__(self, count: int, window: float) -> None:
        self.count = count
        self.window = window
        self._events: dict[str, deque[float]] = {}

    def allow(self, source: str, now: float) -> bool:
        events = self._events.setdefault(source, deque())
        while events and now - events[0] >= self.window:
            events.popleft()
        if len(events) >= self.count:
            return False
        events.append(now)
        if len(self._events) > 100_000:  # forget idle sources rather than grow without bound
            for key in [k for k, v in self._events.items() if not v or now - v[-1] >= self.window]:
                del self._events[key]
        return True
