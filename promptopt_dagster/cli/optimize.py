"""`promptopt optimize`: run an optimization headless, with the same assets the UI shows.

`optimize` records every run in the project's persistent Dagster home, so `promptopt ui` (or
`dagster dev` with the same DAGSTER_HOME) shows them afterwards with their lineage and metadata.
The CLI drives the loop itself (the daemon may not be running); it tags its runs so the sensor
leaves them alone, and it acts on the same stop decision the sensor reads.

In order: the optimization is resolved (optimizations.yaml and the flags), checked before any run is recorded
(target metric, writer model, migration source, context window), then its jobs run in this process.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from promptopt_dagster.app.optimizations import OptimizationSpec, load_optimizations
from promptopt_dagster.app.preflight import check_fits_context, preflight
from promptopt_dagster.app.settings import get_settings
from promptopt_dagster.cli.overrides import add_override_flags, apply_overrides
from promptopt_dagster.cli.parser import HelpFormatter
from promptopt_dagster.cli.runs import definitions_here, step_failure_text
from promptopt_dagster.cli.summary import summary_text
from promptopt_dagster.core.errors import PromptOptError
from promptopt_dagster.core.formatting import fmt_refined
from promptopt_dagster.core.prompts import PromptVersion
from promptopt_dagster.core.yaml_input import load_yaml_text
from promptopt_dagster.defs.names import DATASET_JOB, DRIVER_TAG, ITERATION_JOB, LEADERBOARD_JOB, REPORT_JOB, START_JOB
from promptopt_dagster.llm.progress import bars_shown


def add_commands(sub) -> None:
    """The `optimize` subcommand, on the `promptopt` parser's subparsers."""
    opt = sub.add_parser(
        "optimize",
        help="optimize one dataset's prompt and report it on the held-out test split",
        description="Optimize one dataset's prompt, then score the initial and the best prompt "
        "on the held-out test split.",
        formatter_class=HelpFormatter,
    )
    which = opt.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--dataset",
        metavar="NAME",
        help="a dataset named in data/manifest.yaml; runs its optimization of the same name "
        "(optimizations.yaml may set it, else the defaults below)",
    )
    which.add_argument(
        "--optimization",
        metavar="NAME",
        help="an optimization named in data/optimizations.yaml (or a dataset's default)",
    )
    # The flags below override the optimization's settings (default: the optimization's own; the
    # values shown are a dataset's default optimization). An override is a different optimization
    # fingerprint, so it starts a new generation.
    add_override_flags(opt)
    opt.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the optimizer, e.g. num_candidates=4 (repeatable; a value is read as YAML)",
    )
    opt.add_argument("--report-json", type=Path, metavar="PATH", help="write the full report as JSON to this file")
    opt.add_argument("--json", action="store_true", help="print the full report as JSON instead of the summary")
    opt.add_argument("--verbose", action="store_true", help="show Dagster's own step logs and llama.cpp's messages")


