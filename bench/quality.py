"""The default optimization next to a by-hand baseline, on dev and held-out test, in one table.

The by-hand baseline is what a careful person does without the platform: three seeded,
label-balanced random k-shot prompts built on the initial prompt, the one with the best dev score
kept. It is scored exactly as the optimizer's prompts are (same confirm rows, same test rows, same
scorers, same model), so the table says what the search adds over picking demos by hand.

    .venv/bin/python bench/quality.py                      # every dataset with labels in data/
    .venv/bin/python bench/quality.py sst2 atis_intent     # some of them
    .venv/bin/python bench/quality.py /path/to/my_dataset  # a directory with train/dev/test.csv

A directory outside data/ gets a generated manifest entry (labels: the distinct train answers,
target: accuracy) and a generic initial prompt, as a new user's first try would. Each dataset runs
`promptopt optimize` with its defaults in a fresh state dir (a cold run: every model call is made;
its log goes to STATE/optimize.log, so `--keep DIR` lets a long run be followed with `tail -f`);
the by-hand prompts use the same response cache. Intervals are 95% percentile bootstraps of the
target recomputed on resampled rows (so macro F1 gets one too). "Beats the by-hand prompt" is read from
the paired interval of the optimized prompt's test score minus the by-hand prompt's (the same test rows
resampled together); the JSON rows also carry the optimized prompt minus the nearest-rows majority.

The dev-test drop comes with its own interval (confirm and test rows resampled apart: they are
different rows) and beside the drop of a prompt-free classifier on the same rows, the majority label
of each row's nearest train rows: where that drops as far, the split's dev rows are easier than its
test rows, and the drop is not the search's choosing on luck. The confirm rows' answers of the best
prompt come from the run's response cache (no model call).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from promptopt_dagster.app.datasets import load_manifest, load_splits, sample_rows
from promptopt_dagster.app.iteration_setup import IterationSetup
from promptopt_dagster.app.optimizations import OptimizationSpec
from promptopt_dagster.app.settings import PROJECT_ROOT, get_settings
from promptopt_dagster.core.errors import ContextWindowError
from promptopt_dagster.core.intervals import bootstrap_interval
from promptopt_dagster.core.prompts import Demo, PromptVersion
from promptopt_dagster.core.retrieval import get_retriever
from promptopt_dagster.defs.resources import ProjectResource
from promptopt_dagster.llm.factory import build_client
from promptopt_dagster.llm.inference import build_requests, check_context, predict
from promptopt_dagster.llm.model_settings import ModelSettings

GENERIC_PROMPT = {
    "system_prompt": "Classify the input. Answer with its label only.",
    "output_prompt": "Input: {user_input}\nLabel:",
}


def outside_dataset(directory: Path, work: Path) -> tuple[str, Path, Path]:
    """A data dir and prompts dir holding only this directory's dataset, as `Adding a dataset` says."""
    name = directory.name
    data, prompts = work / "data", work / "prompts"
    (data / name).mkdir(parents=True)
    prompts.mkdir()
    for split in ("train", "dev", "test"):
        shutil.copy(directory / f"{split}.csv", data / name / f"{split}.csv")
    labels = sorted(
        pd.read_csv(directory / "train.csv", dtype=str, keep_default_na=False)["ground_truth_output"]
        .str.strip()
        .unique()
        .tolist()
    )
    entry = {
        "files": {s: f"{name}/{s}.csv" for s in ("train", "dev", "test")},
        "labels": labels,
        "target_metric": "accuracy",
        "initial_prompt": f"{name}.json",
        "max_output_tokens": max(4, max(len(label) for label in labels) // 3 + 2),
    }
    (data / "manifest.yaml").write_text(yaml.safe_dump({"datasets": {name: entry}}))
    (prompts / f"{name}.json").write_text(json.dumps(GENERIC_PROMPT))
    return name, data, prompts


def balanced_demos(train: pd.DataFrame, labels: list[str], k: int, seed: int) -> list[Demo]:
    """k demos, as equal a count per label as k allows, shuffled: the usual hand-made few-shot prompt."""
    rng = random.Random(seed)
    per_label = [train[train["ground_truth_output"].str.strip() == label] for label in labels]
    per_label = [rows for rows in per_label if len(rows)]
    picked = []
    for i in range(k):
        rows = per_label[i % len(per_label)]
        row = rows.iloc[rng.randrange(len(rows))]
        picked.append(Demo(user_input=row["user_input"], ground_truth_output=row["ground_truth_output"]))
    rng.shuffle(picked)
    return picked


def nearest_majority(pool: pd.DataFrame, rows: pd.DataFrame, k: int) -> list[str]:
    """Each row's most common label among its k nearest pool rows by TF-IDF (a tie: the label met first, nearest)."""
    retriever = get_retriever("tfidf", pool["user_input"].tolist())  # built once per pool: test and confirm rows ask
    labels = pool["ground_truth_output"].tolist()
    return [
        collections.Counter(labels[i] for i in retriever.top(text, k)).most_common(1)[0][0]
        for text in rows["user_input"]
    ]


def _bounds(interval) -> tuple[float, float]:
    return interval.low, interval.high


def drop_interval(suite, dev: tuple[list, list], test: tuple[list, list], resamples: int = 1000) -> tuple[float, float]:
    """A 95% percentile interval of the dev score minus the test score, each recomputed on its own rows resampled
    (dev and test are different rows, so the two are drawn apart, not paired)."""
    rng = np.random.default_rng(0)
    (dp, dr), (tp, tr) = ((np.array(a, dtype=object), np.array(b, dtype=object)) for a, b in (dev, test))
    drops = []
    for _ in range(resamples):
        i, j = rng.integers(0, len(dp), len(dp)), rng.integers(0, len(tp), len(tp))
        drops.append(suite.score(list(dp[i]), list(dr[i])).value - suite.score(list(tp[j]), list(tr[j])).value)
    low, high = np.percentile(drops, [2.5, 97.5])
    return float(low), float(high)


def gain_interval(suite, mine: list, theirs: list, refs: list) -> tuple[float, float]:
    """A 95% percentile interval of `mine`'s target minus `theirs`'s on the same rows, resampled together (paired:
    the row-to-row noise both share cancels, so this is narrower than the two intervals side by side)."""
    a, b, r = (np.array(x, dtype=object) for x in (mine, theirs, refs))

    def gain(ix):
        return suite.score(list(a[ix]), list(r[ix])).value - suite.score(list(b[ix]), list(r[ix])).value

    return _bounds(bootstrap_interval(len(r), gain))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "datasets",
        nargs="*",
        help="dataset names in data/manifest.yaml or dataset directories (default: every dataset in data/ with labels)",
    )
    parser.add_argument("--k", type=int, default=12, help="demos in each by-hand prompt")
    parser.add_argument("--tries", type=int, default=3, help="seeded by-hand prompts; the best on dev is kept")
    parser.add_argument("--eval-size", type=int, default=200, help="confirm rows, as `promptopt optimize`")
    parser.add_argument("--test-size", type=int, default=500, help="held-out test rows, as `promptopt optimize`")
    parser.add_argument("--keep", type=Path, help="keep each dataset's state dir under this directory")
    parser.add_argument(
        "--peer-rows",
        type=int,
        default=200,
        help="also score both prompts on the first N of the test rows, the rows `bench/peers.py --rows N` scores "
        "(sample_rows draws a permutation, so they are a subset; 0: skip)",
    )
    parser.add_argument(
        "--neighbours",
        type=int,
        default=8,
        help="also score the majority label of the N train rows nearest each test row (TF-IDF, no model call): "
        "the retrieval retrieved demos use, as a classifier on its own (0: skip)",
    )
    args = parser.parse_args()
    panel = f"nearest-{args.neighbours} majority"  # the prompt-free classifier's name in the rows

    settings = get_settings()
    names = args.datasets or [n for n, s in load_manifest(settings.manifest_path).items() if s.labels]
    rows_out = []
    for item in names:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            data_dir, prompts_dir, name = settings.data_dir, settings.prompts_dir, item
            if Path(item).is_dir():
                name, data_dir, prompts_dir = outside_dataset(Path(item).resolve(), work)
            state = (args.keep / name) if args.keep else work / "state"
            state.mkdir(parents=True, exist_ok=True)
            env = {
                **os.environ,
                "PROMPTOPT_STATE_DIR": str(state),
                "PROMPTOPT_DATA_DIR": str(data_dir),
                "PROMPTOPT_PROMPTS_DIR": str(prompts_dir),
            }
            env.pop("DAGSTER_HOME", None)
            report_path = state / "report.json"
            started = time.perf_counter()
            log_path = state / "optimize.log"  # the run's progress, to follow with `tail -f` while it runs
            with log_path.open("w") as log:
                done = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "promptopt_dagster.cli",
                        "optimize",
                        "--dataset",
                        name,
                        "--eval-size",
                        str(args.eval_size),
                        "--test-size",
                        str(args.test_size),
                        "--report-json",
                        str(report_path),
                    ],
                    env=env,
                    cwd=PROJECT_ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            wall = time.perf_counter() - started
            if done.returncode != 0:
                print(f"{name}: promptopt optimize failed:\n{log_path.read_text()[-2000:]}", file=sys.stderr)
                continue
            report = json.loads(report_path.read_text())

            project = ProjectResource(data_dir=str(data_dir), prompts_dir=str(prompts_dir))
            spec, suite = project.spec(name), project.suite(name)
            splits = load_splits(spec, Path(data_dir))
            # the rows the optimization used (its defaults, the bench's eval size), cut as its iterations cut them
            setup = IterationSetup.resolve(OptimizationSpec(name=name, dataset=name, eval_size=args.eval_size), splits)
            confirm, train = setup.confirm, setup.demo_source()
            test = sample_rows(setup.test, args.test_size, setup.spec.seed)
            client = build_client(ModelSettings(), settings.model_dir, settings.llm_threads, state / "llm_cache.sqlite")
            calls_before = client.usage.llm_calls

            def answers(prompt: PromptVersion, rows: pd.DataFrame) -> tuple[list, list]:
                out = predict(
                    client,
                    prompt,
                    rows,
                    spec.max_output_tokens,
                    stop=tuple(spec.completion_stop),
                    progress_interval_s=1e9,
                )
                return out["prediction"].fillna("").tolist(), out["ground_truth_output"].tolist()

            def fits(prompt: PromptVersion, rows: pd.DataFrame) -> bool:
                """Whether every row's prompt fits the model's context (a token count, no model call)."""
                stop = tuple(spec.completion_stop)
                try:
                    requests = build_requests(client, prompt, rows, spec.max_output_tokens, stop)
                    check_context(client, requests, rows["row_id"].astype(int).tolist(), prompt, "")
                except ContextWindowError:
                    return False
                return True

            initial = project.initial_prompt(name)
            tries = []
            for seed in range(args.tries):
                # a person keeps a by-hand prompt that fits the model: k halves until every dev and test row fits
                k = args.k
                prompt = initial.child(demos=balanced_demos(train, spec.labels, k, seed))
                while k and not fits(prompt, pd.concat([confirm, test])):
                    k //= 2
                    prompt = initial.child(demos=balanced_demos(train, spec.labels, k, seed))
                if k < args.k:
                    print(f"{name}: by-hand try {seed} fits the context with {k} demos, not {args.k}", flush=True)
                tries.append((suite.score(*answers(prompt, confirm)).value, seed, prompt))
            hand_dev, _, hand = max(tries, key=lambda t: (t[0], -t[1]))
            hand_test_p, refs = answers(hand, test)
            # the exported prompt: the report names a retrieval pool by reference, this file carries it
            best_prompt = PromptVersion.load(state / "best_prompts" / f"{report['optimization']}.json")
            best_test_p, _ = answers(best_prompt, test)
            best_dev_p, dev_refs = answers(best_prompt, confirm)  # the run's accepted answers: from the cache
            hand_calls = client.usage.llm_calls - calls_before
            hand_test = suite.score(hand_test_p, refs).value
            best_test = suite.score(best_test_p, refs).value
            peers = {}
            if 0 < args.peer_rows < len(test):
                keep = test["row_id"].isin(sample_rows(setup.test, args.peer_rows, setup.spec.seed)["row_id"]).tolist()
                sub_refs = [r for r, k in zip(refs, keep) if k]
                for label, answers_ in (("by-hand", hand_test_p), ("optimized", best_test_p)):
                    sub = [a for a, k in zip(answers_, keep) if k]
                    peers[f"{label} test@{args.peer_rows}"] = suite.score(sub, sub_refs).value
                    peers[f"{label} test@{args.peer_rows} 95%"] = _bounds(suite.target_interval(sub, sub_refs))
            if args.neighbours > 0:
                near = nearest_majority(train, test, args.neighbours)
                near_dev = nearest_majority(train, confirm, args.neighbours)
                peers[f"{panel} test"] = suite.score(near, refs).value
                peers[f"{panel} test 95%"] = _bounds(suite.target_interval(near, refs))
                peers[f"{panel} dev"] = suite.score(near_dev, dev_refs).value
                peers[f"{panel} dev-test drop"] = peers[f"{panel} dev"] - peers[f"{panel} test"]
                peers[f"{panel} dev-test drop 95%"] = drop_interval(suite, (near_dev, dev_refs), (near, refs))
                peers[f"optimized - {panel} test 95%"] = gain_interval(suite, best_test_p, near, refs)
            row = {
                "dataset": name,
                "metric": suite.target,
                "rows dev/test": f"{len(confirm)}/{len(test)}",
                "initial dev": report["initial_dev_score"],
                "initial test": report["initial_test_score"],
                "by-hand dev": hand_dev,
                "by-hand test": hand_test,
                "by-hand test 95%": _bounds(suite.target_interval(hand_test_p, refs)),
                "optimized dev": report["best_dev_score"],
                "optimized test": best_test,
                "optimized test 95%": _bounds(suite.target_interval(best_test_p, refs)),
                "dev-test drop": report["best_dev_score"] - best_test,
                "dev-test drop 95%": drop_interval(suite, (best_dev_p, dev_refs), (best_test_p, refs)),
                "optimized - by-hand test 95%": gain_interval(suite, best_test_p, hand_test_p, refs),
                "model calls": report["llm_calls"],
                "by-hand calls": hand_calls,
                "wall s": round(wall),
                "iterations": report["iterations"],
                "stop": report["stop_reason"],
                "choices": PromptVersion.model_validate(report["best_prompt"]).describe(),
                **peers,
            }
            rows_out.append(row)
            print(json.dumps(row), flush=True)

    print()
    print(
        "| dataset | metric | rows dev/test | initial dev/test | by-hand dev/test [95%] | optimized dev/test [95%] "
        "| optimized - by-hand on test [95%, paired] | dev-test drop [95%] | the split's drop | model calls | wall "
        "| best prompt |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows_out:
        bl, bh = r["by-hand test 95%"]
        ol, oh = r["optimized test 95%"]
        dl, dh = r["dev-test drop 95%"]
        gl, gh = r["optimized - by-hand test 95%"]
        split_drop = f"{r[panel + ' dev-test drop']:+.3f} ({panel})" if args.neighbours > 0 else "-"
        print(
            f"| {r['dataset']} | {r['metric']} | {r['rows dev/test']} | {r['initial dev']:.3f} / {r['initial test']:.3f} "
            f"| {r['by-hand dev']:.3f} / {r['by-hand test']:.3f} [{bl:.3f}, {bh:.3f}] "
            f"| {r['optimized dev']:.3f} / {r['optimized test']:.3f} [{ol:.3f}, {oh:.3f}] "
            f"| {r['optimized test'] - r['by-hand test']:+.3f} [{gl:+.3f}, {gh:+.3f}] "
            f"| {r['dev-test drop']:+.3f} [{dl:+.3f}, {dh:+.3f}] | {split_drop} "
            f"| {r['model calls']} (+{r['by-hand calls']} by hand) | {r['wall s']} s "
            f"| {r['choices']}; {r['iterations']} iterations, {r['stop']} |"
        )


if __name__ == "__main__":
    main()
