"""Write the 5-intent ATIS subset that stands in for a dataset the project has never seen.

    .venv/bin/python bench/atis_subset.py /tmp/atis5
    .venv/bin/python bench/quality.py /tmp/atis5

The rows of `airfare`, `ground_service`, `airline`, `abbreviation` and `aircraft` (no `flight`, which
is 80% of atis_intent): train from atis_intent's train split; its dev and test rows of those intents,
shuffled (seed 1) and halved into dev and test. Run as a directory outside data/, bench/quality.py
gives it the generic prompt a new user starts from.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from promptopt_dagster.app.settings import get_settings

INTENTS = ["airfare", "ground_service", "airline", "abbreviation", "aircraft"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory to write train.csv, dev.csv and test.csv to")
    args = parser.parse_args()
    source = get_settings().data_dir / "atis_intent"
    split = {
        name: pd.read_csv(source / f"{name}.csv", dtype=str, keep_default_na=False) for name in ("train", "dev", "test")
    }
    kept = {name: rows[rows["ground_truth_output"].isin(INTENTS)] for name, rows in split.items()}
    write_halved(kept, args.out)


def write_halved(kept: dict[str, pd.DataFrame], out: Path) -> None:
    """train.csv as kept; the kept dev and test rows shuffled (seed 1) and halved into dev.csv and test.csv."""
    held = pd.concat([kept["dev"], kept["test"]]).sample(frac=1, random_state=1)
    half = len(held) // 2
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", kept["train"]), ("dev", held[:half]), ("test", held[half:])):
        rows.to_csv(out / f"{name}.csv", index=False)
    print(f"{out}: train {len(kept['train'])}, dev {half}, test {len(held) - half}")


if __name__ == "__main__":
    main()
