"""Circuit breaker and token bucket, driven by an injected clock (no sleeping)."""

from __future__ import annotations

import threading
import time

import pytest

from lakegate.ai.breaker import CircuitBreaker
from lakegate.ai.ratelimit import TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_breaker_opens_after_n_consecutive_failures_only() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=10, clock=clock)
    assert breaker.state == "closed"
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # resets the streak
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    assert not breaker.allow()
    status = breaker.status()
    assert status.consecutive_failures == 3 and status.times_opened == 1
    assert status.retry_in_s == pytest.approx(10)


def test_breaker_half_open_allows_one_probe_after_cooldown_and_closes_on_success() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=10, clock=clock)
    breaker.record_failure()
    clock.advance(9.9)
    assert breaker.state == "open" and not breaker.allow()
    assert breaker.status().retry_in_s == pytest.approx(0.1)
    clock.advance(0.1)
    assert breaker.state == "half_open"
    assert breaker.allow()
    assert not breaker.allow(), "only one probe at a time"
    breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.allow() and breaker.allow()
    assert breaker.status().opened_for_s is None


def test_failed_probe_reopens_for_a_full_cooldown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=5, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.advance(5)
    assert breaker.allow()
    breaker.record_failure()  # one failed probe is enough, whatever the threshold
    assert breaker.state == "open"
    assert breaker.status().times_opened == 2
    clock.advance(4.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()


def test_released_probe_can_be_taken_again() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=1, clock=clock)
    breaker.record_failure()
    clock.advance(1)
    assert breaker.allow()
    breaker.release()
    assert breaker.allow()


@pytest.mark.parametrize(("threshold", "cooldown"), [(0, 1.0), (1, -1.0)])
def test_breaker_rejects_bad_settings(threshold: int, cooldown: float) -> None:
    with pytest.raises(ValueError, match="failure_threshold|cooldown_s"):
        CircuitBreaker(threshold, cooldown)


def test_bucket_refuses_at_once_and_refills_with_the_clock() -> None:
    clock = FakeClock()
    bucket = TokenBucket(per_minute=30, burst=2, clock=clock)  # one token every 2 s
    started = time.monotonic()
    assert bucket.try_acquire() and bucket.try_acquire()
    assert not bucket.try_acquire()
    assert time.monotonic() - started < 0.05, "a refusal must not sleep"
    assert bucket.retry_after_s() == pytest.approx(2.0)
    clock.advance(1.0)
    assert not bucket.try_acquire()
    assert bucket.retry_after_s() == pytest.approx(1.0)
    clock.advance(1.0)
    assert bucket.try_acquire()
    clock.advance(3600)
    assert bucket.available() == pytest.approx(2.0), "never more than the burst"


def test_bucket_refund_returns_a_token_up_to_the_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(per_minute=1, burst=1, clock=clock)
    assert bucket.try_acquire()
    bucket.refund()
    assert bucket.try_acquire()
    bucket.refund()
    bucket.refund()
    assert bucket.available() == pytest.approx(1.0)


def test_bucket_grants_exactly_the_burst_to_concurrent_callers() -> None:
    clock = FakeClock()  # frozen: no refill during the race
    bucket = TokenBucket(per_minute=60, burst=50, clock=clock)
    granted: list[bool] = []
    lock = threading.Lock()

    def hammer() -> None:
        for _ in range(40):
            ok = bucket.try_acquire()
            with lock:
                granted.append(ok)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 50 and len(granted) == 160


@pytest.mark.parametrize(("per_minute", "burst"), [(0, 1), (10, 0)])
def test_bucket_rejects_bad_settings(per_minute: float, burst: int) -> None:
    with pytest.raises(ValueError, match="per_minute|burst"):
        TokenBucket(per_minute, burst)
