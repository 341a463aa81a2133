"""`promptopt submit / status / cancel` against a real `dagster dev` (webserver, daemon, sensor).

Three optimizations of sst2 from one optimizations.yaml: `fast` on the in-process fake model runs
to its final report under `submit --wait`; `slow` answers through a fake OpenAI server that takes
a second per answer, so an iteration is still running when `cancel` stops it; `broken` points at
a port where nothing listens, so its iteration fails and `status` must show why in our words.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from promptopt_dagster.app.settings import PROJECT_ROOT
from promptopt_dagster_tests.dagster_dev_helpers import free_port, start_ui, stop_ui, wait_for_webserver
from promptopt_dagster_tests.fake_llm_servers import FakeLLMServer

SMALL = {
    "dataset": "sst2",
    "eval_size": 10,
    "select_size": 5,
    "spare_size": 20,
    "test_size": 10,
    "options": {"num_candidates": 2, "minibatch_size": 5},
}


@pytest.fixture
def webserver(tmp_path):
    with FakeLLMServer("openai", answer=lambda r: "positive", latency_s=1.0) as slow:
        data = tmp_path / "data"
        shutil.copytree(PROJECT_ROOT / "data", data)
        entries = {
            "fast": {**SMALL, "stop": {"max_iterations": 1, "patience": 1, "target_score": 1.1}},
            "slow": {
                **SMALL,
                "stop": {"max_iterations": 3, "patience": 3, "target_score": 1.1},
                "task_model": {"backend": "openai", "base_url": slow.openai_base_url, "max_in_flight": 1},
            },
            "broken": {
                **SMALL,
                "stop": {"max_iterations": 1, "patience": 1, "target_score": 1.1},
                "task_model": {
                    "backend": "openai",
                    "base_url": f"http://127.0.0.1:{free_port()}/v1",
                    "max_attempts": 1,
                    "timeout_s": 2,
                },
            },
        }
        (data / "optimizations.yaml").write_text(yaml.safe_dump({"optimizations": entries}))
        port = free_port()
        env_extra = {"PROMPTOPT_DATA_DIR": str(data), "OPENAI_API_KEY": "sk-test-jobs"}
        proc, env = start_ui(tmp_path / "state", port, tmp_path / "dagster_dev.log", extra_env=env_extra)
        try:
            wait_for_webserver(port, proc, tmp_path / "dagster_dev.log")
            yield {**env, "PROMPTOPT_DAGSTER_URL": f"http://127.0.0.1:{port}"}, slow
        finally:
            stop_ui(proc)


def promptopt(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "promptopt"), *args],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def status(env: dict, target: str) -> dict:
    done = promptopt(env, "status", target, "--json")
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow
def test_submit_status_and_cancel_drive_optimizations_on_a_real_dagster_dev(webserver):
    env, slow = webserver

    # submit --wait: the sensor carries `fast` to its final report; the command follows it and exits 0.
    done = promptopt(env, "submit", "fast", "--wait", "--poll-s", "1")
    assert done.returncode == 0, done.stderr
    start_run = done.stdout.strip().splitlines()[-1]
    assert "iteration g1-i0" in done.stderr and "final_report_job fast" in done.stderr
    view = status(env, "fast")
    assert view["state"] == "finished" and view["iteration"] == "g1-i0" and view["generation"] == "1"
    assert [r["job"] for r in view["runs"]] == [
        "prepare_dataset",
        "start_optimization",
        "optimize_iteration",
        "final_report_job",
    ]
    assert view["runs"][1]["run_id"] == start_run
    report = view["runs"][-1]
    assert 0.0 <= report["best_test_score"] <= 1.0 and report["stop_reason"]
    assert view["spend"]["llm_calls"] + view["spend"]["cache_hits"] > 0
    assert (view["dataset"], view["optimizer"], view["task_model"]) == ("sst2", "fewshot", "fake/default")
    text = promptopt(env, "status", "fast").stdout
    assert "state: finished" in text and "test: initial" in text and "spend so far" in text

    # A failed run: status says why in our words (the blocking check), not with Dagster's wrapper around it.
    failed = promptopt(env, "submit", "broken", "--wait", "--poll-s", "1")
    assert failed.returncode == 1, failed.stderr
    view = status(env, "broken")
    assert view["state"] == "failed"
    error = next(r["error"] for r in view["runs"] if r["status"] == "FAILURE")
    assert (
        error.startswith("quality check all_rows_answered on baseline_predictions failed: 10 rows failed")
        and "connection failed" in error
    ), error

    # cancel: `slow` is stopped mid-iteration (the fake server has answered some rows, not all).
    assert promptopt(env, "submit", "slow").returncode == 0
    deadline = time.time() + 240
    while time.time() < deadline:
        running = [
            r for r in status(env, "slow")["runs"] if r["job"] == "optimize_iteration" and r["status"] == "STARTED"
        ]
        if running and slow.request_count > 0:
            break
        time.sleep(1)
    else:
        pytest.fail(f"the slow optimization never started an iteration: {status(env, 'slow')}")
    run_id = running[0]["run_id"]
    canceled = promptopt(env, "cancel", run_id[:8])
    assert canceled.returncode == 0, canceled.stderr
    assert f"run {run_id} (iteration g1-i0): CANCELED" in canceled.stdout
    one = status(env, run_id)
    assert one["status"] == "CANCELED" and one["tags"]["promptopt/optimization"] == "slow"
    time.sleep(15)  # more than a sensor tick: nothing is chained after a canceled iteration
    view = status(env, "slow")
    assert view["state"] == "canceled" and view["runs"][-1]["run_id"] == run_id
    # What the canceled run paid counts (the usage ledger): every answer the server gave but the one that may
    # have been on its way when the run was terminated (that answer never reached the run).
    paid = view["spend"]["llm_calls"]
    assert 0 < paid and slow.success_count - 1 <= paid <= slow.success_count, (paid, slow.success_count)
    assert view["runs"][-1]["paid"]["llm_calls"] == paid and view["generation"] == "1"
    assert f"this run paid {paid} calls" in promptopt(env, "status", "slow").stdout
    again = promptopt(env, "cancel", run_id)
    assert again.returncode == 2 and "already ended CANCELED" in again.stderr
