"""Why the rouge module finds the LCS itself: rouge_score's own rougeL on long texts, against the module.

rouge_score's LCS is a pure-Python table over every token pair; the module keeps rouge_score's
tokenizer and F-measure but a faster LCS, and the tests hold both to the same numbers.

    .venv/bin/python bench/rouge_long.py [--pairs 3] [--words 2000]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rouge_score import rouge_scorer  # noqa: E402

from promptopt_dagster.scoring.registry import load_metric  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--words", type=int, default=2000)
    args = parser.parse_args()
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(500)]
    preds = [" ".join(rng.choices(vocab, k=args.words)) for _ in range(args.pairs)]
    refs = [" ".join(rng.choices(vocab, k=args.words)) for _ in range(args.pairs)]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    start = time.perf_counter()
    ref_scores = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs)]
    library = (time.perf_counter() - start) / args.pairs
    module = load_metric("rouge")
    start = time.perf_counter()
    ours = module._compute(preds, refs, rouge_type="rougeL")["scores"]
    own = (time.perf_counter() - start) / args.pairs
    same = all(abs(a - b) <= 1e-9 for a, b in zip(ours, ref_scores))
    print(
        f"{args.pairs} pairs of {args.words} words: rouge_score {library:.2f} s/pair, module {own:.3f} s/pair "
        f"(all rouge1/2/L); rougeL equal to 1e-9: {same}"
    )


if __name__ == "__main__":
    main()
