"""Can the embedded Gemma 3 270M judge? sst2 dev rows judged once with the right label, once with the wrong one.

A judge worth using scores right answers above wrong ones. This prints the mean normalised score of
each group, how many replies could not be read, and the time per row, so the advice in docs/datasets-and-scoring.md (use a
capable remote judge) rests on a run anyone can repeat.

    .venv/bin/python bench/judge_local.py [--rows 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from promptopt_dagster.app.settings import get_settings  # noqa: E402
from promptopt_dagster.llm.factory import build_client  # noqa: E402
from promptopt_dagster.llm.model_settings import ModelSettings  # noqa: E402
from promptopt_dagster.scoring.judge import LLMJudge  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10)
    args = parser.parse_args()
    rows = pd.read_csv(ROOT / "data" / "sst2" / "dev.csv", dtype=str, keep_default_na=False).head(args.rows)
    flip = {"positive": "negative", "negative": "positive"}
    settings = get_settings()
    client = build_client(ModelSettings(backend="local"), settings.model_dir, os.cpu_count() or 1, cache_path=None)
    judge = LLMJudge(
        client, rubric="Is the answer the correct sentiment (positive or negative) of the review?", max_tokens=64
    )
    inputs, refs = rows["user_input"].tolist(), rows["ground_truth_output"].tolist()
    for name, answers in (("right answers", refs), ("wrong answers", [flip[r] for r in refs])):
        start = time.perf_counter()
        out = judge.compute(answers, refs, inputs=inputs)
        per_row = (time.perf_counter() - start) / len(answers)
        print(
            f"{name}: mean score {out['llm_judge']:.3f} (0 = 1/5, 1 = 5/5), scores {sorted(set(out['scores']))}, "
            f"unreadable replies {out['judge_errors']}/{len(answers)}, {per_row:.2f} s/row"
        )
        print(f"  first rationale: {out['rationales'][0][:120]!r}")


if __name__ == "__main__":
    main()
