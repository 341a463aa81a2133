"""Who may write the warehouse: dead CLI runs are released, and the CLI waits for a run started elsewhere."""

from __future__ import annotations

import subprocess
import threading
import time

import dagster as dg
import pytest
from dagster._core.utils import make_new_run_id

from promptopt_dagster.defs.loop import DRIVER_TAG
from promptopt_dagster.defs.runs import PID_TAG, fail_dead_cli_runs, process_tags, wait_for_other_runs


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def _started_run(instance: dg.DagsterInstance, tags: dict) -> dg.DagsterRun:
    run = instance.add_run(dg.DagsterRun(job_name="optimize_iteration", run_id=make_new_run_id(), tags=tags,
                                         status=dg.DagsterRunStatus.STARTED))
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


def test_the_cli_waits_for_a_run_started_from_the_ui(instance):
    ui_run = _started_run(instance, {DRIVER_TAG: "sensor"})
    said: list[str] = []

    def finish_later() -> None:
        time.sleep(1.0)
        instance.report_run_failed(instance.get_run_by_id(ui_run.run_id), "done elsewhere")

    threading.Thread(target=finish_later).start()
    started = time.perf_counter()
    wait_for_other_runs(instance, mine=lambda run: False, say=said.append, poll_s=0.1)
    assert time.perf_counter() - started >= 0.9
    assert len(said) == 1 and ui_run.run_id[:8] in said[0] and "waiting for" in said[0]


def test_a_run_waits_while_another_process_writes_the_warehouse(tmp_path, instance):
    """The lock closes the instant between the CLI's check and a dequeued UI run starting."""
    import fcntl

    from promptopt_dagster_tests.dagster_helpers import make_defs, prepare

    defs = make_defs(tmp_path)
    holder = open(tmp_path / "warehouse.duckdb.lock", "a+")  # another run holds the warehouse
    fcntl.flock(holder, fcntl.LOCK_EX)
    threading.Timer(1.5, holder.close).start()
    started = time.perf_counter()
    result = prepare(defs, instance)
    assert result.success and time.perf_counter() - started >= 1.4
    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("waiting for another run to finish writing" in m for m in logs)
