"""The cluster deployment: runs that share no disk, on a real Postgres server and the GCS emulator.

Each `promptopt` command here runs as a fresh container would: an empty working directory, an empty
home and an empty state directory. The optimization's tables, its state, the response cache, the
usage ledger and Dagster's instance are all in Postgres, its artifacts in the bucket; so a second
"machine" that has never seen the first finds the optimization finished and sends no model request,
and no machine keeps a warehouse, a cache or an artifact of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from promptopt_dagster.defs.warehouse import connect
from promptopt_dagster_tests.fake_llm_servers import FakeLLMServer
from promptopt_dagster_tests.test_gcs_deployment import BUCKET, upload
from promptopt_dagster_tests.test_gepa_end_to_end import task, toy_project


def _machine(root: Path, env: dict):
    """A command runner for one throwaway machine: its own empty cwd, HOME and state dir."""
    for part in ("cwd", "home", "state"):
        (root / part).mkdir(parents=True)
    env = {**env, "HOME": str(root / "home"), "PROMPTOPT_STATE_DIR": str(root / "state")}

    def promptopt(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "promptopt_dagster.cli", *args],
            env=env,
            cwd=root / "cwd",
            capture_output=True,
            text=True,
            timeout=600,
        )

    return promptopt


@pytest.mark.slow
def test_an_optimization_on_one_machine_is_finished_on_another_that_shares_only_postgres_and_the_bucket(
    tmp_path, gcs_emulator, postgres_url
):
    root = toy_project(tmp_path / "project")
    (root / "data" / "optimizations.yaml").write_text(
        yaml.safe_dump(
            {
                "optimizations": {
                    "toy": {
                        "dataset": "toy",
                        "select_size": 20,
                        "spare_size": 20,
                        "eval_size": 20,
                        "test_size": 40,
                        "options": {"num_candidates": 2},
                        "stop": {"max_iterations": 2, "patience": 2, "target_score": 1.1},
                    }
                }
            }
        )
    )
    upload(root / "data", "project/data")
    upload(root / "prompts", "project/prompts")
    with FakeLLMServer("openai", answer=task) as server:
        env = {
            **os.environ,
            "PROMPTOPT_DATA_DIR": f"gs://{BUCKET}/project/data",
            "PROMPTOPT_PROMPTS_DIR": f"gs://{BUCKET}/project/prompts",
            "PROMPTOPT_DEPLOYMENT": "cluster",
            "PROMPTOPT_WAREHOUSE_URL": postgres_url,
            "PROMPTOPT_GCS_BUCKET": BUCKET,
            "PROMPTOPT_GCS_PREFIX": "runs",
            "PROMPTOPT_TASK__BACKEND": "openai",
            "PROMPTOPT_TASK__BASE_URL": server.openai_base_url,
            "OPENAI_API_KEY": "sk-cluster-test-secret",
            "PROMPTOPT_OPTIMIZER__BACKEND": "fake",
        }
        env.pop("DAGSTER_HOME", None)
        first = _machine(tmp_path / "a", env)
        done = first("optimize", "--optimization", "toy", "--report-json", str(tmp_path / "a.json"))
        assert done.returncode == 0, done.stderr[-3000:]
        paid = server.request_count
        assert paid > 0

        second = _machine(tmp_path / "b", env)
        again = second("optimize", "--optimization", "toy", "--report-json", str(tmp_path / "b.json"))
        assert again.returncode == 0, again.stderr[-3000:]
        assert server.request_count == paid  # every answer from the shared cache
    first_report, second_report = (json.loads((tmp_path / f"{m}.json").read_text()) for m in "ab")
    same = ("system_prompt", "output_prompt", "demos", "retrieval", "answer")
    assert {k: second_report["best_prompt"][k] for k in same} == {k: first_report["best_prompt"][k] for k in same}
    assert second_report["best_test_score"] == first_report["best_test_score"]
    assert second_report["llm_calls"] == 0 and second_report["cache_hits"] > 0

    iterations = first_report["iterations"]
    with connect(postgres_url) as con:
        per_partition = con.execute(
            "select iteration, count(*) from promptopt.refined_prompt where optimization = 'toy' group by 1 order by 1"
        )
        states = con.execute("select count(*) from promptopt.iteration_state where optimization = 'toy'")[0][0]
        finals = con.execute("select count(*) from promptopt.final_report where optimization = 'toy'")[0][0]
        paid_rows = con.execute("select count(*), sum(requests) from llm_ledger where optimization = 'toy'")[0]
        runs = con.execute("select count(*) from runs")[0][0]  # Dagster's instance, in the same database
        everything = json.dumps(con.execute("select report_json from promptopt.final_report"))
    assert per_partition == [(f"g1-i{i}", 1) for i in range(iterations)]  # every partition's row once
    assert states == iterations and finals == 1 and runs > 0
    assert paid_rows[1] == paid  # the ledger in Postgres says what the server answered
    assert "sk-cluster-test-secret" not in everything

    for machine in ("a", "b"):  # no machine kept a warehouse, a cache or an artifact of its own
        state = tmp_path / machine / "state"
        assert not (state / "warehouse.duckdb").exists() and not (state / "llm_cache.sqlite").exists()
        assert not (state / "artifacts").exists()
