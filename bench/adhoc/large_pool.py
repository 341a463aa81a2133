"""How the platform's own work grows with a large demo pool: a whole default optimization on a synthetic 4-label
set of paragraph-length rows with N train rows, answered by the fake backend (no model time), so what is timed
is the platform (retrieval, the search's bookkeeping, the warehouse), not inference.

    .venv/bin/python bench/adhoc/large_pool.py /tmp/large_pool --train 40000

Prints the wall time, the peak resident memory of the optimization's process and the warehouse's size. Not a
quality figure: the fake backend answers every row wrongly, so a static prompt wins.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from quality import outside_dataset  # noqa: E402

from promptopt_dagster.app.settings import PROJECT_ROOT  # noqa: E402

LABELS = ["world", "sports", "business", "scitech"]


def synthetic_rows(labels: list[str], size: int, seed: int = 0) -> pd.DataFrame:
    """`size` rows cycling through `labels`: 70 words each, a quarter drawn from the label's own 400 words, the rest
    from 3,000 shared ones."""
    rng = random.Random(seed)
    own = {label: [f"{label[:3]}{i}" for i in range(400)] for label in labels}
    shared = [f"w{i}" for i in range(3000)]

    def row(label: str) -> str:
        return " ".join(rng.choice(own[label]) if rng.random() < 0.25 else rng.choice(shared) for _ in range(70))

    cycled = [labels[i % len(labels)] for i in range(size)]
    return pd.DataFrame({"user_input": [row(x) for x in cycled], "ground_truth_output": cycled})


def write_set(out: Path, train: int, seed: int = 0) -> None:
    """train/dev/test CSVs of synthetic rows (`synthetic_rows`), 500 dev and test rows."""
    out.mkdir(parents=True, exist_ok=True)
    rows = synthetic_rows(LABELS, train + 1000, seed)  # one draw, in the order the splits were written before
    for split, part in (("train", rows[:train]), ("dev", rows[train : train + 500]), ("test", rows[train + 500 :])):
        part.reset_index(drop=True).to_csv(out / f"{split}.csv", index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="a directory to write the set and the run's state to (emptied)")
    parser.add_argument("--train", type=int, default=40000, help="train rows (the demo pool)")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    write_set(args.work / "set", args.train)
    name, data_dir, prompts_dir = outside_dataset(args.work / "set", args.work)
    state = args.work / "state"
    state.mkdir(parents=True)
    env = {
        **os.environ,
        "PROMPTOPT_STATE_DIR": str(state),
        "PROMPTOPT_DATA_DIR": str(data_dir),
        "PROMPTOPT_PROMPTS_DIR": str(prompts_dir),
        "PROMPTOPT_TASK__BACKEND": "fake",
    }
    env.pop("DAGSTER_HOME", None)
    started = time.perf_counter()
    with (state / "optimize.log").open("w") as log:
        done = subprocess.run(
            [sys.executable, "-m", "promptopt_dagster.cli", "optimize", "--dataset", name],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"promptopt optimize failed: see {state / 'optimize.log'}")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    warehouse_mb = (state / "warehouse.duckdb").stat().st_size / 2**20
    print(f"{args.train} train rows: {wall:.1f} s wall, peak RSS {peak_mb:.0f} MB, warehouse {warehouse_mb:.0f} MB")


if __name__ == "__main__":
    main()
