"""Time a full `promptopt optimize` on the embedded model from a cold state dir, then the cached rerun.

Target (issue 2): under 10 minutes for sst2 at eval size 200 on 2 cores; the rerun sends no request.
Prints wall time, peak memory, model calls, cache hits and the scores of both runs.

    .venv/bin/python bench/optimize_sst2.py [--dataset sst2] [--eval-size 200]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(state: Path, dataset: str, eval_size: int, report: Path) -> tuple[float, dict]:
    env = {**os.environ, "PROMPTOPT_STATE_DIR": str(state)}
    env.pop("DAGSTER_HOME", None)
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "promptopt_dagster.cli",
            "optimize",
            "--dataset",
            dataset,
            "--eval-size",
            str(eval_size),
            "--report-json",
            str(report),
        ],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started, json.loads(report.read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="sst2")
    parser.add_argument("--eval-size", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        for label in ("cold", "rerun"):
            seconds, rep = run(state, args.dataset, args.eval_size, state / f"{label}.json")
            peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            print(
                f"{label}: {seconds:.1f} s wall, peak RSS {peak_mb:.0f} MB, iterations {rep['iterations']} "
                f"({rep['stop_reason']}), llm_calls {rep['llm_calls']}, cache_hits {rep['cache_hits']}, "
                f"dev {rep['initial_dev_score']:.3f}->{rep['best_dev_score']:.3f}, "
                f"test {rep['initial_test_score']:.3f}->{rep['best_test_score']:.3f} "
                f"({rep['test_size']} rows)",
                flush=True,
            )


if __name__ == "__main__":
    main()
