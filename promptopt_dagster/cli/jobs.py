"""`promptopt submit`, `status` and `cancel`: optimizations run by a Dagster webserver's daemon.

`optimize` executes the loop in its own process. These commands only hand work to a running
`dagster dev` (or a deployed webserver) and read it back, as a CI job or a script would: the runs
queue under the daemon, go side by side, and the sensor chains each iteration to the next. Every run
of one submission carries the same `promptopt/submission` tag, so its whole chain can be followed.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import uuid
from typing import TYPE_CHECKING

from promptopt_dagster.app.datasets import load_manifest
from promptopt_dagster.app.optimizations import load_optimizations
from promptopt_dagster.app.settings import get_settings
from promptopt_dagster.cli.overrides import number
from promptopt_dagster.cli.parser import HelpFormatter
from promptopt_dagster.core.errors import PromptOptError
from promptopt_dagster.defs.names import DATASET_JOB, DRIVER_TAG, OPTIMIZATION_TAG, START_JOB, SUBMISSION_TAG

if TYPE_CHECKING:
    from promptopt_dagster.defs.webserver_client import RunView, Webserver

ACTIVE = {"QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"}


def add_commands(sub) -> None:
    """The three subcommands, on the `promptopt` parser's subparsers."""

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--url",
            help="the Dagster webserver (default: PROMPTOPT_DAGSTER_URL, else "
            "http://127.0.0.1:3000, where `promptopt ui` listens)",
        )

    submit = sub.add_parser(
        "submit",
        formatter_class=HelpFormatter,
        help="start a named optimization on a running Dagster webserver (`promptopt ui`)",
        description="Load the optimization's dataset, then start the optimization with the "
        "settings data/optimizations.yaml gives it; the webserver's sensor runs "
        "its iterations and final report. Prints the submission's start run id.",
    )
    submit.add_argument(
        "name",
        metavar="NAME",
        help="an optimization in data/optimizations.yaml, or a dataset (its default optimization)",
    )
    submit.add_argument(
        "--wait",
        action="store_true",
        help="follow the runs until the final report (exit 0) or a failed or canceled run (exit 1)",
    )
    submit.add_argument("--poll-s", type=number(float, ge=0.1), default=3.0, help="seconds between checks with --wait")
    common(submit)
    status = sub.add_parser(
        "status",
        formatter_class=HelpFormatter,
        help="where optimizations stand on the webserver: runs, iteration, scores, spend, errors",
        description="Without an argument: each optimization's latest run. With an optimization "
        "name: the runs of its latest submission, their scores and spend, and "
        "the innermost error of a failed run. With a run id (or its first 8 "
        "characters): that run.",
    )
    status.add_argument("target", nargs="?", metavar="NAME|RUN_ID", help="an optimization name or a run id")
    status.add_argument("--json", action="store_true", help="print what is shown as JSON")
    common(status)
    cancel = sub.add_parser(
        "cancel",
        formatter_class=HelpFormatter,
        help="stop a run (or every queued and running run of an optimization)",
        description="Terminate a run on the webserver; a queued run is dropped from the queue. "
        "With an optimization name, every run of it not finished yet. Answers "
        "already received stay in the response cache.",
    )
    cancel.add_argument(
        "target", metavar="RUN_ID|NAME", help="a run id (or its first 8 characters), or an optimization name"
    )
    cancel.add_argument(
        "--no-wait",
        action="store_true",
        help="return once the cancel is requested, not when the run reports it canceled",
    )
    common(cancel)


def _server(args) -> Webserver:
    # start-up: the client brings urllib.request and http.client (~6 ms), which only these three commands need
    from promptopt_dagster.defs.webserver_client import Webserver

    return Webserver(args.url or get_settings().dagster_url)


def _specs():
    settings = get_settings()
    return load_optimizations(settings.optimizations_path, load_manifest(settings.manifest_path))


