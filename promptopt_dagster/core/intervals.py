"""Confidence intervals for scores on held-out rows, so a reported gain can be told from noise.

A test score of 0.95 on 500 rows and one of 0.95 on 40 rows are different claims; the report gives
the interval beside every test score. The percentile bootstrap of the per-row mean needs no
assumption about the score's distribution (0/1 accuracy, fractional rouge, judge grades alike).
It is only the interval of the aggregate when the aggregate IS the mean of the row scores: macro
F1 and corpus BLEU/chrF are not, and get no interval rather than a wrong one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    confidence: float


def bootstrap_mean_interval(scores: Sequence[float], aggregate: float | None = None, confidence: float = 0.95,
                            resamples: int = 4000, seed: int = 0) -> Interval | None:
    """Percentile bootstrap interval of the mean row score; None when it would not describe `aggregate`.

    Seeded, so a rerun of a report prints the same interval."""
    values = np.asarray(scores, dtype=float)
    if len(values) == 0 or not np.isfinite(values).all():
        return None
    if aggregate is not None and abs(float(values.mean()) - aggregate) > 1e-9:
        return None  # the aggregate is not a mean of these rows (macro F1, corpus BLEU)
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // len(values))  # bounded memory on large test splits
    means = np.concatenate([values[rng.integers(0, len(values), size=(min(chunk, resamples - done), len(values)))]
                            .mean(axis=1) for done in range(0, resamples, chunk)])
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(float(low), float(high), confidence)
