"""Write a 6-class stand-in for a short-input set with few labels, each label a mix of kinds of request.

    .venv/bin/python bench/hwu_scenarios.py /tmp/hwu6
    .venv/bin/python bench/quality.py /tmp/hwu6

hwu64's intents are named scenario_intent; this keeps the rows of its six largest scenarios (`general`,
`iot`, `play`, `qa`, `transport`, `email`) and labels each row with its scenario only. A label then covers
several kinds of request (`qa` holds factoid, definition, maths, currency and stock questions; `general`
holds jokes, confirmations and complaints), as the classes of a question-type set do: the nearest train rows
by words often carry another kind of request of the same label, so how many neighbours a prompt shows
matters more than on a binary set. Train from hwu64's train split; its dev and test rows of those scenarios,
shuffled (seed 1) and halved into dev and test. Run as a directory outside data/, bench/quality.py gives it
the generic prompt a new user starts from.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from atis_subset import write_halved  # bench/ is on sys.path when a bench script runs

from promptopt_dagster.app.settings import get_settings

SCENARIOS = ["general", "iot", "play", "qa", "transport", "email"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory to write train.csv, dev.csv and test.csv to")
    args = parser.parse_args()
    source = get_settings().data_dir / "hwu64"
    split = {
        name: pd.read_csv(source / f"{name}.csv", dtype=str, keep_default_na=False) for name in ("train", "dev", "test")
    }
    kept = {}
    for name, rows in split.items():
        scenario = rows["ground_truth_output"].str.split("_").str[0]
        kept[name] = rows[scenario.isin(SCENARIOS)].assign(ground_truth_output=scenario)
    write_halved(kept, args.out)


if __name__ == "__main__":
    main()
