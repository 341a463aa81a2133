"""Under a real `dagster dev` (webserver + daemon), the sensor carries an optimization to its end.

Only iteration 0 is launched (through the GraphQL API, as the UI does); the sensor must add and run
iteration 1, see the patience stop, and run the final report, all by itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from promptopt_dagster.app.settings import PROJECT_ROOT
from promptopt_dagster.defs.partitions import iteration_key, parse_key
from promptopt_dagster_tests.dagster_dev_helpers import (
    backfill,
    free_port,
    open_instance,
    start_ui,
    stop_ui,
    wait_for,
    wait_for_webserver,
)

# Two iterations at most: the fake model answers a fixed label when answers are constrained, so whether an
# iteration is accepted depends on the labels drawn; the loop stops after iteration 1 either way.
SPEC = {
    "name": "sst2",
    "dataset": "sst2",
    "eval_size": 10,
    "test_size": 10,
    "select_size": 5,
    "spare_size": 20,
    "options": {"num_candidates": 2, "minibatch_size": 5},
    "stop": {"max_iterations": 2, "patience": 2, "target_score": 1.1},
}


@pytest.fixture
def dagster_dev(tmp_path):
    state, port = tmp_path / "state", free_port()
    proc, env = start_ui(state, port, tmp_path / "dagster_dev.log")
    try:
        wait_for_webserver(port, proc, tmp_path / "dagster_dev.log")
        yield env, port
    finally:
        stop_ui(proc)


@pytest.mark.slow
def test_sensor_runs_the_next_iteration_and_the_final_report_by_itself(dagster_dev):
    env, port = dagster_dev
    script = f"""
import json, sys, time
import dagster as dg
from dagster_graphql import DagsterGraphQLClient
from promptopt_dagster.definitions import defs

from promptopt_dagster.app.optimizations import OptimizationSpec

instance = dg.DagsterInstance.get()
assert defs.resolve_job_def("prepare_dataset").execute_in_process(partition_key="sst2", instance=instance).success
spec_json = OptimizationSpec(**{SPEC!r}).model_dump_json()
client = DagsterGraphQLClient("127.0.0.1", port_number={port})
deadline = time.time() + 120
while True:  # wait for the webserver
    try:
        client.submit_job_execution("start_optimization", tags={{"dagster/partition": "sst2"}},
                                    run_config={{"ops": {{"optimization": {{"config": {{"spec_json": spec_json}}}}}}}})
        break
    except Exception:
        if time.time() > deadline:
            raise
        time.sleep(2)
deadline = time.time() + 420
while time.time() < deadline:
    runs = instance.get_runs()
    done = [r for r in runs if r.job_name == "final_report_job" and r.is_finished]
    failed = [r for r in runs if r.status == dg.DagsterRunStatus.FAILURE]
    if done or failed:
        break
for run in failed:
    for record in instance.all_logs(run.run_id):
        if record.is_dagster_event and record.dagster_event.is_failure:
            event = record.dagster_event
            error = event.step_failure_data.error.to_string() if event.is_step_failure else ""
            print(run.job_name, event.message, error, file=sys.stderr)
        elif record.level >= 40:
            print(run.job_name, record.user_message, file=sys.stderr)
    time.sleep(3)
print(json.dumps(sorted((r.job_name, r.tags.get("dagster/partition"), r.status.value,
                         r.tags.get("promptopt/driver")) for r in instance.get_runs())))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "FAILURE" not in done.stdout, done.stderr[-5000:]
    runs = [tuple(r) for r in json.loads(done.stdout.strip().splitlines()[-1])]
    key = {n: str(iteration_key("sst2", 1, n)) for n in range(3)}
    assert ("start_optimization", "sst2", "SUCCESS", None) in runs
    assert ("optimize_iteration", key[0], "SUCCESS", "sensor") in runs  # added and launched by the sensor
    assert ("optimize_iteration", key[1], "SUCCESS", "sensor") in runs
    assert ("final_report_job", "sst2", "SUCCESS", "sensor") in runs  # the loop stopped after iteration 1
    assert not any(p == key[2] for _, p, _, _ in runs)


@pytest.mark.slow
def test_ui_command_serves_the_ui_without_the_venv_on_path(tmp_path):
    """`.venv/bin/promptopt ui` used to exec `dagster` from PATH: a FileNotFoundError unless the venv was active."""
    port, log_path = free_port(), tmp_path / "ui.log"
    proc, env = start_ui(tmp_path / "state", port, log_path)
    try:
        info = wait_for_webserver(port, proc, log_path)
        assert info["dagster_webserver_version"]
        assert (tmp_path / "state" / "dagster_home" / "dagster.yaml").read_text().count("run_monitoring") == 1
    finally:
        stop_ui(proc)
    assert "FileNotFoundError" not in log_path.read_text()


