"""Per-API-key token bucket: ``rate`` requests a minute, bursts up to the same number."""

from __future__ import annotations

import time


class RateLimiter:
    def __init__(self, per_minute: int, clock: object = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self.clock = clock
        self.buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last time)

    def take(self, key: str) -> float:
        """0 when the request may go; else the seconds until it may."""
        if self.capacity <= 0:
            return 0.0
        now = self.clock()  # type: ignore[operator]
        tokens, last = self.buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self.buckets[key] = (tokens - 1, now)
            return 0.0
        self.buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate
