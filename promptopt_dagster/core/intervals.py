"""Confidence intervals for scores on held-out rows, so a reported gain can be told from noise.

A test score of 0.95 on 500 rows and one of 0.95 on 40 rows are different claims; the report gives
the interval beside every test score. The percentile bootstrap of the per-row mean needs no
assumption about the score's distribution (0/1 accuracy, fractional rouge, judge grades alike).
It is only the interval of the aggregate when the aggregate IS the mean of the row scores: macro
F1 and corpus BLEU/chrF are not, and get no interval rather than a wrong one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import comb

import numpy as np


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    confidence: float


def bootstrap_mean_interval(
    scores: Sequence[float],
    aggregate: float | None = None,
    confidence: float = 0.95,
    resamples: int = 4000,
    seed: int = 0,
) -> Interval | None:
    """Percentile bootstrap interval of the mean row score; None when it would not describe `aggregate`.

    Seeded, so a rerun of a report prints the same interval."""
    values = np.asarray(scores, dtype=float)
    if len(values) == 0 or not np.isfinite(values).all():
        return None
    if aggregate is not None and abs(float(values.mean()) - aggregate) > 1e-9:
        return None  # the aggregate is not a mean of these rows (macro F1, corpus BLEU)
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // len(values))  # bounded memory on large test splits
    means = np.concatenate(
        [
            values[rng.integers(0, len(values), size=(min(chunk, resamples - done), len(values)))].mean(axis=1)
            for done in range(0, resamples, chunk)
        ]
    )
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(float(low), float(high), confidence)


@dataclass(frozen=True)
class PairedGain:
    """Refined minus baseline on the same rows, with a paired percentile-bootstrap interval."""

    gain: float
    low: float
    high: float
    confidence: float
    rows: int

    def holds(self, min_improvement: float = 0.0) -> bool:
        """The whole interval lies above min_improvement: the gain is not a fluke of which rows were drawn."""
        return self.low > min_improvement + 1e-12

    def text(self) -> str:
        return (
            f"gain {self.gain:+.4f} [{self.low:+.4f}, {self.high:+.4f}] "
            f"({self.confidence:.0%} paired bootstrap, {self.rows} rows)"
        )


def paired_bootstrap_gain(
    baseline: Sequence[float],
    refined: Sequence[float],
    confidence: float = 0.9,
    resamples: int = 2000,
    seed: int = 0,
    statistic: Callable[[np.ndarray], tuple[float, float]] | None = None,
) -> PairedGain:
    """Resample rows (the same rows for both prompts) and read the gain's interval off the resamples.

    Pairing is what makes a small gain detectable: most rows are answered the same by both prompts
    and cancel out. `statistic(indices) -> (baseline, refined)` recomputes a target that is not a
    mean of row scores (macro F1) on the resampled rows; without it the row scores' means are used."""
    base, ref = np.asarray(baseline, dtype=float), np.asarray(refined, dtype=float)
    if len(base) != len(ref) or len(base) == 0:
        raise ValueError(f"paired test needs the same non-zero number of rows ({len(base)} vs {len(ref)})")
    if statistic is not None:

        def difference(ix: np.ndarray) -> float:
            b, r = statistic(ix)
            return r - b

        interval = bootstrap_interval(len(base), difference, confidence, resamples, seed)
        return PairedGain(float(difference(np.arange(len(base)))), interval.low, interval.high, confidence, len(base))
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, len(base), size=(resamples, len(base)))
    diffs = ref - base
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(diffs[indices].mean(axis=1), [tail, 1.0 - tail])
    return PairedGain(float(diffs.mean()), float(low), float(high), confidence, len(base))


def bootstrap_interval(
    rows: int, statistic: Callable[[np.ndarray], float], confidence: float = 0.95, resamples: int = 1000, seed: int = 0
) -> Interval:
    """Percentile interval of `statistic(indices)` over rows resampled with replacement.

    For a target that is not a mean of row scores (macro F1, corpus BLEU), which
    bootstrap_mean_interval cannot describe: the statistic recomputes it on each resample."""
    rng = np.random.default_rng(seed)
    values = [statistic(ix) for ix in rng.integers(0, rows, size=(resamples, rows))]
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return Interval(float(low), float(high), confidence)


def sign_test(worse: Sequence[float], better: Sequence[float]) -> float:
    """The one-sided p-value of the sign test that `better` wins the rows the two score differently no more
    often than `worse` does: the chance of at least its wins in a fair coin's tosses, one per such row.

    For a verdict on a few dozen rows: a bootstrap's percentile interval is too narrow when only a handful
    of rows differ (8 of 9 such rows won in 60 already looks sure to it at 0.99); the exact test is not.
    Three lines of binomial tail, not scipy.stats.binomtest: scipy is not a dependency of the main install."""
    if len(worse) != len(better):
        raise ValueError(f"paired test needs the same number of rows ({len(worse)} vs {len(better)})")
    wins = sum(b > w for w, b in zip(worse, better))
    differing = wins + sum(w > b for w, b in zip(worse, better))
    return sum(comb(differing, k) for k in range(wins, differing + 1)) / 2**differing
