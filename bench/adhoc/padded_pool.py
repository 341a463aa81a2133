"""Ad hoc: a real labelled set with its train split padded by synthetic rows to a large demo pool, for timing a whole
optimization on the embedded model with a pool the size of a large news training set (120,000 rows).

`bench/adhoc/large_pool.py` times the platform's own work on such a pool with the fake backend; this one keeps the
real rows a stand-in's quality comes from (its dev and test splits, its train rows) and adds filler rows of
synthetic words (`large_pool.synthetic_rows`, labelled with the set's labels), so the optimization pays what a large
pool costs (the pool written to the warehouse, TF-IDF over it, rendering from it) while the model answers real rows.
Filler rows share no word with real text, so a real row's nearest rows are real ones; static demos drawn from the
pool are mostly filler, which is what they would be worth. Not a quality figure for a real large set.

    .venv/bin/python bench/package_sections.py /tmp/sections
    .venv/bin/python bench/adhoc/padded_pool.py /tmp/sections /tmp/padded --train 120000
    .venv/bin/python bench/quality.py /tmp/padded --keep /tmp/padded_keep
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pandas as pd
from large_pool import synthetic_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a directory with train.csv, dev.csv and test.csv (labelled)")
    parser.add_argument("out", type=Path, help="a directory to write the padded set to (emptied)")
    parser.add_argument("--train", type=int, default=120000, help="train rows after padding")
    args = parser.parse_args()
    train = pd.read_csv(args.source / "train.csv")
    labels = sorted(train["ground_truth_output"].astype(str).unique())
    filler = synthetic_rows(labels, max(0, args.train - len(train)))
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    pd.concat([train, filler], ignore_index=True).to_csv(args.out / "train.csv", index=False)
    for split in ("dev", "test"):
        shutil.copy(args.source / f"{split}.csv", args.out / f"{split}.csv")
    print(f"{args.out}: {len(train)} real train rows and {len(filler)} filler rows; labels {', '.join(labels)}")


if __name__ == "__main__":
    main()