def optimize(args: argparse.Namespace) -> int:
    settings = get_settings()  # first: a bad .env line is an error like any other input
    if not args.verbose:
        _native_log_to_file(settings.state_dir)
    # start-up: these import dagster (~0.5 s); `promptopt --help` and the other commands must not wait for it
    import dagster as dg

    from promptopt_dagster.defs.loop.chain import next_step, optimization_tags, start_run_config, stop_reason_of
    from promptopt_dagster.defs.partitions import ensure_iteration, iteration_key
    from promptopt_dagster.defs.runs import PID_TAG, describe, fail_dead_cli_runs, process_tags

    defs = definitions_here()

    # Fail fast, with the file named, before any run is recorded, any table touched or any model called.
    project = defs.resources["project"]
    if args.dataset:
        project.spec(args.dataset)  # names an unknown dataset
    optimization = _resolve_optimization(args, project.manifest())
    name, dataset = optimization.name, optimization.dataset
    spec = project.spec(dataset)
    splits = project.splits(
        dataset, unlabeled_ok=optimization.source_model is not None
    )  # labels: a migration's come from its source model
    initial = project.initial_prompt(dataset)
    task_model, optimizer_model = defs.resources["task_model"], defs.resources["optimizer_model"]
    suite = preflight(  # the same checks the start asset makes (app/preflight.py), here before any run is recorded
        optimization,
        spec,
        task_default=task_model.settings(),
        optimizer_default=optimizer_model.settings(),
        build_suite=lambda: project.suite(dataset, target=optimization.target_metric),
        target_flag=args.target_metric is not None,
    )
    check_fits_context(
        task_model.client_for(optimization.task_model), spec, splits, initial, optimization, settings.data_dir
    )

    instance = dg.DagsterInstance.get()
    for run in fail_dead_cli_runs(instance):
        say(f"marked {describe(run)} failed: its process {run.tags[PID_TAG]} is gone")
    start_config = start_run_config(optimization)
    level = "DEBUG" if args.verbose else "CRITICAL"  # failures are reported below, in the user's terms
    loggers = {"loggers": {"console": {"config": {"log_level": level}}}}
    tags = {DRIVER_TAG: "cli", **process_tags(), **optimization_tags(optimization, optimization.fingerprint(spec))}
    started = time.perf_counter()
    this_run = {"llm_calls": 0, "cache_hits": 0}

    def mine(run: dg.DagsterRun) -> bool:
        return all(run.tags.get(k) == v for k, v in tags.items())

    def run(job_name: str, partition_key, with_config: bool = False):
        job = defs.resolve_job_def(job_name)
        config = {**loggers, **(start_config if with_config else {})}
        result = job.execute_in_process(
            partition_key=partition_key, instance=instance, run_config=config, tags=tags, raise_on_error=False
        )
        if not result.success and _was_interrupted(result):
            raise _Interrupted(result.run_id)
        if not result.success:
            raise PromptOptError(
                f"Run {result.run_id} ({job_name}, partition {partition_key}) failed: {_failure_message(result)}"
            )
        return result

    try:
        say(f"[{name}] loading and validating the dataset splits of {dataset}; scoring with {suite.describe()}")
        run(DATASET_JOB, dataset)
        started_run = run(START_JOB, name, with_config=True)
        generation = int(started_run.asset_materializations_for_node("optimization")[0].metadata["generation"].value)
        references = started_run.asset_materializations_for_node("migration_references")
        if optimization.source_model is not None and references:  # the source model's calls count in this run
            for key in this_run:
                this_run[key] += references[0].metadata[key].value
        say(f"[{name}] generation {generation} (settings fingerprint {optimization.fingerprint(spec)})")
        iteration = 0
        while True:
            ensure_iteration(instance, generation, iteration)
            if bars_shown():
                say(f"[{name}] iteration {iteration}: baseline -> optimizer ({optimization.optimizer}) -> refined")
            result = run(ITERATION_JOB, iteration_key(name, generation, iteration))
            best = result.asset_materializations_for_node("best_prompt")[-1]
            compare = result.asset_materializations_for_node("comparison_report")[-1].metadata
            for key in this_run:
                this_run[key] += compare[key].value
            stop_reason = stop_reason_of(best)
            say(
                f"[{name}] iteration {iteration}: {suite.target} baseline "
                f"{compare['baseline_score'].value:.4f}, refined {fmt_refined(compare['refined_score'].value)}, "
                f"{'accepted' if compare['accepted'].value else 'rejected'}; best {compare['best_score'].value:.4f}; "
                f"{'stop: ' + stop_reason if stop_reason else 'continue'}; {compare['llm_calls'].value} model calls, "
                f"{compare['cache_hits'].value} cached ({time.perf_counter() - started:.0f}s)"
            )
            step = next_step(name, generation, iteration, stop_reason)
            if step.iteration is None:
                break
            iteration = step.iteration

        say(f"[{name}] final report: initial and best prompt on the held-out test split")
        result = run(REPORT_JOB, name)
        board = run(LEADERBOARD_JOB, dataset).output_for_node("leaderboard")
    except (KeyboardInterrupt, _Interrupted) as exc:
        _cancel_interrupted(instance, mine, getattr(exc, "run_id", None))
        return 130
    final = result.asset_materializations_for_node("final_report")[-1].metadata
    for key in this_run:
        this_run[key] += final[key].value
    report = final["report"].value
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    report["this_run"] = this_run
    text = json.dumps(report, indent=2, ensure_ascii=False)
    best_path = settings.state_dir / "best_prompts" / f"{name}.json"
    best_path.parent.mkdir(parents=True, exist_ok=True)
    # the report names a retrieval pool by reference; the best-prompt file, read by applications alone, carries it
    best = defs.resources["state_store"].with_pool(PromptVersion.model_validate(report["best_prompt"]))
    best_path.write_text(json.dumps(json.loads(best.to_json()), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if args.report_json:
        args.report_json.parent.mkdir(parents=True, exist_ok=True)
        args.report_json.write_text(text + "\n", encoding="utf-8")
    mine_now = board[(board["optimization"] == name) & board["current"]]
    rank = f"{int(mine_now.iloc[0]['rank'])} of {len(board)}" if len(mine_now) else "not ranked"
    print(text if args.json else summary_text(name, report, this_run, best_path, rank), flush=True)
    if args.report_json and not args.json:
        print(f"  report JSON written to {args.report_json}", flush=True)
    return 0


def _native_log_to_file(state_dir: Path) -> None:
    """llama.cpp's own messages (the `promptopt.llama` logger) go to <state dir>/llama.log, not the terminal."""
    state_dir.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(state_dir / "llama.log", encoding="utf-8", delay=True)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logging.getLogger("promptopt.llama").addHandler(file_handler)


def _resolve_optimization(args: argparse.Namespace, datasets) -> OptimizationSpec:
    """The dataset's optimization with the flags given on the command line applied; checked like the YAML."""
    settings = get_settings()
    specs = load_optimizations(settings.optimizations_path, datasets)
    name = args.optimization or args.dataset
    if name not in specs:
        raise PromptOptError(
            f"--optimization {name!r} is neither in {settings.optimizations_path} nor a dataset "
            f"of the manifest; known: {', '.join(sorted(specs))}."
        )
    entry = apply_overrides(args, specs[name].model_dump())
    if args.optimizer is not None and args.optimizer != specs[name].optimizer:
        entry["options"] = {}  # the other optimizer's options do not apply
    entry["options"] = {**entry["options"], **_parse_options(args.option)}
    try:
        return OptimizationSpec(**entry)
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'-'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
        )
        raise PromptOptError(problems.replace("--options", "--option")) from None


def _parse_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise PromptOptError(f"--option {pair!r}: expected KEY=VALUE, e.g. --option num_candidates=4.")
        options[key.strip()] = load_yaml_text(value, f"--option {key.strip()}") if value.strip() else None
    return options


# The checks before any run is recorded: each says what to change, in the user's terms.


# Running the jobs: a failure in the user's terms, Ctrl-C as a canceled run.


class _Interrupted(Exception):
    """Ctrl-C inside a run: Dagster turns the SIGINT into a failed step instead of raising it."""

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id)
        self.run_id = run_id


