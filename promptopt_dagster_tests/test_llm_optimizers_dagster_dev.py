"""gepa, metaprompt and vertex through a real `dagster dev`: submitted, chained by the sensor, reported.

The CLI tests run each optimizer's jobs in-process; here the daemon, the run queue and the sensor
carry them, with every model on its real SDK client against a fake server that answers from what it
is sent (task: openai SDK; gepa and metaprompt: openai SDK; vertex: the agentplatform client).
"""

from __future__ import annotations

import time

import pytest
import yaml

from promptopt_dagster_tests.dagster_dev_helpers import free_port, start_ui, stop_ui, wait_for_webserver
from promptopt_dagster_tests.fake_llm_servers import FakeLLMServer
from promptopt_dagster_tests.remote_helpers import adc_file
from promptopt_dagster_tests.test_gepa_end_to_end import reflect, task, toy_project
from promptopt_dagster_tests.test_jobs_interface import promptopt, status
from promptopt_dagster_tests.test_metaprompt import _rewrite_from_what_was_sent
from promptopt_dagster_tests.test_vertex_optimizer import vertex_service

SMALL = {
    "dataset": "toy",
    "select_size": 20,
    "spare_size": 20,
    "eval_size": 20,
    "test_size": 40,
    "stop": {"max_iterations": 2, "patience": 2, "target_score": 1.1},
}


def optimizer_llm(req) -> str:
    """One fake optimizer server for both chat optimizers: GEPA's reflection prompt or MetaPrompt's."""
    return reflect(req) if "```" in req.user else _rewrite_from_what_was_sent(req)


@pytest.mark.slow
def test_llm_driven_optimizers_run_through_the_daemon_to_their_reports(tmp_path):
    root = toy_project(tmp_path / "project")
    with (
        FakeLLMServer("openai", answer=task) as task_srv,
        FakeLLMServer("openai", answer=optimizer_llm) as chat,
        FakeLLMServer("gemini", answer=vertex_service) as vertex,
    ):
        chat_model = {"backend": "openai", "base_url": chat.openai_base_url}
        entries = {
            "toy_gepa": {
                **SMALL,
                "optimizer": "gepa",
                "options": {"rows_per_iteration": 120, "minibatch_size": 3},
                "optimizer_model": chat_model,
            },
            "toy_metaprompt": {**SMALL, "optimizer": "metaprompt", "optimizer_model": chat_model},
            "toy_vertex": {
                **SMALL,
                "optimizer": "vertex",
                "options": {"examples": 4},
                "optimizer_model": {"backend": "vertex_prompt_optimizer", "base_url": vertex.url, "project": "proj-1"},
            },
        }
        (root / "data" / "optimizations.yaml").write_text(yaml.safe_dump({"optimizations": entries}))
        port = free_port()
        env_extra = {
            "PROMPTOPT_DATA_DIR": str(root / "data"),
            "PROMPTOPT_PROMPTS_DIR": str(root / "prompts"),
            "PROMPTOPT_TASK__BACKEND": "openai",
            "PROMPTOPT_TASK__BASE_URL": task_srv.openai_base_url,
            "OPENAI_API_KEY": "sk-test-llm-optimizers",
            "GOOGLE_APPLICATION_CREDENTIALS": str(adc_file(tmp_path, vertex)),
        }
        proc, env = start_ui(root / "state", port, tmp_path / "dagster_dev.log", extra_env=env_extra)
        try:
            wait_for_webserver(port, proc, tmp_path / "dagster_dev.log")
            env["PROMPTOPT_DAGSTER_URL"] = f"http://127.0.0.1:{port}"
            for name in entries:  # side by side: the daemon runs them at once
                done = promptopt(env, "submit", name)
                assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"
            views, deadline = {}, time.time() + 400
            while len(views) < len(entries) and time.time() < deadline:
                for name in set(entries) - set(views):
                    view = status(env, name)
                    assert view["state"] not in ("failed", "canceled"), (name, view)
                    if view["state"] == "finished":
                        views[name] = view
                time.sleep(2)
            assert len(views) == len(entries), (sorted(views), (tmp_path / "dagster_dev.log").read_text()[-3000:])
            asked = {"chat": chat.success_count, "vertex": vertex.success_count}
        finally:
            stop_ui(proc)

    for name, view in views.items():
        assert view["state"] == "finished" and view["optimizer"] == name.split("_")[1], view
        jobs = [r["job"] for r in view["runs"]]
        assert jobs.count("optimize_iteration") == 2 and jobs[-1] == "final_report_job", jobs  # the sensor chained
        report = view["runs"][-1]
        assert (report["initial_test_score"], report["best_test_score"]) == (0.25, 0.75), (name, report)
    assert asked["chat"] > 0 and asked["vertex"] == 2
