"""Progress of a long batch: a bar on a terminal, a steady line in logs.

In logs (Dagster's run logs, CI, a file) a line every `interval_s` seconds and a last one when the
batch ends, time-based rather than every N rows, so a slow local model and a fast remote one both
produce a readable log. On a terminal the CLI turns on a tqdm bar per batch (rate and ETA) and
stops printing the lines; they still reach the logger, so Dagster keeps them with the run.
"""

from __future__ import annotations

import logging
import sys
import time

#: Set on the log records of progress lines, so a terminal handler can drop them while a bar shows.
PROGRESS_ATTR = "promptopt_progress"
_bars = False


def show_bars(enabled: bool = True) -> None:
    """Draw a bar per batch on stderr (the CLI does this when stderr is a terminal)."""
    global _bars
    _bars = enabled


def bars_shown() -> bool:
    return _bars


class Progress:
    def __init__(self, total: int, label: str, interval_s: float = 5.0, logger: logging.Logger | None = None) -> None:
        self.total, self.label, self.interval_s = total, label, interval_s
        self.log = logger or logging.getLogger("promptopt.inference")
        self.done = self.failed = self.cached = 0
        self.started = self.last = time.perf_counter()
        self.bar = None
        if _bars and total:
            from tqdm import tqdm  # start-up: ~4 ms, paid only where bars are shown (a terminal), not by --help

            self.bar = tqdm(total=total, desc=label, unit="row", file=sys.stderr, leave=False, dynamic_ncols=True)

    def advance(self, failed: bool = False, cached: bool = False) -> None:
        self.done += 1
        self.failed += failed
        self.cached += cached
        if self.bar is not None:
            self.bar.update(1)
            if failed or cached:
                self.bar.set_postfix(cached=self.cached, failed=self.failed, refresh=False)
            if self.done >= self.total:
                self.bar.close()
        now = time.perf_counter()
        if self.done == self.total or now - self.last >= self.interval_s:
            self.last = now
            self.log.info(self.line(now), extra={PROGRESS_ATTR: True})

    def close(self) -> None:
        """Remove an unfinished bar (the batch was interrupted)."""
        if self.bar is not None:
            self.bar.close()

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.perf_counter()) - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        extra = f", {self.cached} cached" if self.cached else ""
        extra += f", {self.failed} failed" if self.failed else ""
        return f"{self.label}: {self.done}/{self.total} rows ({pct:.0f}%), {rate:.1f} rows/s, ETA {eta:.0f}s{extra}"
