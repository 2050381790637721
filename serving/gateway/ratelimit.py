"""Per-API-key token bucket: ``per_minute`` units a minute (requests, or generated and prompt tokens),
bursts up to the same number."""

from __future__ import annotations

import time


class RateLimiter:
    def __init__(self, per_minute: int, clock: object = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self.clock = clock
        self.buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last time)

    def take(self, key: str, cost: float = 1.0) -> float:
        """0 when a request costing ``cost`` may go (and its cost is taken); else the seconds until it may."""
        if self.capacity <= 0:
            return 0.0
        now = self.clock()  # type: ignore[operator]
        tokens, last = self.buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens >= cost:
            self.buckets[key] = (tokens - cost, now)
            return 0.0
        self.buckets[key] = (tokens, now)
        return (cost - tokens) / self.rate
