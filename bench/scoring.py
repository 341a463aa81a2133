"""Scoring speed: 1,000,000 prediction/reference pairs with exact_match and accuracy (target: < 3 s, 2 cores).

The corpus looks like a classifier's answers: most are a label in some casing and punctuation,
some run on past the label, some name no label, and 5% are free text that is unique per row (a
model rambling). A second pass makes every prediction distinct, the worst case for the metric
modules, which normalise each distinct text once. Scoring goes through the platform's path
(ScorerRegistry -> the module's `_compute`); `--with-evaluate-compute` also times evaluate's public
`compute()`, which stages the inputs in Arrow first.

    .venv/bin/python bench/scoring.py [--rows 1000000] [--with-evaluate-compute]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from promptopt_dagster.scoring.registry import ScorerRegistry, load_metric  # noqa: E402

LABELS = ["positive", "negative"]
ANSWERS = [
    "positive",
    "negative",
    " positive",
    " negative",
    "Positive.",
    "Negative.",
    "POSITIVE",
    "negative!",
    "positive\nThe review praises the film.",
    "Negative - the plot drags.",
    "neutral",
    "",
    "maybe",
    "I think it is positive",
    "positive sentiment",
    "Sentiment: negative",
]


def corpus(rows: int, seed: int, unique_share: float) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    refs = [rng.choice(LABELS) for _ in range(rows)]
    preds = [
        f"{rng.choice(LABELS)} because of line {i} {rng.random():.6f}"
        if rng.random() < unique_share
        else rng.choice(ANSWERS)
        for i in range(rows)
    ]
    return preds, refs


def timed(label: str, func) -> float:
    start = time.perf_counter()
    result = func()
    elapsed = time.perf_counter() - start
    print(f"  {label:<44} {elapsed:6.2f} s   value {result.value if hasattr(result, 'value') else result:.4f}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--with-evaluate-compute", action="store_true")
    args = parser.parse_args()
    print(f"scoring bench: {args.rows:,} pairs, {os.cpu_count()} CPU(s)")

    start = time.perf_counter()
    registry = ScorerRegistry(use_entry_points=False)
    exact, accuracy = registry.load("exact_match"), registry.load("accuracy")
    print(f"  load both modules (import evaluate, evaluate.load x2)    {time.perf_counter() - start:6.2f} s")

    for name, share in (("realistic (5% unique free text)", 0.05), ("worst case (every prediction distinct)", 1.0)):
        preds, refs = corpus(args.rows, seed=0, unique_share=share)
        print(f"{name}:")
        total = timed("exact_match", lambda: exact(preds, refs))
        total += timed("accuracy", lambda: accuracy(preds, refs, labels=LABELS))
        verdict = "meets" if total < 3.0 else "MISSES"
        print(f"  {'exact_match + accuracy':<44} {total:6.2f} s   ({verdict} the 3 s target)")
        if args.with_evaluate_compute:
            timed(
                "exact_match via evaluate compute()",
                lambda: load_metric("exact_match").compute(predictions=preds, references=refs)["exact_match"],
            )
            timed(
                "accuracy via evaluate compute()",
                lambda: load_metric("accuracy").compute(predictions=preds, references=refs, labels=LABELS)["accuracy"],
            )


if __name__ == "__main__":
    main()
