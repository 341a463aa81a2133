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
import re
import sys
import time
from pathlib import Path

from promptopt_dagster.app.optimizations import OptimizationSpec, describe_model, load_optimizations, same_model
from promptopt_dagster.app.settings import get_settings
from promptopt_dagster.cli.overrides import add_override_flags, apply_overrides
from promptopt_dagster.core.errors import PromptOptError
from promptopt_dagster.core.formatting import fmt_interval, fmt_refined, fmt_score
from promptopt_dagster.core.prompts import PromptVersion
from promptopt_dagster.optimizers.capabilities import writer_model_problem

log = logging.getLogger("promptopt.cli")


class _Parser(argparse.ArgumentParser):
    """A bad flag is one line naming the flag and the rule, like every other promptopt error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="promptopt", description=__doc__.splitlines()[0], formatter_class=_Help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    opt = sub.add_parser(
        "optimize",
        help="optimize one dataset's prompt and report it on the held-out test split",
        description="Optimize one dataset's prompt, then score the initial and the best prompt "
        "on the held-out test split.",
        formatter_class=_Help,
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
    from promptopt_dagster.cli import jobs, leaderboard, promote, rewrite, ui

    ui.add_command(sub)
    leaderboard.add_command(sub)
    rewrite.add_command(sub)
    jobs.add_commands(sub)
    promote.add_commands(sub)
    return parser


def _parse_options(pairs: list[str]) -> dict:
    from promptopt_dagster.core.yaml_input import load_yaml_text

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise PromptOptError(f"--option {pair!r}: expected KEY=VALUE, e.g. --option num_candidates=4.")
        options[key.strip()] = load_yaml_text(value, f"--option {key.strip()}") if value.strip() else None
    return options


def _resolve_optimization(args: argparse.Namespace, datasets) -> OptimizationSpec:
    """The dataset's optimization with the flags given on the command line applied; checked like the YAML."""
    from pydantic import ValidationError

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


class _Interrupted(Exception):
    """Ctrl-C inside a run: Dagster turns the SIGINT into a failed step instead of raising it."""

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id)
        self.run_id = run_id


def definitions_here():
    """The code location's Definitions, with the project's Dagster home set up first, so a command's runs
    are recorded where `promptopt ui` shows them."""
    from promptopt_dagster.defs.home import ensure_dagster_home

    ensure_dagster_home(get_settings().dagster_home)
    from promptopt_dagster.definitions import defs

    return defs


def run_here(job_name: str, partition_key: str, tags: dict, ops: dict | None = None):
    """One run of a job in this process (leaderboard, promotion), tagged as the CLI's; a failure comes back in
    the result, for the command to explain in its own words."""
    import dagster as dg

    from promptopt_dagster.defs.loop import DRIVER_TAG

    run_config = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}, **({"ops": ops} if ops else {})}
    return (
        definitions_here()
        .resolve_job_def(job_name)
        .execute_in_process(
            partition_key=partition_key,
            instance=dg.DagsterInstance.get(),
            raise_on_error=False,
            tags={DRIVER_TAG: "cli", **tags},
            run_config=run_config,
        )
    )


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
    import dagster as dg

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


def step_failure_text(result) -> str:
    """Why a run's step failed, as one line in the user's terms: a dg.Failure's own description, else the innermost
    error's message without its class (never `dagster._core.definitions.events.Failure: ...`)."""
    for event in result.all_events:
        if not event.is_step_failure:
            continue
        data = event.step_failure_data
        if data.user_failure_data is not None and data.user_failure_data.description:
            return " ".join(data.user_failure_data.description.split())
        error = data.error
        while error is not None and error.cause is not None:
            error = error.cause
        if error is not None:
            message = re.sub(rf"^(?:[\w.]+\.)?{re.escape(error.cls_name or '')}: ", "", error.message.strip())
            return " ".join(message.split())
    return "the run failed; open it in the Dagster UI for details"


def _check_target(optimization, spec, flag: bool) -> None:
    from promptopt_dagster.scoring.suite import AGGREGATE

    names = [s.name for s in spec.scorers]
    if optimization.target_metric and optimization.target_metric not in (*names, AGGREGATE):
        where = "--target-metric" if flag else f"optimizations.{optimization.name}.target_metric"
        raise PromptOptError(
            f"{where} {optimization.target_metric!r} is neither '{AGGREGATE}' nor one of the "
            f"scorers of dataset '{spec.name}' ({', '.join(names)}). Pass one of those, or leave "
            f"the flag out to use the manifest's target_metric ({spec.target_metric})."
        )


