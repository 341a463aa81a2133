"""Intervals on held-out scores: right width, seeded, and none where the aggregate is not a row mean."""

from __future__ import annotations

import math

from promptopt_dagster.core.intervals import bootstrap_mean_interval


def test_interval_of_an_accuracy_matches_the_normal_approximation():
    scores = [1.0] * 870 + [0.0] * 130  # 0.87 on 1,000 rows
    interval = bootstrap_mean_interval(scores, aggregate=0.87)
    half = 1.96 * math.sqrt(0.87 * 0.13 / 1000)
    assert abs(interval.low - (0.87 - half)) < 0.006 and abs(interval.high - (0.87 + half)) < 0.006
    assert interval == bootstrap_mean_interval(scores, aggregate=0.87)  # seeded: a rerun prints the same


def test_fewer_rows_give_a_wider_interval():
    wide = bootstrap_mean_interval([1.0] * 35 + [0.0] * 5)
    narrow = bootstrap_mean_interval([1.0] * 350 + [0.0] * 50)
    assert wide.high - wide.low > 2.5 * (narrow.high - narrow.low)


def test_no_interval_when_the_aggregate_is_not_the_mean_of_the_rows():
    # macro F1 or corpus BLEU: a bootstrap of the row mean would be an interval of another number
    assert bootstrap_mean_interval([1.0, 0.0, 1.0, 1.0], aggregate=0.6) is None
    assert bootstrap_mean_interval([]) is None and bootstrap_mean_interval([float("nan"), 1.0]) is None


def test_large_splits_stay_within_bounded_memory():
    interval = bootstrap_mean_interval([float(i % 2) for i in range(50_000)], resamples=500)
    assert interval.low < 0.5 < interval.high