def _number(value, digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _where(run: RunView) -> str:
    """start_optimization sst2, iteration g1-i0, ... as a person reads it."""
    part = run.partition or ""
    iteration = next((p for p in part.split("|") if re.fullmatch(r"g\d+-i\d+", p)), None)
    if iteration:
        return f"iteration {iteration}"
    return f"{run.job} {part}".strip()


def _ledger_path():
    """The response cache holding the usage ledger, when this machine has it (None: status falls back to the
    spend the runs' assets recorded, which misses canceled and killed runs)."""
    location = get_settings().llm_cache
    return location if isinstance(location, str) or location.exists() else None


def _generation_of(runs: list[RunView]) -> int | None:
    """The generation the runs worked on: their tag, else the newest iteration partition (`g2-i0`) among them."""
    for run in reversed(runs):
        if run.tags.get("promptopt/generation"):
            return int(run.tags["promptopt/generation"])
        found = re.search(r"(?:^|\|)g(\d+)-i\d+(?:$|\|)", run.partition or "")
        if found:
            return int(found.group(1))
    return None


def paid_spend(name: str, generation: int | None) -> dict | None:
    """What the optimization (the generation, when known) paid, from the usage ledger: every run counted."""
    # start-up: the ledger brings sqlite3 (~3 ms with it), which only `status` needs, not every `promptopt` command
    from promptopt_dagster.llm import ledger

    path = _ledger_path()
    if path is None:
        return None
    paid = ledger.spend(path, name, generation, unassigned=generation is not None)
    return {
        "llm_calls": paid.llm_calls,
        "requests": paid.requests,
        "errors": paid.errors,
        "tokens": paid.tokens,
        "cost_usd": round(paid.cost_usd, 6),
    }


def run_summary(run: RunView, paid=None) -> dict:
    """What a run did, from its assets' metadata: scores, the stop decision, the optimization's spend; `paid`:
    the run's own paid calls (a UsageStats from the usage ledger), shown whether or not it finished."""
    out: dict = {"run_id": run.run_id, "job": run.job, "partition": run.partition, "status": run.status}
    if paid is not None:
        out["paid"] = {"llm_calls": paid.llm_calls, "requests": paid.requests, "cost_usd": round(paid.cost_usd, 6)}
    compare = run.materialized.get("comparison_report")
    if compare:
        out.update({k: compare.get(k) for k in ("baseline_score", "refined_score", "accepted", "best_score")})
    best = run.materialized.get("best_prompt", {})
    if best.get("stop_reason"):
        out["stop_reason"] = best["stop_reason"]
    report = run.materialized.get("final_report")
    if report:
        out.update({k: report.get(k) for k in ("initial_test_score", "best_test_score")})
        out["stop_reason"] = (report.get("report") or {}).get("stop_reason")
    spent = best or report or {}
    if "optimization_llm_calls" in spent:
        out["spend"] = {
            k.removeprefix("optimization_"): spent[k]
            for k in (
                "optimization_llm_calls",
                "optimization_cache_hits",
                "optimization_requests",
                "optimization_tokens",
                "optimization_cost_usd",
            )
            if k in spent
        }
    return out


def run_line(run: RunView, error: str | None = None, paid=None) -> str:
    s = run_summary(run, paid)
    parts = [f"{run.run_id[:8]}  {_where(run):<28} {run.status:<9}"]
    if "baseline_score" in s:
        parts.append(
            f"baseline {_number(s['baseline_score'])}, refined {_number(s['refined_score'])}, "
            f"{'accepted' if s['accepted'] else 'rejected'}; best {_number(s['best_score'])}"
        )
    if "best_test_score" in s:
        parts.append(f"test: initial {_number(s['initial_test_score'])} -> best {_number(s['best_test_score'])}")
    if s.get("stop_reason"):
        parts.append(f"stop: {s['stop_reason']}")
    if "paid" in s:
        parts.append(f"this run paid {s['paid']['llm_calls']:,} calls, ${s['paid']['cost_usd']:.4f}")
    elif "spend" in s:
        parts.append(f"spent {s['spend'].get('llm_calls', 0):,} calls, ${s['spend'].get('cost_usd', 0.0):.4f}")
    line = "  ".join(parts[:1]) + ("  " + "; ".join(parts[1:]) if parts[1:] else "")
    return line + (f"\n          error: {error}" if error else "")


def chain_state(runs: list[RunView]) -> str:
    """One word for a submission's chain of runs (oldest first)."""
    last = runs[-1]
    if any(r.status in ACTIVE for r in runs):
        active = [r for r in runs if r.status in ACTIVE][-1]
        return (
            f"{'canceling' if active.status == 'CANCELING' else 'running' if active.status != 'QUEUED' else 'queued'}"
            f" ({_where(active)})"
        )
    if last.status == "FAILURE":
        return "failed"
    if last.status == "CANCELED":
        return "canceled"
    if last.job == "final_report_job":
        return "finished"
    return "between runs (the sensor launches the next one within a minute)"


def optimization_view(server: Webserver, name: str) -> dict:
    runs = server.runs(tags={OPTIMIZATION_TAG: name}, limit=200)
    if not runs:
        return {"optimization": name, "state": "never run here", "runs": []}
    submission = runs[0].tags.get(SUBMISSION_TAG)
    chain = [r for r in runs if r.tags.get(SUBMISSION_TAG) == submission] if submission else runs[:20]
    chain.sort(key=lambda r: r.created)
    errors = {r.run_id: server.error_of(r.run_id) for r in chain if r.status == "FAILURE"}
    tags = chain[-1].tags
    generation = _generation_of(chain)
    by_run = {}
    path = _ledger_path()
    if path is not None:
        # start-up: the ledger brings sqlite3 (~3 ms with it), which only `status` needs, not every `promptopt` command
        from promptopt_dagster.llm import ledger

        by_run = ledger.spend_by_run(path, name)
    summaries = [
        {**run_summary(r, by_run.get(r.run_id)), **({"error": errors[r.run_id]} if r.run_id in errors else {})}
        for r in chain
    ]
    recorded = next((s["spend"] for s in reversed(summaries) if "spend" in s), None)
    paid = paid_spend(name, generation)
    # What was paid comes from the usage ledger, so a canceled or killed run's calls count; the cached answers
    # come from the assets' metadata (the ledger holds only paid calls). Without the ledger, the metadata alone.
    spend = (
        recorded
        if paid is None
        else {**paid, "cache_hits": (recorded or {}).get("cache_hits", 0), "source": "usage ledger"}
    )
    iterations = [_where(r) for r in chain if r.job == "optimize_iteration"]
    return {
        "optimization": name,
        "dataset": tags.get("promptopt/dataset"),
        "optimizer": tags.get("promptopt/optimizer"),
        "task_model": tags.get("promptopt/task_model"),
        "generation": None if generation is None else str(generation),
        "submission": submission,
        "state": chain_state(chain),
        "iteration": iterations[-1].removeprefix("iteration ") if iterations else None,
        "spend": spend,
        "runs": summaries,
        "_lines": [run_line(r, errors.get(r.run_id), by_run.get(r.run_id)) for r in chain],
    }


def _print_view(view: dict) -> None:
    if not view["runs"]:
        print(
            f"{view['optimization']}: no runs on this webserver; start one with `promptopt submit "
            f"{view['optimization']}`"
        )
        return
    generation = f"generation {view['generation']}" if view["generation"] else "no generation started yet"
    print(
        f"{view['optimization']}: {view['dataset']}, {view['optimizer']} on {view['task_model']}, "
        f"{generation}; state: {view['state']}"
    )
    for line in view["_lines"]:
        print(f"  {line}")
    if view["spend"]:
        spend = view["spend"]
        if spend.get("source") == "usage ledger":
            print(
                f"  spend so far: {spend['llm_calls']:,} paid model calls ({spend['requests']:,} requests), "
                f"{spend['tokens']:,} tokens, ${spend['cost_usd']:.4f}, every run counted, canceled and killed ones "
                f"too; {spend.get('cache_hits', 0):,} answers from the cache"
            )
        else:
            print(
                f"  spend so far: {spend.get('llm_calls', 0):,} model calls + {spend.get('cache_hits', 0):,} cached "
                f"answers, {spend.get('tokens', 0):,} tokens, ${spend.get('cost_usd', 0.0):.4f}"
            )


def status(args: argparse.Namespace) -> int:
    server = _server(args)
    target = args.target
    if target is None:
        latest: dict[str, RunView] = {}
        for run in server.runs(limit=500):
            name = run.tags.get(OPTIMIZATION_TAG)
            if name and name not in latest:
                latest[name] = run
        rows = [{"optimization": n, **run_summary(r)} for n, r in sorted(latest.items())]
        if args.json:
            print(json.dumps(rows, indent=2))
        elif not rows:
            print(f"no optimization has run on {server.url}; start one with `promptopt submit NAME`")
        else:
            print(f"latest run of each optimization on {server.url}:")
            for name, run in sorted(latest.items()):
                print(f"  {name:<20} {run_line(run)}")
        return 0
    if target in _specs() or server.runs(tags={OPTIMIZATION_TAG: target}, limit=1):
        view = optimization_view(server, target)
        if args.json:
            print(json.dumps({k: v for k, v in view.items() if not k.startswith("_")}, indent=2))
        else:
            _print_view(view)
        return 1 if view["state"] == "failed" else 0
    if not re.fullmatch(r"[0-9a-f-]{4,36}", target):  # not a run id either: say what it could have been
        raise PromptOptError(
            f"{target!r} is neither an optimization in {get_settings().optimizations_path} nor a run "
            f"id; known optimizations: {', '.join(sorted(_specs())) or 'none'}."
        )
    run = server.find_run(target)
    error = server.error_of(run.run_id) if run.status == "FAILURE" else None
    if args.json:
        print(json.dumps({**run_summary(run), "tags": run.tags, **({"error": error} if error else {})}, indent=2))
    else:
        what = ", ".join(
            f"{k.removeprefix('promptopt/')} {v}"
            for k, v in run.tags.items()
            if k
            in (
                "promptopt/optimization",
                "promptopt/dataset",
                "promptopt/optimizer",
                "promptopt/task_model",
                "promptopt/generation",
            )
        )
        print(f"run {run.run_id} ({what or 'not an optimization run'})")
        print(f"  {run_line(run, error)}")
    return 1 if run.status == "FAILURE" else 0


def _wait_finished(server: Webserver, run_id: str, poll_s: float, timeout_s: float | None = None) -> RunView:
    deadline = None if timeout_s is None else time.time() + timeout_s
    while True:
        run = server.runs(run_ids=[run_id], limit=1)[0]
        if run.finished or (deadline is not None and time.time() > deadline):
            return run
        time.sleep(poll_s)


def submit(args: argparse.Namespace) -> int:
    # start-up: defs.loop.chain imports dagster (~0.5 s); `promptopt --help` must not wait for it
    from promptopt_dagster.defs.loop.chain import optimization_tags, start_run_config

    specs = _specs()
    if args.name not in specs:
        raise PromptOptError(
            f"{args.name!r} is neither an optimization in {get_settings().optimizations_path} nor "
            f"a dataset of the manifest; known: {', '.join(sorted(specs))}."
        )
    spec = specs[args.name]
    server = _server(args)
    if spec.name not in server.partitions(START_JOB):
        say(f"[{spec.name}] not a partition of the webserver's definitions yet: reloading its code location")
        server.reload()
        if spec.name not in server.partitions(START_JOB):
            raise PromptOptError(
                f"the webserver at {server.url} still has no optimization {spec.name!r} after a "
                "reload: does it serve this project's data/optimizations.yaml (PROMPTOPT_DATA_DIR)?"
            )
    submission = uuid.uuid4().hex[:12]
    fingerprint = spec.fingerprint(load_manifest(get_settings().manifest_path)[spec.dataset])
    tags = {**optimization_tags(spec, fingerprint), SUBMISSION_TAG: submission, DRIVER_TAG: "submit"}
    prepare = server.launch(DATASET_JOB, spec.dataset, tags)
    say(f"[{spec.name}] loading dataset {spec.dataset}: run {prepare}")
    run = _wait_finished(server, prepare, args.poll_s if args.wait else 1.0)
    if run.status != "SUCCESS":
        error = server.error_of(prepare) or run.status.lower()
        raise PromptOptError(f"run {prepare} ({DATASET_JOB} {spec.dataset}) {run.status.lower()}: {error}")
    start = server.launch(START_JOB, spec.name, tags, run_config=start_run_config(spec))
    say(
        f"[{spec.name}] started: run {start} (submission {submission}); the sensor runs each iteration and the "
        f"final report. Follow it with `promptopt status {spec.name}` or in the UI at {server.url}/runs"
    )
    print(start, flush=True)
    return _follow(server, spec.name, submission, args.poll_s) if args.wait else 0


def _follow(server: Webserver, name: str, submission: str, poll_s: float) -> int:
    shown: set[str] = set()
    try:
        while True:
            chain = sorted(server.runs(tags={SUBMISSION_TAG: submission}, limit=200), key=lambda r: r.created)
            for run in chain:
                if run.finished and run.run_id not in shown:
                    shown.add(run.run_id)
                    error = server.error_of(run.run_id) if run.status == "FAILURE" else None
                    say(f"[{name}] {run_line(run, error)}")
                    if run.status in ("FAILURE", "CANCELED"):
                        say(f"[{name}] stopped: run {run.run_id} {run.status.lower()}")
                        return 1
                    if run.job == "final_report_job":
                        return 0
            time.sleep(poll_s)
    except KeyboardInterrupt:
        say(f"[{name}] stopped waiting; the runs go on (`promptopt cancel {name}` stops them)")
        return 130


def cancel(args: argparse.Namespace) -> int:
    server = _server(args)
    if args.target in _specs() or server.runs(tags={OPTIMIZATION_TAG: args.target}, limit=1):
        runs = [r for r in server.runs(tags={OPTIMIZATION_TAG: args.target}, limit=200) if r.status in ACTIVE]
        if not runs:
            print(f"{args.target}: no queued or running run to cancel")
            return 0
    else:
        run = server.find_run(args.target)
        if run.finished:
            raise PromptOptError(f"run {run.run_id} ({_where(run)}) already ended {run.status}; nothing to cancel.")
        runs = [run]
    ended = []
    for run in runs:
        server.terminate(run.run_id)
        run = (
            server.runs(run_ids=[run.run_id], limit=1)[0]
            if args.no_wait
            else _wait_finished(server, run.run_id, poll_s=1.0, timeout_s=120)
        )
        ended.append(run.status)
        print(f"run {run.run_id} ({_where(run)}): {run.status}", flush=True)
    return 0 if args.no_wait or all(status == "CANCELED" for status in ended) else 1


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
