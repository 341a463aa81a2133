"""CLI runs: who owns one, and when it died.

The CLI executes its runs in its own process, outside the daemon's run queue, and a process killed
with SIGKILL cannot report its run as failed. Dagster's run monitoring cannot see such a run either:
the default run launcher has no worker health check, so the run would stay STARTED forever, taking
a place in the run queue's limit. So each CLI run carries its process identity in tags; the CLI (on
its next start) and the `dead_cli_run_sensor` (in the daemon) mark runs whose process is gone as failed.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import dagster as dg

from promptopt_dagster.defs.names import DRIVER_TAG, PARTITION_TAG

PID_TAG, HOST_TAG, PROC_START_TAG = "promptopt/pid", "promptopt/host", "promptopt/proc_start"


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of a process (clock ticks since boot), so a reused pid is not taken for ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of proc(5), counted after the command name


def process_tags() -> dict[str, str]:
    """Tags that name the process executing a CLI run."""
    pid = os.getpid()
    return {PID_TAG: str(pid), HOST_TAG: socket.gethostname(), PROC_START_TAG: _proc_start(pid) or ""}


def owner_is_gone(run: dg.DagsterRun) -> bool:
    """True when the run was executed by a CLI process on this host that no longer exists."""
    tags = run.tags
    if tags.get(DRIVER_TAG) != "cli" or PID_TAG not in tags or tags.get(HOST_TAG) != socket.gethostname():
        return False
    pid = int(tags[PID_TAG])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by someone else
        return False
    started = tags.get(PROC_START_TAG)
    return bool(started) and _proc_start(pid) not in (None, started)


#: Runs that hold (or are about to hold) the warehouse. Queued runs are not counted: the daemon's
#: queue already makes them wait for ours, and with no daemon running they would wait forever.
EXECUTING = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


def executing_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return list(instance.get_runs(filters=dg.RunsFilter(statuses=EXECUTING)))


def fail_dead_cli_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """Mark in-progress CLI runs whose process is gone as failed; returns those runs."""
    dead = [run for run in executing_runs(instance) if owner_is_gone(run)]
    for run in dead:
        instance.report_run_failed(
            run,
            f"The promptopt process {run.tags[PID_TAG]} that executed this run is gone "
            "(killed or crashed); marked failed so queued runs can start.",
        )
    return dead


def describe(run: dg.DagsterRun) -> str:
    partition = run.tags.get(PARTITION_TAG)
    driver = run.tags.get(DRIVER_TAG) or "the UI or a backfill"
    return f"run {run.run_id[:8]} ({run.job_name}{', partition ' + partition if partition else ''}; from {driver})"