def _was_interrupted(result) -> bool:
    for event in result.all_events:
        error = event.step_failure_data.error if event.is_step_failure else None
        while error is not None:
            if error.cls_name in ("DagsterExecutionInterruptedError", "KeyboardInterrupt"):
                return True
            error = error.cause
    return False


def _failure_message(result) -> str:
    """Why a run failed in the user's terms: a failed blocking check's own description, else the
    innermost error of the failed step (e.g. a DatasetError), never Dagster's wrapper."""
    import dagster as dg  # start-up: dagster takes ~0.5 s to import; `promptopt --help` must not wait for it

    checks = [
        e for e in result.get_asset_check_evaluations() if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR
    ]
    if checks:
        return "; ".join(
            f"quality check {e.check_name} on {e.asset_key.to_user_string()} failed: "
            f"{e.description or 'no description'}"
            for e in checks
        )
    return step_failure_text(result)


def _cancel_interrupted(instance, mine, run_id: str | None) -> None:
    """Ctrl-C: one line, and the run that was executing is marked canceled, not left STARTED or FAILED."""
    # start-up: these import dagster (~0.5 s); `promptopt --help` and the other commands must not wait for it
    import dagster as dg

    from promptopt_dagster.defs.runs import describe, executing_runs

    runs = [r for r in executing_runs(instance) if mine(r)]
    if run_id is not None:
        runs.append(instance.get_run_by_id(run_id))
    canceled = []
    for run in runs:
        if run is not None and run.status != dg.DagsterRunStatus.CANCELED:
            instance.report_run_canceled(run, "Interrupted with Ctrl-C in `promptopt optimize`.")
            canceled.append(describe(run))
    what = f"{canceled[0]} marked canceled" if canceled else "no run was in progress"
    print(
        f"interrupted: {what}. Answers already received are cached; the same command resumes from there.",
        file=sys.stderr,
        flush=True,
    )


def say(text: str) -> None:
    """A status line for the person at the terminal (stderr; stdout keeps the summary or the JSON)."""
    print(text, file=sys.stderr, flush=True)