@pytest.mark.slow
def test_a_backfill_of_three_datasets_runs_side_by_side_to_three_final_reports(dagster_dev):
    """The backfill recipe of docs/guide.md: prepare_dataset over the datasets, then start_optimization over their
    optimizations; the sensor does the rest, with the daemon running up to 3 runs at once."""
    import duckdb

    env, port = dagster_dev
    datasets = ["sst2", "sms_spam", "atis_intent"]
    backfill(port, "prepare_dataset", datasets)
    wait_for(
        env,
        lambda runs: sum(r.job_name == "prepare_dataset" and r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        == 3,
        300,
        "the datasets to load",
    )
    backfill(port, "start_optimization", datasets)  # each dataset's default optimization, from the YAML
    wait_for(
        env,
        lambda runs: sum(r.job_name == "final_report_job" and r.is_finished for r in runs) == 3,
        900,
        "three final reports",
    )
    runs = wait_for(
        env,
        lambda runs: sum(r.job_name == "leaderboard_job" and r.is_finished for r in runs) == 3,
        300,
        "the sensor to update each dataset's leaderboard",
    )
    finished = {(r.job_name, r.tags.get("dagster/partition"), r.status.value) for r in runs}
    for dataset in datasets:
        assert ("optimize_iteration", str(iteration_key(dataset, 1, 0)), "SUCCESS") in finished
        assert ("optimize_iteration", str(iteration_key(dataset, 1, 1)), "SUCCESS") in finished  # by the sensor
        assert ("final_report_job", dataset, "SUCCESS") in finished
    with open_instance(env) as instance:
        spans = [
            (s.start_time, s.end_time)
            for s in (instance.get_run_stats(r.run_id) for r in runs if r.job_name == "optimize_iteration")
        ]
    overlapping = max(sum(start <= t < end for start, end in spans) for t, _ in spans)
    assert overlapping >= 2, spans  # runs went side by side, not one after another
    with duckdb.connect(str(Path(env["PROMPTOPT_STATE_DIR"]) / "warehouse.duckdb"), read_only=True) as con:
        kept = dict(con.execute("select optimization, count(*) from promptopt.best_prompt group by 1").fetchall())
        reports = {r[0] for r in con.execute("select optimization from promptopt.final_report").fetchall()}
        boards = con.execute("select dataset, optimization, rank, current from promptopt.leaderboard").fetchall()
    iterations = {
        d: sum(job == "optimize_iteration" and parse_key(part)[0] == d for job, part, _ in finished) for d in datasets
    }
    assert kept == iterations and reports == set(datasets)  # every run's rows: no write lost to a lock
    assert sorted(boards) == [(d, d, 1, True) for d in sorted(datasets)]


@pytest.mark.slow
def test_a_sigkilled_cli_run_does_not_block_runs_queued_from_the_ui(dagster_dev, tmp_path):
    from promptopt_dagster_tests.fake_llm_servers import FakeLLMServer

    env, port = dagster_dev
    with FakeLLMServer("openai", answer=lambda r: "positive", latency_s=0.5) as srv:
        cli_env = {
            **env,
            "PROMPTOPT_TASK__BACKEND": "openai",
            "PROMPTOPT_TASK__BASE_URL": srv.openai_base_url,
            "OPENAI_API_KEY": "sk-test",
            "PROMPTOPT_TASK__MAX_IN_FLIGHT": "1",
        }
        cli_env.pop("DAGSTER_HOME")
        cli = subprocess.Popen(
            [sys.executable, "-m", "promptopt_dagster.cli", "optimize", "--dataset", "sst2"],
            cwd=PROJECT_ROOT,
            env=cli_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 180
        while not srv.requests and time.time() < deadline:  # the CLI's iteration run is calling the model
            time.sleep(0.5)
        assert srv.requests, "the CLI never reached the model"
        cli.kill()
        cli.wait(timeout=30)
    with open_instance(env) as instance:
        stuck = [r for r in instance.get_runs() if r.status == dg.DagsterRunStatus.STARTED]
    assert [r.job_name for r in stuck] == ["optimize_iteration"]  # what used to block the queue forever

    backfill(port, "prepare_dataset", ["sms_spam"])  # a run queued from the UI
    runs = wait_for(
        env,
        lambda runs: any(
            r.job_name == "prepare_dataset"
            and r.tags.get("dagster/partition") == "sms_spam"
            and r.status == dg.DagsterRunStatus.SUCCESS
            for r in runs
        ),
        240,
        "the queued run to start and finish",
    )
    # With 3 runs allowed at once the queued run need not wait for the dead one; the dead_cli_run_sensor
    # (every 30 s) still marks it failed, so it never holds a place for good.
    runs = wait_for(
        env,
        lambda runs: any(r.run_id == stuck[0].run_id and r.status == dg.DagsterRunStatus.FAILURE for r in runs),
        120,
        "the dead CLI run to be marked failed",
    )
    killed = next(r for r in runs if r.run_id == stuck[0].run_id)
    assert killed.status == dg.DagsterRunStatus.FAILURE