def _check_optimizer_model(optimization) -> None:
    """Optimizers that ask a model to write prompts refuse the embedded one up front, instead of running
    iterations whose every proposal is refused."""
    from promptopt_dagster.llm.model_settings import PROMPT_SERVICES

    model = optimization.optimizer_model or get_settings().optimizer
    problem = writer_model_problem(optimization.optimizer, model.backend)
    if problem:
        raise PromptOptError(problem)
    task = optimization.task_model or get_settings().task
    if task.backend in PROMPT_SERVICES:
        raise PromptOptError(
            f"the task model's backend is {task.backend}, which rewrites prompts and cannot answer "
            "rows. Set PROMPTOPT_TASK__BACKEND (or task_model) to local, gemini or openai."
        )


def _check_context(client, spec, splits, prompt, optimization, data_dir: Path) -> None:
    """The initial prompt over every dev and test row the run will use fits the task model's context."""
    from promptopt_dagster.app.datasets import sample_rows
    from promptopt_dagster.llm.inference import build_requests, check_context

    for split, size in (("dev", optimization.eval_size), ("test", optimization.test_size)):
        rows = sample_rows(splits.split(split), size, optimization.seed)
        requests = build_requests(client, prompt, rows, spec.max_output_tokens, tuple(spec.completion_stop))
        check_context(client, requests, rows["row_id"].tolist(), prompt, str(data_dir / spec.files[split]))


def _check_migration(optimization) -> None:
    """A migration moves a prompt between two models: the source must not be the task model."""

    task = optimization.task_model or get_settings().task
    if optimization.source_model is not None and same_model(optimization.source_model, task):
        raise PromptOptError(
            f"optimizations.{optimization.name}.source_model is the task model "
            f"({describe_model(task)}, from {'task_model' if optimization.task_model else 'PROMPTOPT_TASK__*'}): "
            "a migration moves a prompt from one model to another. Set task_model (or "
            "PROMPTOPT_TASK__*) to the model the prompt moves to."
        )


def _migration_lines(migration: dict) -> list[str]:
    agreement, bounds = migration["agreement"], migration["agreement"]["intervals"]

    def score(value, interval) -> str:
        return fmt_score(value) + (f" {fmt_interval(interval)}" if interval else "")

    cost, per = migration["cost"], migration["per_answer"]
    lines = [
        f"  migration from {migration['source_model']}: agreement with its answers on {agreement['test_rows']} "
        f"test rows: before {score(agreement['before'], bounds.get('initial'))} -> after "
        f"{score(agreement['after'], bounds.get('best'))}"
    ]
    labels = migration.get("dataset_labels")
    if labels:
        lines.append(
            f"  the dataset's own labels ({labels['rows']} test rows): source {labels['source']:.4f}, "
            f"before {labels['initial']:.4f}, after {labels['best']:.4f}"
        )
    lines.append(
        "  cost: "
        + "; ".join(
            f"{role} {cost[role]['model']} {cost[role]['llm_calls']:,} calls + {cost[role]['cache_hits']:,} cached, "
            f"${cost[role]['cost_usd']:.4f} (${per[role].get('cost_usd_per_1k_answers', 0.0):.4f} per 1,000 answers)"
            for role in ("source", "task")
        )
    )
    return lines


def _summary(optimization: str, report: dict, this_run: dict, best_path: Path, rank: str) -> str:
    """A few lines a person reads at the end of a run; the full report is one flag away."""
    paid = (report.get("paid") or {}).get("total") or report["usage"]["total"]  # the usage ledger's figures
    best = report["best_prompt"]
    bounds = report.get("test_intervals", {})

    def score(name: str) -> str:
        interval = bounds.get(name)
        return fmt_score(report[name + "_test_score"]) + (f" {fmt_interval(interval)}" if interval else "")

    lines = [
        f"[{optimization}] {report['metric']} on {report['test_size']} held-out test rows (95% interval): "
        f"initial {score('initial')} -> best {score('best')}",
        f"  dev, {report['eval_size'] or 'all'} confirm rows: {report['initial_dev_score']:.4f} -> "
        f"{report['best_dev_score']:.4f} after {report['iterations']} iteration(s); stopped: {report['stop_reason']}",
        f"  model calls this run: {this_run['llm_calls']:,} ({this_run['cache_hits']:,} answers from the cache); "
        f"whole optimization: {paid['llm_calls']:,} paid calls, {paid['requests']:,} requests, "
        f"${paid['cost_usd']:.4f} (every run counted, interrupted ones too)",
        *(_migration_lines(report["migration"]) if report.get("migration") else []),
        f"  best prompt: v{best['version']} ({PromptVersion.model_validate(best).describe()}), written to {best_path}",
        f"  report: final_report[{optimization}] in the Dagster UI (`promptopt ui`); "
        "the JSON with --json or --report-json PATH",
        f"  leaderboard of {report['dataset']}: rank {rank} (`promptopt leaderboard {report['dataset']}`)",
    ]
    return "\n".join(lines)


def optimize(args: argparse.Namespace) -> int:
    import dagster as dg

    from promptopt_dagster.defs.home import ensure_dagster_home
    from promptopt_dagster.defs.loop import (
        DATASET_JOB,
        DRIVER_TAG,
        ITERATION_JOB,
        LEADERBOARD_JOB,
        REPORT_JOB,
        START_JOB,
        next_step,
        optimization_tags,
        start_run_config,
        stop_reason_of,
    )
    from promptopt_dagster.defs.partitions import ensure_iteration, iteration_key
    from promptopt_dagster.defs.runs import PID_TAG, describe, fail_dead_cli_runs, process_tags
    from promptopt_dagster.llm.progress import bars_shown

    settings = get_settings()
    ensure_dagster_home(settings.dagster_home)
    from promptopt_dagster.definitions import defs

    # Fail fast, with the file named, before any run is recorded, any table touched or any model called.
    project = defs.resources["project"]
    if args.dataset:
        project.spec(args.dataset)  # names an unknown dataset
    optimization = _resolve_optimization(args, project.manifest())
    name, dataset = optimization.name, optimization.dataset
    spec = project.spec(dataset)
    splits = project.splits(dataset, unlabeled_ok=optimization.source_model is not None)  # labels: see _check_migration
    initial = project.initial_prompt(dataset)
    _check_target(optimization, spec, flag=args.target_metric is not None)
    _check_optimizer_model(optimization)
    _check_migration(optimization)
    suite = project.suite(dataset, target=optimization.target_metric)  # unknown scorers, options, name clashes
    _check_context(
        defs.resources["task_model"].client_for(optimization.task_model),
        spec,
        splits,
        initial,
        optimization,
        settings.data_dir,
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
    best_path.write_text(json.dumps(report["best_prompt"], indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if args.report_json:
        args.report_json.parent.mkdir(parents=True, exist_ok=True)
        args.report_json.write_text(text + "\n", encoding="utf-8")
    mine_now = board[(board["optimization"] == name) & board["current"]]
    rank = f"{int(mine_now.iloc[0]['rank'])} of {len(board)}" if len(mine_now) else "not ranked"
    print(text if args.json else _summary(name, report, this_run, best_path, rank), flush=True)
    if args.report_json and not args.json:
        print(f"  report JSON written to {args.report_json}", flush=True)
    return 0


def _cancel_interrupted(instance, mine, run_id: str | None) -> None:
    """Ctrl-C: one line, and the run that was executing is marked canceled, not left STARTED or FAILED."""
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


def _setup_logging(args: argparse.Namespace) -> None:
    """One handler, on stderr: each promptopt log line is printed once. On a terminal, progress is a
    bar (llm/progress.py) and its log lines are kept out; llama.cpp's own messages go to a file."""
    from promptopt_dagster.llm.progress import PROGRESS_ATTR, show_bars

    bars = sys.stderr.isatty()
    show_bars(bars)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("  %(message)s"))
    if bars:
        handler.addFilter(lambda record: not getattr(record, PROGRESS_ATTR, False))
    root = logging.getLogger("promptopt")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    native = logging.getLogger("promptopt.llama")
    verbose = bool(getattr(args, "verbose", False))
    native.propagate = verbose
    native.setLevel(logging.DEBUG)
    if args.command == "optimize" and not verbose:
        state = get_settings().state_dir
        state.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(state / "llama.log", encoding="utf-8", delay=True)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        native.addHandler(file_handler)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _setup_logging(args)  # reads the settings: a bad .env line is an error like any other input
        from promptopt_dagster.cli import jobs, leaderboard, promote, rewrite, ui

        commands = {
            "optimize": optimize,
            "ui": ui.ui,
            "leaderboard": leaderboard.leaderboard,
            "rewrite": rewrite.rewrite,
            "promote": promote.promote,
            "rollback": promote.rollback,
            "render": promote.render,
            "submit": jobs.submit,
            "status": jobs.status,
            "cancel": jobs.cancel,
        }
        return commands[args.command](args)
    except PromptOptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before or between runs: nothing to mark
        print("interrupted.", file=sys.stderr)
        return 130


def run() -> None:
    """The console script. After a failed run DuckDB still holds native objects that the interpreter's
    shutdown reports as ~50 lines of 'nanobind: leaked ...' noise; every file and table is closed or
    flushed by then, so the process ends without that teardown."""
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
