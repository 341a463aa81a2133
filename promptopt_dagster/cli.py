"""The `promptopt` command: run an optimization headless, with the same assets the UI shows.

`optimize` records every run in the project's persistent Dagster home, so `promptopt ui` (or
`dagster dev` with the same DAGSTER_HOME) shows them afterwards with their lineage and metadata.
The CLI drives the loop itself (the daemon may not be running); it tags its runs so the sensor
leaves them alone, and it acts on the same stop decision the sensor reads.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from promptopt_dagster.core.errors import PromptOptError
from promptopt_dagster.settings import PROJECT_ROOT, get_settings

log = logging.getLogger("promptopt.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="promptopt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    opt = sub.add_parser("optimize", help="optimize one dataset's prompt and report it on the held-out test split")
    opt.add_argument("--dataset", required=True, help="a dataset named in data/manifest.yaml")
    opt.add_argument("--max-iterations", type=int, default=5)
    opt.add_argument("--eval-size", type=int, default=200, help="dev rows scored per prompt (0: all)")
    opt.add_argument("--test-size", type=int, default=500, help="held-out test rows in the report (0: all)")
    opt.add_argument("--optimizer", choices=["fewshot", "reflective"], default="fewshot")
    opt.add_argument("--target-score", type=float, default=0.95, help="stop once the best dev score reaches this")
    opt.add_argument("--target-metric", help="what the loop accepts and stops on: one of the dataset's scorers or "
                                             "'aggregate' (default: target_metric in data/manifest.yaml)")
    opt.add_argument("--patience", type=int, default=2, help="stop after this many iterations without improvement")
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--max-requests", type=int, default=0, help="budget: model calls, retries included (0: no cap)")
    opt.add_argument("--max-tokens", type=int, default=0, help="budget: prompt + completion tokens (0: no cap)")
    opt.add_argument("--max-cost-usd", type=float, default=0.0, help="budget: estimated US dollars (0: no cap)")
    opt.add_argument("--max-failed-fraction", type=float, default=0.02,
                     help="share of rows that may end in an error before an iteration fails (default 0.02)")
    opt.add_argument("--report-json", type=Path, help="also write the report to this file")
    opt.add_argument("--verbose", action="store_true", help="show Dagster's own step logs")
    sub.add_parser("ui", help="start `dagster dev` on this project's Dagster home")
    return parser


def _optimization_config(args: argparse.Namespace) -> dict:
    return {"optimizer": args.optimizer, "eval_size": args.eval_size, "test_size": args.test_size,
            "max_iterations": args.max_iterations, "target_score": args.target_score, "patience": args.patience,
            "seed": args.seed, "max_requests": args.max_requests, "max_tokens": args.max_tokens,
            "max_cost_usd": args.max_cost_usd, "max_failed_fraction": args.max_failed_fraction,
            "target_metric": args.target_metric}


def _failure_message(result) -> str:
    """The innermost user-facing error of a failed run (e.g. a DatasetError), not Dagster's wrapper."""
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            while error.cause is not None:
                error = error.cause
            return error.message.strip()
    return "the run failed; open it in the Dagster UI for details"


def optimize(args: argparse.Namespace) -> int:
    import dagster as dg

    from promptopt_dagster.defs.home import ensure_dagster_home
    from promptopt_dagster.defs.loop import (DATASET_JOB, DRIVER_TAG, ITERATION_JOB, REPORT_JOB, next_step,
                                             stop_reason_of)
    from promptopt_dagster.defs.partitions import iteration_dimension, iteration_key

    settings = get_settings()
    ensure_dagster_home(settings.dagster_home)
    from promptopt_dagster.definitions import defs

    # Fail fast, with the file named, before any run is recorded or any table touched.
    project = defs.resources["project"]
    project.splits(args.dataset)  # also names an unknown dataset
    project.initial_prompt(args.dataset)
    suite = project.suite(args.dataset, target=args.target_metric)  # unknown scorers, options, name clashes

    if not args.verbose:  # Dagster's console shows only warnings; inference progress still reaches the user
        progress = logging.getLogger("promptopt.inference")
        progress.setLevel(logging.INFO)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("  %(message)s"))
        progress.addHandler(handler)
    instance = dg.DagsterInstance.get()
    resource_config = {"resources": {"optimization": {"config": _optimization_config(args)}}}
    level = "DEBUG" if args.verbose else "WARNING"
    loggers = {"loggers": {"console": {"config": {"log_level": level}}}}
    tags = {DRIVER_TAG: "cli"}
    started = time.perf_counter()

    def run(job_name: str, partition_key, with_config: bool = True):
        job = defs.resolve_job_def(job_name)
        config = {**loggers, **(resource_config if with_config else {})}
        result = job.execute_in_process(partition_key=partition_key, instance=instance, run_config=config,
                                        tags=tags, raise_on_error=False)
        if not result.success:
            raise PromptOptError(f"Run {result.run_id} ({job_name}, partition {partition_key}) failed: "
                                 f"{_failure_message(result)}")
        return result

    print(f"[{args.dataset}] loading and validating the dataset splits; scoring with {suite.describe()}", flush=True)
    run(DATASET_JOB, args.dataset, with_config=False)
    iteration = 0
    while True:
        if not instance.has_dynamic_partition(iteration_dimension.name, str(iteration)):
            instance.add_dynamic_partitions(iteration_dimension.name, [str(iteration)])
        print(f"[{args.dataset}] iteration {iteration}: baseline -> optimizer ({args.optimizer}) -> refined -> compare",
              flush=True)
        result = run(ITERATION_JOB, iteration_key(args.dataset, iteration))
        best = result.asset_materializations_for_node("best_prompt")[-1]
        compare = result.asset_materializations_for_node("comparison_report")[-1].metadata
        stop_reason = stop_reason_of(best)
        print(f"[{args.dataset}] iteration {iteration}: {suite.target} baseline "
              f"{compare['baseline_score'].value:.4f}, refined "
              f"{compare['refined_score'].value:.4f}, {'accepted' if compare['accepted'].value else 'rejected'}; "
              f"best {compare['best_score'].value:.4f}; "
              f"{'stop: ' + stop_reason if stop_reason else 'continue'}; {compare['requests'].value} model calls, "
              f"${compare['cost_usd'].value:.4f} ({time.perf_counter() - started:.0f}s)",
              flush=True)
        step = next_step(args.dataset, iteration, stop_reason)
        if step.iteration is None:
            break
        iteration = step.iteration

    print(f"[{args.dataset}] final report: initial and best prompt on the held-out test split", flush=True)
    result = run(REPORT_JOB, args.dataset)
    report = result.asset_materializations_for_node("final_report")[-1].metadata["report"].value
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if args.report_json:
        args.report_json.parent.mkdir(parents=True, exist_ok=True)
        args.report_json.write_text(text + "\n", encoding="utf-8")
        print(f"report written to {args.report_json}")
    return 0


def ui() -> int:
    from promptopt_dagster.defs.home import ensure_dagster_home

    ensure_dagster_home(get_settings().dagster_home)
    os.chdir(PROJECT_ROOT)
    os.execvp("dagster", ["dagster", "dev", "-w", "workspace.yaml"])
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("  %(message)s"))
    root = logging.getLogger("promptopt")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        return optimize(args) if args.command == "optimize" else ui()
    except PromptOptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
