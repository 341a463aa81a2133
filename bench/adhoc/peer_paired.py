"""Ad hoc: the platform's best prompt against a peer's answers on the same test rows, row by row.

Why: on a target like macro F1 over rare labels, two prompts' separate intervals overlap widely and say
little; a paired bootstrap (the same resampled rows for both) of the difference says which way it
leans and how surely, and the per-label table shows which labels make it.

    .venv/bin/python bench/peers.py atis_intent --rows 500 --methods knn --predictions /tmp/peer
    .venv/bin/python bench/adhoc/peer_paired.py STATE_DIR atis_intent /tmp/peer/atis_intent.knn.csv

STATE_DIR is a kept `bench/quality.py --keep` directory: its report's best prompt answers the test rows
from its response cache (its final report asked the same questions).
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from kept import kept_run

from promptopt_dagster.app.datasets import sample_rows
from promptopt_dagster.core.intervals import bootstrap_interval
from promptopt_dagster.llm.inference import predict


def main() -> None:
    state, name, peer_csv = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    spec, suite, splits, prompt, client = kept_run(state, name)
    peer = pd.read_csv(peer_csv, keep_default_na=False, dtype=str)
    test = sample_rows(splits.test, len(peer), 0)
    if test["user_input"].tolist() != peer["user_input"].tolist():
        raise SystemExit(f"{peer_csv}: its rows are not the {len(peer)} test rows bench/quality.py samples")
    out = predict(
        client, prompt, test, spec.max_output_tokens, stop=tuple(spec.completion_stop), progress_interval_s=1e9
    )
    ours = np.array(out["prediction"].fillna("").str.strip().tolist(), dtype=object)
    theirs = np.array(peer["prediction"].str.strip().tolist(), dtype=object)
    gold = np.array(test["ground_truth_output"].tolist(), dtype=object)

    def target(p, ix):
        return suite.score(list(p[ix]), list(gold[ix])).value

    every = np.arange(len(gold))
    diffs = []  # every resample's difference, kept for the share of resamples the platform leads in

    def difference(ix) -> float:
        diffs.append(target(ours, ix) - target(theirs, ix))
        return diffs[-1]

    found = bootstrap_interval(len(gold), difference, resamples=2000)
    low, high = found.low, found.high
    print(
        f"{name} {suite.target} on {len(gold)} test rows: platform {target(ours, every):.3f}, peer {target(theirs, every):.3f}"
    )
    print(
        f"platform - peer: {target(ours, every) - target(theirs, every):+.3f}, paired 95% [{low:+.3f}, {high:+.3f}], "
        f"platform ahead in {np.mean(np.array(diffs) > 0):.0%} of resamples"
    )
    print(f"accuracy: platform {np.mean(ours == gold):.3f}, peer {np.mean(theirs == gold):.3f}")
    table = []
    for label in sorted(set(gold)):
        row = {"label": label, "rows": int(np.sum(gold == label))}
        for who, p in (("platform", ours), ("peer", theirs)):
            hit = np.sum((p == label) & (gold == label))
            row[f"{who} right"] = int(hit)
            row[f"{who} named"] = int(np.sum(p == label))
        table.append(row)
    print(pd.DataFrame(table).to_string(index=False))


if __name__ == "__main__":
    main()
