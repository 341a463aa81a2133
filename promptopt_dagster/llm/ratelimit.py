"""Requests-per-minute and tokens-per-minute limits shared by everything one process sends to one model.

Providers enforce both limits per model and project, so the limiter is looked up by the model's
identity: the task model and a judge on the same Gemini model share one budget. Buckets refill
continuously and hold at most one second of allowance, which spreads requests out instead of
sending a minute's worth at once and meeting a wall of 429s.
"""

from __future__ import annotations

import asyncio
import threading
import time


class _Bucket:
    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.stamp = time.monotonic()

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until `amount` fits; an amount above capacity waits until the bucket is full."""
        self._refill(now)
        need = min(amount, self.capacity) - self.level
        return max(0.0, need / self.rate)

    def take(self, amount: float) -> None:
        self.level -= amount  # may go negative: a large request borrows from the next seconds


class RateLimiter:
    def __init__(self, rpm: float | None = None, tpm: float | None = None) -> None:
        self._requests = _Bucket(rpm) if rpm else None
        self._tokens = _Bucket(tpm) if tpm else None
        self._lock = threading.Lock()
        self._paused_until = 0.0

    async def acquire(self, tokens: int) -> None:
        """Wait until one request of about `tokens` tokens may be sent, then take it from the buckets."""
        while True:
            with self._lock:
                now = time.monotonic()
                wait = max(
                    self._paused_until - now,
                    self._requests.wait_for(1, now) if self._requests else 0.0,
                    self._tokens.wait_for(tokens, now) if self._tokens else 0.0,
                )
                if wait <= 0:
                    if self._requests:
                        self._requests.take(1)
                    if self._tokens:
                        self._tokens.take(tokens)
                    return
            await asyncio.sleep(min(wait, 1.0))

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the token bucket once the reply says how many tokens the request really used."""
        if self._tokens and actual:
            with self._lock:
                self._tokens.take(actual - estimated)

    def pause(self, seconds: float) -> None:
        """The server said slow down (429 with Retry-After): nobody sends to this model until then."""
        with self._lock:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)


_LIMITERS: dict[tuple, RateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def shared_limiter(key: tuple, rpm: float | None, tpm: float | None) -> RateLimiter:
    """The one limiter of this process for `key` (backend, endpoint, model, limits)."""
    with _LIMITERS_LOCK:
        return _LIMITERS.setdefault((*key, rpm, tpm), RateLimiter(rpm, tpm))
