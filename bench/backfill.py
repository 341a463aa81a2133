"""Backfill three optimizations under a real `dagster dev`, one run at a time and three at a time; print the speedup.

Each setting gets a fresh state dir and a fresh `promptopt ui` (webserver, daemon, sensors), with the
task model on a fake OpenAI-compatible server that answers after a fixed latency (the remote case,
where runs wait on the network). The datasets are loaded first (their own backfill, timed apart);
the clock runs from the backfill of the three optimizations to the last of their final reports,
every iteration in between launched by the sensor; each optimization runs exactly 3 iterations. Same datasets, same
settings, same server in both: only the run queue limit differs.

    .venv/bin/python bench/backfill.py [--latency-s 0.1] [--datasets sst2 sms_spam atis_intent]

`--cluster` runs the cluster deployment instead (docs/deploy.md): Dagster's instance, the tables, the state
and the response cache in Postgres (a throwaway cluster of Debian's server, a fresh database per setting),
artifacts in gcp-storage-emulator, every run its own process in an empty directory
(FreshProcessRunLauncher), two optimizations of each dataset (six by default), at concurrency 1 and 6:

    .venv/bin/python bench/backfill.py --cluster [--concurrency 6]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dagster as dg  # noqa: E402
import yaml  # noqa: E402

from promptopt_dagster.app.settings import PROJECT_ROOT  # noqa: E402
from promptopt_dagster.defs.process_launcher import CPU_TAG  # noqa: E402
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


def equal_loops(datasets: list[str], work: Path, per_dataset: int = 1) -> tuple[Path, list[str]]:
    """A copy of data/ whose optimizations.yaml gives every optimization exactly 3 iterations, so the comparison
    measures runs side by side, not which dataset's loop happens to stop first; with `per_dataset` > 1, that
    many optimizations of each dataset (different seeds). The data dir and the optimizations' names."""
    data = work / "data"
    stop = {"stop": {"max_iterations": 3, "patience": 3, "target_score": 1.1}}
    if per_dataset == 1:
        entries = {d: stop for d in datasets}
    else:
        entries = {f"{d}_{i}": {**stop, "dataset": d, "seed": i} for d in datasets for i in range(per_dataset)}
    if not data.exists():
        shutil.copytree(PROJECT_ROOT / "data", data)
        (data / "optimizations.yaml").write_text(yaml.safe_dump({"optimizations": entries}))
    return data, list(entries)


def machine_busy_s() -> float | None:
    """CPU seconds every core of this machine has spent busy since boot (Linux /proc/stat; None elsewhere).

    The difference over a setting is everything the machine did: the run processes (which the runs' CPU tag
    counts) and the services around them (webserver, daemon, code server, Postgres, the bucket emulator, the
    fake model, this bench), so the services' share of a 2-core machine can be read off too."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


SERVICES = (  # (name, how its command line starts), first match wins; run processes are counted by their tag
    ("runs", "dagster api execute_run"),
    ("webserver", "-m dagster_webserver"),
    ("daemon", "-m dagster._daemon"),
    ("code server", "-m dagster api grpc"),
    ("code server", "-m dagster code-server"),
    ("dagster dev", "-m dagster dev"),
    ("dagster dev", "promptopt ui"),
    ("Postgres", "/usr/lib/postgresql/"),  # the postmaster; a backend retitles itself "postgres: ..."
    ("Postgres", "postgres:"),
)


def _service(command: str) -> str | None:
    """The service a command line belongs to, read from its head: the tail of a Dagster process's holds the
    instance's settings (where "postgres" can appear whatever the process is)."""
    head = command[:120]
    return next((name for name, needle in SERVICES if needle in head), None)


