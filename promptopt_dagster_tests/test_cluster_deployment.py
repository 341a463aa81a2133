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
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from promptopt_dagster.defs.process_launcher import CPU_TAG, PID_TAG, WORKDIR_TAG
from promptopt_dagster.defs.warehouse import connect
from promptopt_dagster_tests.dagster_dev_helpers import (
    backfill,
    free_port,
    open_instance,
    start_ui,
    stop_ui,
    wait_for,
    wait_for_webserver,
)
from promptopt_dagster_tests.fake_llm_servers import FakeLLMServer
from promptopt_dagster_tests.test_gcs_deployment import BUCKET, upload
from promptopt_dagster_tests.test_gepa_end_to_end import task, toy_project


def _cluster_env(postgres_url: str, server: FakeLLMServer, **extra: str) -> dict:
    """What every machine of the cluster is given: project files in the bucket, tables, state, cache and
    instance in Postgres, the task model on the fake server."""
    return {
        "PROMPTOPT_DATA_DIR": f"gs://{BUCKET}/project/data",
        "PROMPTOPT_PROMPTS_DIR": f"gs://{BUCKET}/project/prompts",
        "PROMPTOPT_DEPLOYMENT": "cluster",
        "PROMPTOPT_WAREHOUSE_URL": postgres_url,
        "PROMPTOPT_GCS_BUCKET": BUCKET,
        "PROMPTOPT_TASK__BACKEND": "openai",
        "PROMPTOPT_TASK__BASE_URL": server.openai_base_url,
        "OPENAI_API_KEY": "sk-cluster-test-secret",
        "STORAGE_EMULATOR_HOST": os.environ["STORAGE_EMULATOR_HOST"],
        "GOOGLE_CLOUD_PROJECT": os.environ["GOOGLE_CLOUD_PROJECT"],
        **extra,
    }


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
            **_cluster_env(postgres_url, server, PROMPTOPT_GCS_PREFIX="runs", PROMPTOPT_OPTIMIZER__BACKEND="fake"),
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


NAMES = [f"toy_{i}" for i in range(1, 7)]


def _six_optimizations(root: Path) -> None:
    spec = {
        "dataset": "toy",
        "select_size": 10,
        "spare_size": 10,
        "eval_size": 10,
        "test_size": 20,
        "options": {"num_candidates": 2, "minibatch_size": 5},
        "stop": {"max_iterations": 1, "patience": 1, "target_score": 1.1},
    }
    optimizations = {name: {**spec, "seed": i} for i, name in enumerate(NAMES)}
    (root / "data" / "optimizations.yaml").write_text(yaml.safe_dump({"optimizations": optimizations}))


@pytest.mark.slow
def test_a_backfill_of_six_optimizations_runs_three_at_a_time_each_run_in_an_empty_directory(
    tmp_path, gcs_emulator, postgres_url
):
    """Issue 25's stateless runs: `promptopt ui` (webserver and daemon) on the cluster deployment, each run in a
    fresh process with an empty working directory, HOME and state dir (FreshProcessRunLauncher), three at once.
    Every optimization reaches its final report, every table row is there once, and a second backfill of the
    same optimizations is answered from the shared response cache alone."""
    root = toy_project(tmp_path / "project")
    _six_optimizations(root)
    upload(root / "data", "project/data")
    upload(root / "prompts", "project/prompts")
    with FakeLLMServer("openai", answer=task) as server:
        cluster = _cluster_env(postgres_url, server, PROMPTOPT_MAX_CONCURRENT_RUNS="3")
        port, log = free_port(), tmp_path / "dagster_dev.log"
        proc, env = start_ui(tmp_path / "ui_state", port, log, cluster)
        try:
            wait_for_webserver(port, proc, log)
            backfill(port, "prepare_dataset", ["toy"])
            wait_for(
                env,
                lambda runs: any(r.job_name == "prepare_dataset" and r.is_finished for r in runs),
                300,
                "the dataset to load",
            )
            backfill(port, "start_optimization", NAMES)
            runs = wait_for(
                env,
                lambda runs: sum(r.job_name == "final_report_job" and r.is_finished for r in runs) == 6
                and all(r.is_finished for r in runs),  # the leaderboards too: nothing of the first is still going
                1200,
                "six final reports",
            )
            paid = server.request_count
            backfill(port, "start_optimization", NAMES)  # again: a new generation of each, every answer cached
            wait_for(
                env,
                lambda runs: sum(r.job_name == "final_report_job" and r.is_finished for r in runs) == 12,
                1200,
                "six more final reports",
            )
            again = wait_for(env, lambda runs: all(r.is_finished for r in runs), 300, "the last runs to end")
            # A run is marked finished just before its process exits; the launcher removes the directory after.
            deadline = time.time() + 60
            while time.time() < deadline and any(
                WORKDIR_TAG in r.tags and Path(r.tags[WORKDIR_TAG]).exists() for r in again
            ):
                time.sleep(1)
            with open_instance(env) as instance:
                iteration_runs = [r for r in runs if r.job_name == "optimize_iteration"]
                stats = [instance.get_run_stats(r.run_id) for r in iteration_runs]
                costs = [instance.get_run_by_id(r.run_id).tags.get(CPU_TAG) for r in again]
        finally:
            stop_ui(proc)
        sent_again = [r.body["messages"][-1]["content"] for r in server.requests[paid:] if r.body]
        # the second backfill sent nothing: the cache is shared, and every run read its rows in the same order
        assert server.request_count == paid > 0, f"{len(sent_again)} sent again, e.g. {sent_again[:3]}"

    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in again if r.job_name != "prepare_dataset"), [
        (r.job_name, r.status.value) for r in again if r.status != dg.DagsterRunStatus.SUCCESS
    ]
    workdirs = [r.tags.get(WORKDIR_TAG) for r in again]
    assert all(workdirs) and len(set(workdirs)) == len(again)  # every run had its own directory
    assert not any(Path(w).exists() for w in workdirs)  # and it went with the run, as a pod's does
    assert all(c and float(c) > 0 for c in costs), costs  # each run's CPU seconds, recorded as it exited
    spans = [(s.start_time, s.end_time) for s in stats]
    assert max(sum(start <= t < end for start, end in spans) for t, _ in spans) >= 3, spans  # three at once
    with connect(postgres_url) as con:
        finals = con.execute("select optimization, count(*) from promptopt.final_report group by 1 order by 1")
        kept = con.execute(
            "select optimization, iteration, count(*) from promptopt.best_prompt group by 1, 2 having count(*) > 1"
        )
        states = con.execute("select count(*) from promptopt.iteration_state")[0][0]
    partitions = {r.tags.get("dagster/partition") for r in again if r.job_name == "optimize_iteration"}
    assert finals == [(name, 1) for name in NAMES]  # the second backfill reran the same generation: one row each
    assert kept == [] and states == len(partitions) == 6  # every partition's row once, written twice


