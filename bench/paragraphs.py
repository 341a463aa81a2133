"""Write a 4-topic set of paragraph-length inputs, a stand-in for the long-input shape (news paragraphs) no set in data/ has.

    .venv/bin/python bench/paragraphs.py /tmp/paragraphs
    .venv/bin/python bench/quality.py /tmp/paragraphs

Each row is six requests of one hwu64 scenario (`email`, `calendar`, `play`, `transport`) joined into a
paragraph of about 250 characters, about the length of a news item's title and lead; the label is the
scenario. The requests of each scenario (hwu64's train, dev and test splits together) are shuffled (seed 0)
and cut into disjoint pools, half for train and a quarter each for dev and test, so no request of a test
row is in a train or dev row. Rows are drawn from the pools (a request can recur among rows of one split,
never across splits): 1,000 train, 500 dev and 500 test rows, balanced over the four labels, as the news
set is. What it measures is the cost of the default optimization on inputs this long and with this few
labels (wall time, calls, tokens a row); its accuracy says little about news, whose topics overlap more.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import pandas as pd

from promptopt_dagster.app.settings import get_settings

SCENARIOS = ["email", "calendar", "play", "transport"]
ROWS = {"train": 1000, "dev": 500, "test": 500}
POOLS = {"train": (0.0, 0.5), "dev": (0.5, 0.75), "test": (0.75, 1.0)}


def sentence(request: str) -> str:
    request = request.strip()
    return request[:1].upper() + request[1:] + ("" if request[-1:] in ".?!" else ".")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory to write train.csv, dev.csv and test.csv to")
    parser.add_argument("--per-row", type=int, default=6, help="requests joined into one row")
    args = parser.parse_args()
    source = get_settings().data_dir / "hwu64"
    requests = pd.concat(
        [pd.read_csv(source / f"{name}.csv", dtype=str, keep_default_na=False) for name in ("train", "dev", "test")]
    )
    scenario = requests["ground_truth_output"].str.split("_").str[0]
    rng = random.Random(0)
    args.out.mkdir(parents=True, exist_ok=True)
    pools = {}
    for label in SCENARIOS:
        texts = sorted(set(requests.loc[scenario == label, "user_input"]))
        rng.shuffle(texts)
        pools[label] = {name: texts[int(a * len(texts)) : int(b * len(texts))] for name, (a, b) in POOLS.items()}
    for name, count in ROWS.items():
        rows = [
            {"user_input": " ".join(sentence(r) for r in rng.sample(pools[label][name], args.per_row)), "label": label}
            for label in SCENARIOS
            for _ in range(count // len(SCENARIOS))
        ]
        rng.shuffle(rows)
        frame = pd.DataFrame(rows).rename(columns={"label": "ground_truth_output"})
        frame.to_csv(args.out / f"{name}.csv", index=False)
        print(f"{args.out / name}.csv: {len(frame)} rows, {frame['user_input'].str.len().mean():.0f} characters a row")


if __name__ == "__main__":
    main()
