"""Ad hoc: dev scores of variants of a kept run's best retrieved prompt (retrieval k, method, one demo per
label, calibration, label-covering rows), each with the suite's 95% interval.

Why: fewshot's per-label retrieval and BM25 are off by default until measured; this measures them (and
variants the search does not have) on the dev rows with no optimizer in the way, from the kept run's
response cache where it can.

    .venv/bin/python bench/adhoc/retrieval_probe.py [--rows N | --confirm EVAL_SIZE | --test N] STATE_DIR DATASET '{}' '{"per_label": true}' \
        '{"method": "bm25"}' '{"k": 12}' '{"calibrate": true}' '{"cover": 2}'

Each variant is a JSON object: keys of `Retrieval` (k, method, per_label, max_chars, vote, voters) change the
retrieval, `calibrate` the prompt, `cover: N` adds the nearest row of each of the N nearest labels the
k nearest rows do not show (before them, farthest first).
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from kept import kept_run

from promptopt_dagster.app.datasets import sample_rows
from promptopt_dagster.app.iteration_setup import IterationSetup
from promptopt_dagster.app.optimizations import OptimizationSpec
from promptopt_dagster.core.prompts import Retrieval
from promptopt_dagster.core.retrieval import retriever_for_pool
from promptopt_dagster.llm.inference import predict


class CoverRetrieval(Retrieval):
    """The k nearest rows, after up to `cover` more: the nearest row of each next-nearest label not shown."""

    cover: int = 0

    def _nearest(self, user_input):
        if not self.cover:
            return super()._nearest(user_input)
        ranked = retriever_for_pool(self.method, self.pool).top(user_input, min(len(self.pool), 256))
        near, seen, extra = ranked[: self.k], {self.pool[i].ground_truth_output for i in ranked[: self.k]}, []
        for i in ranked[self.k :]:
            if len(extra) == self.cover:
                break
            if self.pool[i].ground_truth_output not in seen:
                seen.add(self.pool[i].ground_truth_output)
                extra.append(i)
        return [self.pool[i] for i in [*reversed(extra), *reversed(near)]]


def main() -> None:
    args = sys.argv[1:]
    rows = confirm = None
    if args[:1] == ["--rows"]:  # only the first N dev rows
        rows, args = int(args[1]), args[2:]
    if args[:1] == ["--confirm"]:  # the optimization's N confirm rows (its cache answers what it asked)
        confirm, args = int(args[1]), args[2:]
    test = None
    if args[:1] == ["--test"]:  # the report's N test rows: to check a variant chosen on dev, never to choose one
        test, args = int(args[1]), args[2:]
    state, name, variants = Path(args[0]), args[1], [json.loads(v) for v in args[2:]] or [{}]
    spec, suite, splits, base, client = kept_run(state, name)
    dev, which = (splits.dev, "dev") if rows is None else (splits.dev.head(rows), "first dev")
    if confirm is not None:
        setup = IterationSetup.resolve(OptimizationSpec(name=name, dataset=name, eval_size=confirm), splits)
        dev, which = setup.confirm, "confirm"
    if test is not None:
        setup = IterationSetup.resolve(OptimizationSpec(name=name, dataset=name), splits)
        dev, which = sample_rows(setup.test, test, setup.spec.seed), "test"
    for variant in variants:
        change = dict(variant)
        calibrate = change.pop("calibrate", base.calibrate)
        retrieval = CoverRetrieval(**{**base.retrieval.model_dump(), **change})
        prompt = base.model_copy(update={"retrieval": retrieval, "calibrate": calibrate})
        started, before = time.perf_counter(), client.usage.llm_calls
        out = predict(
            client, prompt, dev, spec.max_output_tokens, stop=tuple(spec.completion_stop), progress_interval_s=1e9
        )
        predictions, references = out["prediction"].fillna("").tolist(), out["ground_truth_output"].tolist()
        found = suite.target_interval(predictions, references)
        print(
            json.dumps(
                {
                    "variant": variant,
                    suite.target: round(suite.score(predictions, references).value, 3),
                    "95%": [round(found.low, 3), round(found.high, 3)],
                    "accuracy": round(sum(p == r for p, r in zip(predictions, references)) / len(references), 3),
                    "rows": f"{len(dev)} {which}",
                    "model calls": client.usage.llm_calls - before,
                    "wall s": round(time.perf_counter() - started),
                    # measured when each answer was made, so answers from the cache keep their cost
                    "s/row as answered": round(float(out["latency_s"].mean()), 2),
                    "prompt tokens/row": round(float(out["prompt_tokens"].mean())),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
