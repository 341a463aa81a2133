"""Backfill three optimizations under a real `dagster dev`, one run at a time and three at a time; print the speedup.

Each setting gets a fresh state dir and a fresh `promptopt ui` (webserver, daemon, sensors), with the
task model on a fake OpenAI-compatible server that answers after a fixed latency (the remote case,
where runs wait on the network). The datasets are loaded first (their own backfill, timed apart);
the clock runs from the backfill of the three optimizations to the last of their final reports,
every iteration in between launched by the sensor; each optimization runs exactly 3 iterations. Same datasets, same
settings, same server in both: only the run queue limit differs.

    .venv/bin/python bench/backfill.py [--latency-s 0.1] [--datasets sst2 sms_spam atis_intent]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dagster as dg  # noqa: E402
import yaml  # noqa: E402

from promptopt_dagster.app.settings import PROJECT_ROOT  # noqa: E402
from promptopt_dagster_tests.dagster_dev_helpers import (  # noqa: E402
    backfill,
    free_port,
    open_instance,
    start_ui,
    stop_ui,
    wait_for,
    wait_for_webserver,
)
from promptopt_dagster_tests.fake_llm_servers import FakeLLMServer  # noqa: E402


def equal_loops(datasets: list[str], work: Path) -> Path:
    """A copy of data/ whose optimizations.yaml gives every dataset's optimization exactly 3 iterations, so
    the comparison measures runs side by side, not which dataset's loop happens to stop first."""
    data = work / "data"
    if not data.exists():
        shutil.copytree(PROJECT_ROOT / "data", data)
        entries = {d: {"stop": {"max_iterations": 3, "patience": 3, "target_score": 1.1}} for d in datasets}
        (data / "optimizations.yaml").write_text(yaml.safe_dump({"optimizations": entries}))
    return data


def breakdown(env: dict) -> dict:
    """Where a setting's time went, from the instance's run records: seconds a run spent queued and
    starting (created -> RUN_START: dequeue, process start, imports), executing (RUN_START -> end), and,
    for a run the sensor chained, waiting for the sensor (the previous run's end -> this run created)."""
    with open_instance(env) as instance:
        records = instance.get_run_records()
        stats = {r.dagster_run.run_id: instance.get_run_stats(r.dagster_run.run_id) for r in records}
    rows = []
    for record in records:
        run, stat = record.dagster_run, stats[record.dagster_run.run_id]
        rows.append(
            {
                "job": run.job_name,
                "optimization": run.tags.get("promptopt/optimization"),
                "created": record.create_timestamp.timestamp(),
                "start": stat.start_time,
                "end": stat.end_time,
            }
        )
    rows = [r for r in rows if r["start"] and r["end"]]
    sensor_waits = []
    for row in rows:
        earlier = [
            o["end"]
            for o in rows
            if o["optimization"] and o["optimization"] == row["optimization"] and o["end"] <= row["created"]
        ]
        if row["job"] in ("optimize_iteration", "final_report_job") and earlier:
            sensor_waits.append(row["created"] - max(earlier))
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {
        "runs": len(rows),
        "queued_and_starting_s": mean([r["start"] - r["created"] for r in rows]),
        "executing_s": mean([r["end"] - r["start"] for r in rows]),
        "executing_iteration_s": mean([r["end"] - r["start"] for r in rows if r["job"] == "optimize_iteration"]),
        "sensor_wait_s": mean(sensor_waits),
    }


def one_setting(datasets: list[str], concurrency: int, server: FakeLLMServer, work: Path) -> tuple[float, int, dict]:
    """Wall seconds from the backfill of the optimizations to the last final report (the datasets are loaded
    first, by their own backfill, and not counted), the runs it took, and where the time went."""
    state, port = work / f"state-{concurrency}", free_port()
    env = {
        "PROMPTOPT_TASK__BACKEND": "openai",
        "PROMPTOPT_TASK__BASE_URL": server.openai_base_url,
        "OPENAI_API_KEY": "sk-bench",
        "PROMPTOPT_TASK__MAX_IN_FLIGHT": "4",
        "PROMPTOPT_MAX_CONCURRENT_RUNS": str(concurrency),
        "PROMPTOPT_DATA_DIR": str(equal_loops(datasets, work)),
    }
    proc, dagster_env = start_ui(state, port, work / f"dagster_dev-{concurrency}.log", extra_env=env)
    try:
        wait_for_webserver(port, proc, work / f"dagster_dev-{concurrency}.log")
        loading = time.perf_counter()
        backfill(port, "prepare_dataset", datasets)
        wait_for(
            dagster_env,
            lambda runs: sum(r.job_name == "prepare_dataset" and r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
            == len(datasets),
            600,
            "the datasets to load",
        )
        started = time.perf_counter()
        print(
            f"  max_concurrent_runs={concurrency}: datasets loaded in {started - loading:.0f} s (not counted below)",
            flush=True,
        )
        backfill(port, "start_optimization", datasets)  # each dataset's optimization; the sensor does the rest
        runs = wait_for(
            dagster_env,
            lambda runs: sum(r.job_name == "final_report_job" and r.is_finished for r in runs) == len(datasets),
            3600,
            "the final reports",
        )
        return time.perf_counter() - started, len(runs), breakdown(dagster_env)
    finally:
        stop_ui(proc)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=["sst2", "sms_spam", "atis_intent"],
        help="datasets of data/manifest.yaml to backfill",
    )
    parser.add_argument("--latency-s", type=float, default=0.1, help="the fake model's seconds per answer")
    parser.add_argument("--concurrency", type=int, default=3, help="the run queue limit compared with 1")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        FakeLLMServer("openai", answer=lambda r: "positive", latency_s=args.latency_s) as server,
    ):
        results = {}
        for concurrency in (1, args.concurrency):
            wall, runs, spent = one_setting(args.datasets, concurrency, server, Path(tmp))
            results[concurrency] = wall
            print(
                f"max_concurrent_runs={concurrency}: {wall:.0f} s for {runs} runs "
                f"({len(args.datasets)} datasets, fake model latency {args.latency_s * 1000:.0f} ms); per run, mean: "
                f"{spent['queued_and_starting_s']:.1f} s queued and starting, {spent['executing_s']:.1f} s executing "
                f"({spent['executing_iteration_s']:.1f} s an iteration), {spent['sensor_wait_s']:.1f} s waiting "
                "for the sensor to chain it",
                flush=True,
            )
    print(f"speedup at {args.concurrency}: {results[1] / results[args.concurrency]:.2f}x (target at least 2.5x)")


if __name__ == "__main__":
    main()
