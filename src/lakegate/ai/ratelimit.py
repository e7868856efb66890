"""A token-bucket rate limiter that refuses instead of sleeping, because the pipeline never waits on a model.

The bucket holds up to ``burst`` tokens and refills at ``per_minute / 60`` tokens per second; a request
takes one token or is refused at once with the seconds until the next token. The clock is injectable so
tests move time instead of sleeping. Thread-safe.
"""

from __future__ import annotations

import threading
import time

from lakegate.ai.breaker import Clock


class TokenBucket:
    """``per_minute`` requests a minute on average, at most ``burst`` back to back."""

    def __init__(self, per_minute: float, burst: int = 1, clock: Clock = time.monotonic) -> None:
        """Create a full bucket.

        Raises:
            ValueError: ``per_minute`` <= 0 or ``burst`` < 1.
        """
        if per_minute <= 0:
            raise ValueError(f"per_minute must be > 0, got {per_minute}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.per_minute = per_minute
        self.burst = burst
        self._rate_per_s = per_minute / 60.0
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._updated_at = clock()

    def try_acquire(self) -> bool:
        """Take a token if one is available; never blocks."""
        with self._lock:
            self._refill()
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False

    def refund(self) -> None:
        """Return a token taken for a request that was not sent."""
        with self._lock:
            self._refill()
            self._tokens = min(float(self.burst), self._tokens + 1.0)

    def available(self) -> float:
        """Tokens in the bucket now (fractional while refilling)."""
        with self._lock:
            self._refill()
            return self._tokens

    def retry_after_s(self) -> float:
        """Seconds until a token is available (0 when one is)."""
        with self._lock:
            self._refill()
            return max(0.0, (1.0 - self._tokens) / self._rate_per_s)

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._updated_at)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self._rate_per_s)
        self._updated_at = now