def service_cpu_s() -> dict[str, float]:
    """CPU seconds each long-lived process of a setting has used so far, by service (Linux /proc; {} elsewhere).

    The difference over a setting splits the machine's busy time that the run processes' own tag does not
    count. A process's own time only (utime + stime), except Postgres's postmaster, whose reaped children (a
    backend per connection, most gone by the end) are in its cutime + cstime. This bench's process holds the
    fake model server, the bucket emulator and its own polling of the instance."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        own, children = int(stat[11]) + int(stat[12]), int(stat[13]) + int(stat[14])
        if int(entry.name) == os.getpid():
            name = "this bench (fake model, bucket emulator)"
        else:
            name = _service(command)
            if name is None or name == "runs":
                continue
        postmaster = name == "Postgres" and not command.startswith("postgres:")
        out[name] = out.get(name, 0.0) + (own + (children if postmaster else 0)) / tick
    return out


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
                "cpu": float(run.tags[CPU_TAG]) if CPU_TAG in run.tags else None,
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
    cpu = [r["cpu"] for r in rows if r["cpu"] is not None]  # runs of the cluster's FreshProcessRunLauncher
    return {
        "run_cpu_s": mean(cpu),
        "runs_cpu_s": sum(cpu),
        "runs": len(rows),
        "queued_and_starting_s": mean([r["start"] - r["created"] for r in rows]),
        "executing_s": mean([r["end"] - r["start"] for r in rows]),
        "executing_iteration_s": mean([r["end"] - r["start"] for r in rows if r["job"] == "optimize_iteration"]),
        "sensor_wait_s": mean(sensor_waits),
        "max_queued_and_starting_s": max([r["start"] - r["created"] for r in rows], default=float("nan")),
        "max_sensor_wait_s": max(sensor_waits, default=float("nan")),
    }


def postgres_sessions(url: str) -> int:
    """Connections Postgres has accepted since its start, over all databases (pg_stat_database, Postgres 14+)."""
    from promptopt_dagster.llm.store_location import connect_postgres, run_postgres

    con = connect_postgres(url, timeout_s=60)
    try:
        return int(run_postgres(con, "select coalesce(sum(sessions), 0) from pg_stat_database")[0][0])
    finally:
        con.close()


def one_setting(
    datasets: list[str], concurrency: int, server: FakeLLMServer, work: Path, cluster: dict | None = None
) -> tuple[float, int, dict]:
    """Wall seconds from the backfill of the optimizations to the last final report (the datasets are loaded
    first, by their own backfill, and not counted), the runs it took, and where the time went. `cluster`: the
    cluster deployment's settings (Postgres, bucket) for this setting."""
    sessions = (lambda: postgres_sessions(cluster["PROMPTOPT_WAREHOUSE_URL"])) if cluster else (lambda: 0)
    state, port = work / f"state-{concurrency}", free_port()
    data, names = equal_loops(datasets, work, 2 if cluster else 1)
    env = {
        "PROMPTOPT_TASK__BACKEND": "openai",
        "PROMPTOPT_TASK__BASE_URL": server.openai_base_url,
        "OPENAI_API_KEY": "sk-bench",
        "PROMPTOPT_TASK__MAX_IN_FLIGHT": "4",
        "PROMPTOPT_MAX_CONCURRENT_RUNS": str(concurrency),
        "PROMPTOPT_DATA_DIR": str(data),
        **(cluster or {}),
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
        started, busy, services, opened = time.perf_counter(), machine_busy_s(), service_cpu_s(), sessions()
        print(
            f"  max_concurrent_runs={concurrency}: datasets loaded in {started - loading:.0f} s (not counted below)",
            flush=True,
        )
        backfill(port, "start_optimization", names)  # the optimizations; the sensor does the rest
        runs = wait_for(
            dagster_env,
            lambda runs: sum(r.job_name == "final_report_job" and r.is_finished for r in runs) == len(names),
            3600,
            "the final reports",
        )
        wall, busy_after, services_after = time.perf_counter() - started, machine_busy_s(), service_cpu_s()
        spent = breakdown(dagster_env)
        spent["services_s"] = {k: v - services.get(k, 0.0) for k, v in services_after.items()}
        spent["postgres_sessions"] = sessions() - opened
        spent["machine_busy_s"] = busy_after - busy if busy is not None and busy_after is not None else None
        return wall, len(runs), spent
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
    parser.add_argument("--concurrency", type=int, help="the run queue limit compared with 1 (3; 6 with --cluster)")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="the cluster deployment: Postgres instance, tables and cache, runs in fresh processes, six optimizations",
    )
    args = parser.parse_args()
    concurrency = args.concurrency or (6 if args.cluster else 3)
    target = 4.0 if args.cluster else 2.5
    with (
        tempfile.TemporaryDirectory() as tmp,
        FakeLLMServer("openai", answer=lambda r: "positive", latency_s=args.latency_s) as server,
    ):
        postgres = emulator = None
        if args.cluster:
            from gcp_storage_emulator.server import create_server

            from promptopt_dagster_tests.postgres_server import PostgresServer

            postgres = PostgresServer().start()
            port = free_port()
            emulator = create_server("127.0.0.1", port, in_memory=True, default_bucket="promptopt-bench")
            emulator.start()
        results = {}
        try:
            for setting in (1, concurrency):
                cluster = None
                if args.cluster:
                    cluster = {
                        "PROMPTOPT_DEPLOYMENT": "cluster",
                        "PROMPTOPT_WAREHOUSE_URL": postgres.database(),  # nothing carried over between settings
                        "PROMPTOPT_GCS_BUCKET": "promptopt-bench",
                        "PROMPTOPT_GCS_PREFIX": f"setting-{setting}",
                        "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}",
                        "GOOGLE_CLOUD_PROJECT": "promptopt-bench",
                    }
                wall, runs, spent = one_setting(args.datasets, setting, server, Path(tmp), cluster)
                results[setting] = wall
                print(
                    f"max_concurrent_runs={setting}: {wall:.0f} s for {runs} runs "
                    f"({len(args.datasets) * (2 if args.cluster else 1)} optimizations, fake model latency "
                    f"{args.latency_s * 1000:.0f} ms); per run, mean (max): "
                    f"{spent['queued_and_starting_s']:.1f} s ({spent['max_queued_and_starting_s']:.1f}) queued and "
                    f"starting, {spent['executing_s']:.1f} s executing ({spent['executing_iteration_s']:.1f} s an "
                    f"iteration), {spent['sensor_wait_s']:.1f} s ({spent['max_sensor_wait_s']:.1f}) waiting for the "
                    "sensor to chain it",
                    flush=True,
                )
                if spent["runs_cpu_s"]:
                    print(
                        f"  the run processes used {spent['runs_cpu_s']:.0f} CPU seconds ({spent['run_cpu_s']:.1f} a run): "
                        f"on {os.cpu_count()} cores they alone need at least {spent['runs_cpu_s'] / os.cpu_count():.0f} s",
                        flush=True,
                    )
                if spent["machine_busy_s"] is not None:
                    busy, core_s = spent["machine_busy_s"], wall * os.cpu_count()
                    rest = (
                        f"; besides the run processes, {busy - spent['runs_cpu_s']:.0f} s went to the services "
                        "(webserver, daemon, code server, Postgres, bucket emulator, fake model) and this bench"
                        if spent["runs_cpu_s"]
                        else ""
                    )
                    print(
                        f"  the machine was busy {busy:.0f} of {core_s:.0f} core-seconds ({busy / core_s:.0%}){rest}",
                        flush=True,
                    )
                if spent["services_s"]:
                    named = sorted(spent["services_s"].items(), key=lambda kv: -kv[1])
                    print("  services' CPU: " + ", ".join(f"{k} {v:.0f} s" for k, v in named), flush=True)
                if spent["postgres_sessions"]:
                    print(
                        f"  Postgres accepted {spent['postgres_sessions']} connections "
                        f"({spent['postgres_sessions'] / runs:.0f} a run)",
                        flush=True,
                    )
        finally:
            if emulator is not None:
                emulator.stop()
            if postgres is not None:
                postgres.stop()
    print(f"speedup at {concurrency}: {results[1] / results[concurrency]:.2f}x (target at least {target}x)")


if __name__ == "__main__":
    main()
