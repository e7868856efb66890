"""A circuit breaker for a remote model: stop asking a failing endpoint, probe it again after a cool-down.

The pipeline never waits on a model, so a broken endpoint must cost nothing: after ``failure_threshold``
consecutive failures the breaker *opens* and every call is refused at once (the caller falls back to
synthesis and the last-known-good contract). After ``cooldown_s`` it lets one *probe* through
(*half-open*); the probe's success closes it, its failure opens it for another cool-down.

The clock is injectable so tests move time instead of sleeping. Thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Clock = Callable[[], float]
"""Monotonic seconds; ``time.monotonic`` outside tests."""

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class BreakerStatus:
    """What metrics and the CLI show about a breaker."""

    state: BreakerState
    consecutive_failures: int
    failure_threshold: int
    opened_for_s: float | None
    """Seconds since the breaker last opened, ``None`` while closed."""
    retry_in_s: float | None
    """Seconds until the next probe is allowed, ``None`` unless open."""
    times_opened: int
    total_failures: int
    total_successes: int


class CircuitBreaker:
    """Closed → open after N consecutive failures → half-open after a cool-down → closed on success."""

    def __init__(self, failure_threshold: int = 3, cooldown_s: float = 30.0, clock: Clock = time.monotonic) -> None:
        """Create a closed breaker.

        Raises:
            ValueError: ``failure_threshold`` < 1 or ``cooldown_s`` < 0.
        """
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if cooldown_s < 0:
            raise ValueError(f"cooldown_s must be >= 0, got {cooldown_s}")
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state: BreakerState = "closed"
        self._consecutive_failures = 0
        self._opened_at: float | None = None
        self._probe_in_flight = False
        self._times_opened = 0
        self._total_failures = 0
        self._total_successes = 0

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose cool-down has passed reads as half-open."""
        with self._lock:
            self._advance()
            return self._state

    def allow(self) -> bool:
        """Whether a request may go out now; in half-open, only one probe at a time is allowed.

        A caller that got ``True`` must end with :meth:`record_success`, :meth:`record_failure` or
        :meth:`release` (the request was not sent after all).
        """
        with self._lock:
            self._advance()
            if self._state == "closed":
                return True
            if self._state == "half_open" and not self._probe_in_flight:
                self._probe_in_flight = True
                return True
            return False

    def release(self) -> None:
        """Give back a permission that was not used (e.g. the rate limiter refused the request)."""
        with self._lock:
            self._probe_in_flight = False

    def record_success(self) -> None:
        """A request succeeded: reset the failure count and close."""
        with self._lock:
            self._total_successes += 1
            self._consecutive_failures = 0
            self._probe_in_flight = False
            self._state = "closed"
            self._opened_at = None

    def record_failure(self) -> None:
        """A request failed (timeout, 5xx, unusable answer): open on the N-th in a row or on a failed probe."""
        with self._lock:
            self._advance()
            self._total_failures += 1
            self._consecutive_failures += 1
            failed_probe = self._state == "half_open"
            self._probe_in_flight = False
            if failed_probe or (self._state == "closed" and self._consecutive_failures >= self.failure_threshold):
                self._open()

    def status(self) -> BreakerStatus:
        """A consistent snapshot for metrics and the CLI."""
        with self._lock:
            self._advance()
            now = self._clock()
            opened_for = None if self._opened_at is None else now - self._opened_at
            retry_in = None
            if self._state == "open" and self._opened_at is not None:
                retry_in = max(0.0, self._opened_at + self.cooldown_s - now)
            return BreakerStatus(
                state=self._state,
                consecutive_failures=self._consecutive_failures,
                failure_threshold=self.failure_threshold,
                opened_for_s=opened_for,
                retry_in_s=retry_in,
                times_opened=self._times_opened,
                total_failures=self._total_failures,
                total_successes=self._total_successes,
            )

    def _open(self) -> None:
        self._state = "open"
        self._opened_at = self._clock()
        self._times_opened += 1

    def _advance(self) -> None:
        """Move open → half-open once the cool-down has passed (caller holds the lock)."""
        if self._state == "open" and self._opened_at is not None:
            if self._clock() - self._opened_at >= self.cooldown_s:
                self._state = "half_open"
                self._probe_in_flight = False
