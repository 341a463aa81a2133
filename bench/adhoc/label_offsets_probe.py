"""Ad hoc: would per-label offsets on the label scores (fitted to the target on dev rows) or batch
calibration raise a kept run's best prompt on rows they were not fitted on?

Why: on atis_intent the best prompt answers `flight` (80% of rows) for rows of rarer intents, and macro
F1 weighs those intents as much as `flight`. Offsets added to each label's normalized log-probability,
fitted by coordinate search to maximize the target on 200 dev rows, then scored on the other dev rows
and on the 500 test rows, say whether a decision rule could buy that back; batch calibration (each
label's mean score over the dev rows subtracted, Zhou et al. 2023) is the fit-free version.

    .venv/bin/python bench/adhoc/label_offsets_probe.py STATE_DIR atis_intent
"""

import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from kept import kept_run

from promptopt_dagster.app.datasets import sample_rows
from promptopt_dagster.llm.inference import build_requests


def main() -> None:
    state, name = Path(sys.argv[1]), sys.argv[2]
    spec, suite, splits, prompt, client = kept_run(state, name)
    labels = list(prompt.labels)

    def label_scores(rows) -> np.ndarray:
        requests = [
            dataclasses.replace(r, want_label_scores=True)
            for r in build_requests(client, prompt, rows, spec.max_output_tokens, tuple(spec.completion_stop))
        ]
        m = np.array([[r.label_scores[c] for c in labels] for r in client.generate(requests)])
        return m - np.logaddexp.reduce(m, axis=1, keepdims=True)

    dev, test = splits.dev, sample_rows(splits.test, 500, 0)
    d, t = label_scores(dev), label_scores(test)
    dev_gold, test_gold = dev["ground_truth_output"].tolist(), test["ground_truth_output"].tolist()

    def target(m, offsets, gold) -> float:
        return suite.score([labels[i] for i in np.argmax(m + offsets, axis=1)], gold).value

    def fit(m, gold) -> np.ndarray:
        offsets, grid = np.zeros(len(labels)), np.linspace(-3, 3, 25)
        for _ in range(3):
            for j in range(len(labels)):
                best, best_value = target(m, offsets, gold), offsets[j]
                for g in grid:
                    trial = offsets.copy()
                    trial[j] = g
                    if (s := target(m, trial, gold)) > best + 1e-9:
                        best, best_value = s, g
                offsets[j] = best_value
        return offsets

    print(f"plain: dev {target(d, 0, dev_gold):.3f}, test {target(t, 0, test_gold):.3f}")
    batch = -d.mean(axis=0)
    print(
        f"batch calibration (dev means): dev {target(d, batch, dev_gold):.3f}, test {target(t, batch, test_gold):.3f}"
    )
    rng = np.random.default_rng(0)
    for _ in range(3):
        order = rng.permutation(len(dev_gold))
        fit_ix, held_ix = order[:200], order[200:]
        offsets = fit(d[fit_ix], [dev_gold[i] for i in fit_ix])
        held = [dev_gold[i] for i in held_ix]
        print(
            f"offsets fitted on 200 dev rows: other dev rows {target(d[held_ix], 0, held):.3f} -> "
            f"{target(d[held_ix], offsets, held):.3f}, test {target(t, offsets, test_gold):.3f}"
        )
    print(f"offsets fitted on all dev rows: test {target(t, fit(d, dev_gold), test_gold):.3f}")


if __name__ == "__main__":
    main()
