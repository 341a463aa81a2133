"""Progress of a long batch in the logs: rows done of total, rate, ETA and failures, at a steady cadence.

Time-based rather than every N rows, so a slow local model and a fast remote one both produce a
readable log: one line every `interval_s` seconds and a last one when the batch ends.
"""

from __future__ import annotations

import logging
import time


class Progress:
    def __init__(self, total: int, label: str, interval_s: float = 5.0,
                 logger: logging.Logger | None = None) -> None:
        self.total, self.label, self.interval_s = total, label, interval_s
        self.log = logger or logging.getLogger("promptopt.inference")
        self.done = self.failed = self.cached = 0
        self.started = self.last = time.perf_counter()

    def advance(self, failed: bool = False, cached: bool = False) -> None:
        self.done += 1
        self.failed += failed
        self.cached += cached
        now = time.perf_counter()
        if self.done == self.total or now - self.last >= self.interval_s:
            self.last = now
            self.log.info(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.perf_counter()) - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        extra = f", {self.cached} cached" if self.cached else ""
        extra += f", {self.failed} failed" if self.failed else ""
        return (f"{self.label}: {self.done}/{self.total} rows ({pct:.0f}%), {rate:.1f} rows/s, "
                f"ETA {eta:.0f}s{extra}")
