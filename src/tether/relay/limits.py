"""Per-source limits of the relay (pure): what one address may hold or ask for.

asyncssh has no MaxStartups; the relay counts unauthenticated connections globally
and per source address, and rate-limits one-click requests per source address, so
one host cannot lock others out or flood the vendor with cases.
"""

from __future__ import annotations

from collections import Counter, deque


class SourceCounter:
    """How many unauthenticated connections each source address holds."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: Counter[str] = Counter()

    def admit(self, source: str) -> bool:
        """Count one more from ``source``; False (and not counted) if over the limit."""
        if self._counts[source] >= self.limit:
            return False
        self._counts[source] += 1
        return True

    def release(self, source: str) -> None:
        self._counts[source] -= 1
        if self._counts[source] <= 0:
            del self._counts[source]

    def __len__(self) -> int:
        return len(self._counts)


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
