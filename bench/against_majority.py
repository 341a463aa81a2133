"""The default `promptopt optimize` on a labelled dataset, against always answering its majority label.

On an imbalanced set (sms_spam: 87% ham) a prompt can look good and still lose to the constant
answer, so this prints the paired gain over it on the same held-out test rows, with a 95% bootstrap
interval. The best prompt's test answers are read back from the run's response cache (no model call).

    .venv/bin/python bench/against_majority.py --dataset sms_spam [--state DIR]

With --state DIR holding an earlier run of the same command, that run is reused (every answer is
cached, so the wall time printed is then not the cold one).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from promptopt_dagster.app.datasets import load_manifest, load_splits, sample_rows
from promptopt_dagster.app.settings import get_settings
from promptopt_dagster.core.intervals import bootstrap_mean_interval
from promptopt_dagster.core.prompts import PromptVersion
from promptopt_dagster.llm.factory import build_client
from promptopt_dagster.llm.inference import predict
from promptopt_dagster.llm.model_settings import ModelSettings
from promptopt_dagster.scoring.normalize import normalize_many, to_label_many


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="sms_spam", help="a dataset with labels in data/manifest.yaml")
    parser.add_argument("--state", type=Path, help="state dir to run in (default: a fresh temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state = args.state or Path(tmp)
        report_path = state / "bench_report.json"
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
                args.dataset,
                "--report-json",
                str(report_path),
            ],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - started
        report = json.loads(report_path.read_text())

        settings = get_settings()
        spec = load_manifest(settings.manifest_path)[args.dataset]
        splits = load_splits(spec, settings.data_dir)
        test = sample_rows(splits.test, report["test_size"], 0)
        client = build_client(ModelSettings(), settings.model_dir, settings.llm_threads, state / "llm_cache.sqlite")
        answers = predict(
            client,
            PromptVersion.load(state / "best_prompts" / f"{report['optimization']}.json"),  # carries its pool
            test,
            spec.max_output_tokens,
            stop=tuple(spec.completion_stop),
        )
        truth = normalize_many(test["ground_truth_output"].tolist())
        majority = normalize_many(splits.train["ground_truth_output"].tolist())
        label = max(set(majority), key=list(majority).count)
        best = (to_label_many(answers["prediction"].tolist(), spec.labels) == truth).astype(float)
        constant = (truth == label).astype(float)
        gain = bootstrap_mean_interval(best - constant)
        print(
            f"{args.dataset}: {wall:.0f} s wall, {report['iterations']} iterations ({report['stop_reason']}), "
            f"{report['llm_calls']} model calls; dev {report['initial_dev_score']:.3f} -> {report['best_dev_score']:.3f}"
        )
        interval = report.get("test_intervals", {}).get("best")
        print(
            f"test ({len(test)} rows): best {best.mean():.3f}"
            + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")
            + f", always '{label}' {constant.mean():.3f}; paired gain {best.mean() - constant.mean():+.3f} "
            f"(95% bootstrap {gain.low:+.3f} to {gain.high:+.3f}); answers from the model: "
            f"{int(answers['cached'].eq(False).sum())}"
        )


if __name__ == "__main__":
    main()