def _six_datasets(root: Path) -> list[str]:
    """Six copies of the toy dataset whose rows differ (each carries its dataset's name), so no request of one
    optimization is a request of another: a request the fake server answers twice was paid twice."""
    toy_project(root)
    data, names = root / "data", [f"toy{i}" for i in range(1, 7)]
    manifest = yaml.safe_load((data / "manifest.yaml").read_text())
    entry = manifest["datasets"]["toy"]
    for name in names:
        (data / name).mkdir()
        for split in ("train", "dev", "test"):
            text = (data / "toy" / f"{split}.csv").read_text().replace("review number", f"{name} review number")
            (data / name / f"{split}.csv").write_text(text)
        manifest["datasets"][name] = {**entry, "files": {s: f"{name}/{s}.csv" for s in ("train", "dev", "test")}}
    (data / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    spec = {
        "select_size": 10,
        "spare_size": 10,
        "eval_size": 10,
        "test_size": 20,
        "options": {"num_candidates": 3, "minibatch_size": 5},
        "stop": {"max_iterations": 2, "patience": 2, "target_score": 1.1},
    }
    (data / "optimizations.yaml").write_text(
        yaml.safe_dump({"optimizations": {name: {**spec, "dataset": name} for name in names}})
    )
    return names


COMMIT_WINDOW_S = 2.0


@pytest.mark.slow
def test_two_runs_killed_mid_iteration_and_a_daemon_stop_lose_no_optimization_and_pay_nothing_twice(
    tmp_path, gcs_emulator, postgres_url
):
    """Issue 25's faults at scale, on the setup of the stateless backfill: two iteration runs SIGKILLed while they
    wait on the model, then the webserver and daemon stopped and started again. Run monitoring marks the killed
    runs failed (their processes are gone), the daemon retries each from its failed step, the sensor carries
    every optimization to its final report, and the fake server answered no request twice beyond the few the
    killed runs had in flight or had received in the moment before the kill (never committed)."""
    import signal

    root = tmp_path / "project"
    names = _six_datasets(root)
    upload(root / "data", "project/data")
    upload(root / "prompts", "project/prompts")
    in_flight = 2
    with FakeLLMServer("openai", answer=task, latency_s=0.3) as server:
        cluster = _cluster_env(
            postgres_url, server, PROMPTOPT_TASK__MAX_IN_FLIGHT=str(in_flight), PROMPTOPT_MAX_CONCURRENT_RUNS="3"
        )
        state, log = tmp_path / "ui_state", tmp_path / "dagster_dev.log"
        port = free_port()
        proc, env = start_ui(state, port, log, cluster)
        try:
            wait_for_webserver(port, proc, log)
            backfill(port, "prepare_dataset", names)
            wait_for(
                env,
                lambda runs: sum(r.job_name == "prepare_dataset" and r.is_finished for r in runs) == 6,
                300,
                "the datasets to load",
            )
            backfill(port, "start_optimization", names)

            def waiting_on_the_model(runs):  # two iteration runs started, each well into its model calls
                started = [
                    r
                    for r in runs
                    if r.job_name == "optimize_iteration"
                    and r.status == dg.DagsterRunStatus.STARTED
                    and PID_TAG in r.tags
                ]
                return len(started) >= 2 and server.request_count >= 30 and started[:2]

            deadline = time.time() + 600
            victims = None
            while victims is None and time.time() < deadline:
                with open_instance(env) as instance:
                    victims = waiting_on_the_model(list(instance.get_runs())) or None
                time.sleep(1)
            assert victims, "no two iteration runs were running at once"
            time.sleep(2)  # mid-iteration: answers committed, more in flight
            for run in victims:
                os.kill(int(run.tags[PID_TAG]), signal.SIGKILL)
            killed_at = time.time()

            # The daemon stops once (with the webserver: `promptopt ui` is both); the runs left go on in their own
            # processes, and the next daemon picks the optimizations up from Postgres.
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
            stopped_at = time.time()
            time.sleep(5)
            port = free_port()
            proc, env = start_ui(state, port, log.with_name("dagster_dev_2.log"), cluster)
            wait_for_webserver(port, proc, log.with_name("dagster_dev_2.log"))

            deadline, runs = time.time() + 1500, []
            while time.time() < deadline:
                with open_instance(env) as instance:
                    runs = list(instance.get_runs())
                if sum(r.job_name == "final_report_job" and r.status == dg.DagsterRunStatus.SUCCESS for r in runs) == 6:
                    break
                time.sleep(3)
        finally:
            stop_ui(proc)
        answered = [(json.dumps(r.body, sort_keys=True), r.at) for r in server.requests if r.status == 200]

    killed = {r.run_id for r in victims}
    by_id = {r.run_id: r for r in runs}
    finals = sorted(
        r.tags.get("dagster/partition")
        for r in runs
        if r.job_name == "final_report_job" and r.status == dg.DagsterRunStatus.SUCCESS
    )
    assert finals == names, [(r.job_name, r.status.value, r.tags.get("dagster/partition")) for r in runs]
    for run_id in killed:  # marked failed by run monitoring, then retried (from the failed step) to success
        assert by_id[run_id].status == dg.DagsterRunStatus.FAILURE
        retries = [r for r in runs if r.tags.get("dagster/parent_run_id") == run_id]
        assert retries and retries[-1].status == dg.DagsterRunStatus.SUCCESS, [r.status for r in retries]
    failed = [r for r in runs if r.status == dg.DagsterRunStatus.FAILURE and r.run_id not in killed]
    assert not failed, [(r.job_name, r.tags.get("dagster/partition")) for r in failed]
    times: dict[str, list[float]] = {}
    for body, at in answered:
        times.setdefault(body, []).append(at)
    twice = {body: sorted(at) for body, at in times.items() if len(at) > 1}
    story = f"killed {sorted(r.tags.get('dagster/partition') for r in victims)} at 0 s, daemon stopped at " + (
        f"{stopped_at - killed_at:+.1f} s; asked again: "
        + "; ".join(
            f"{json.loads(body)['messages'][-1]['content'][-60:]!r} answered at "
            + ", ".join(f"{t - killed_at:+.1f} s" for t in at)
            for body, at in twice.items()
        )
    )
    # What a killed run can lose: the requests it had in flight (answered after the kill: at most `in_flight`
    # each) and the answers it had received but not yet committed (a commit takes milliseconds, more under
    # load: the last COMMIT_WINDOW_S before the kill). Anything else asked twice was paid for twice.
    victims_data = {r.tags["dagster/partition"].split("|")[1] for r in victims}
    for body, at in twice.items():
        assert len(at) == 2 and at[0] >= killed_at - COMMIT_WINDOW_S, story
        assert any(f"{name} review number" in body for name in victims_data), story
    assert sum(at[0] > killed_at for at in twice.values()) <= len(killed) * in_flight, story
