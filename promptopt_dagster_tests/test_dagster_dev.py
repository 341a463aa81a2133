"""Under a real `dagster dev` (webserver + daemon), the sensor carries an optimization to its end.

Only iteration 0 is launched (through the GraphQL API, as the UI does); the sensor must add and run
iteration 1, see the patience stop, and run the final report, all by itself.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from promptopt_dagster.settings import PROJECT_ROOT

CONFIG = {"eval_size": 10, "test_size": 10, "num_candidates": 2, "minibatch_size": 5, "max_iterations": 4,
          "patience": 2, "target_score": 1.1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dagster_dev(tmp_path):
    state, port = tmp_path / "state", _free_port()
    env = {**os.environ, "PROMPTOPT_STATE_DIR": str(state), "PROMPTOPT_TASK__BACKEND": "fake",
           "PROMPTOPT_OPTIMIZER__BACKEND": "fake", "DAGSTER_HOME": str(state / "dagster_home")}
    from promptopt_dagster.defs.home import DAGSTER_YAML

    (state / "dagster_home").mkdir(parents=True)
    (state / "dagster_home" / "dagster.yaml").write_text(DAGSTER_YAML)
    log = open(tmp_path / "dagster_dev.log", "w")
    # Its own session, so the webserver, daemon and gRPC server can all be killed together:
    # under this sandbox dagster dev ignores SIGTERM and would leave orphans.
    proc = subprocess.Popen([str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml",
                             "-p", str(port)], cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        yield env, port
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_sensor_runs_the_next_iteration_and_the_final_report_by_itself(dagster_dev):
    env, port = dagster_dev
    script = f"""
import json, sys, time
import dagster as dg
from dagster_graphql import DagsterGraphQLClient
from promptopt_dagster.definitions import defs

instance = dg.DagsterInstance.get()
instance.add_dynamic_partitions("iteration", ["0"])
assert defs.resolve_job_def("prepare_dataset").execute_in_process(partition_key="sst2", instance=instance).success
client = DagsterGraphQLClient("127.0.0.1", port_number={port})
deadline = time.time() + 120
while True:  # wait for the webserver
    try:
        client.submit_job_execution("optimize_iteration", tags={{"dagster/partition": "sst2|0"}},
                                    run_config={{"resources": {{"optimization": {{"config": {CONFIG!r}}}}}}})
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
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "FAILURE" not in done.stdout, done.stderr[-5000:]
    runs = [tuple(r) for r in json.loads(done.stdout.strip().splitlines()[-1])]
    assert ("optimize_iteration", "sst2|0", "SUCCESS", None) in runs
    assert ("optimize_iteration", "sst2|1", "SUCCESS", "sensor") in runs  # added and launched by the sensor
    assert ("final_report_job", "sst2", "SUCCESS", "sensor") in runs  # patience reached after iteration 1
    assert not any(p == "sst2|2" for _, p, _, _ in runs)
