"""Who may write the warehouse: dead CLI runs are released, and the CLI waits for a run started elsewhere."""

from __future__ import annotations

import subprocess
import time

import dagster as dg
import pytest
from dagster._core.utils import make_new_run_id

from promptopt_dagster.defs.names import DRIVER_TAG
from promptopt_dagster.defs.runs import PID_TAG, fail_dead_cli_runs, process_tags


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def _started_run(instance: dg.DagsterInstance, tags: dict) -> dg.DagsterRun:
    run = instance.add_run(
        dg.DagsterRun(
            job_name="optimize_iteration", run_id=make_new_run_id(), tags=tags, status=dg.DagsterRunStatus.STARTED
        )
    )
    return run


def test_only_cli_runs_of_a_dead_process_are_failed(instance):
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = _started_run(instance, {**process_tags(), DRIVER_TAG: "cli", PID_TAG: str(gone.pid)})
    alive = _started_run(instance, {**process_tags(), DRIVER_TAG: "cli"})  # this test's own process
    from_ui = _started_run(instance, {PID_TAG: str(gone.pid)})  # not a CLI run: the daemon owns it
    assert [r.run_id for r in fail_dead_cli_runs(instance)] == [dead.run_id]
    status = {r.run_id: r.status for r in instance.get_runs()}
    assert status[dead.run_id] == dg.DagsterRunStatus.FAILURE
    assert status[alive.run_id] == status[from_ui.run_id] == dg.DagsterRunStatus.STARTED


def test_a_run_waits_for_another_process_that_holds_the_warehouse_file(tmp_path, instance):
    """Runs go side by side: a write waits for the other process's short transaction, it does not fail."""
    import subprocess
    import sys

    from promptopt_dagster_tests.dagster_helpers import make_defs, prepare

    defs = make_defs(tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time\n"
            f"con = duckdb.connect({str(tmp_path / 'warehouse.duckdb')!r})\n"
            "print('held', flush=True); time.sleep(2); con.close()",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    started = time.perf_counter()
    result = prepare(defs, instance)
    holder.wait(timeout=30)
    assert result.success and time.perf_counter() - started >= 1.0
