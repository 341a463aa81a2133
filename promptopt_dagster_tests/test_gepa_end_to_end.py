"""`promptopt optimize` with the gepa optimizer, through Dagster, every model on a real SDK client.

The task model (openai SDK, fake server) answers the label the system prompt last tells it to fall
back on ("When unsure, answer X."), else `positive`. The reflection model (openai or google-genai
SDK, its own fake server) answers from what it is sent: it appends the expected label of the first
wrong row it was shown. Three of four rows are `negative`, so the first reflection ("answer
negative") is better and the next ones, shown the `positive` rows the new prompt gets wrong, are
worse: the loop must keep the first and never propose the others.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from promptopt_dagster_tests.fake_llm_servers import FakeLLMServer
from promptopt_dagster_tests.remote_helpers import adc_file, run_cli, warehouse

FALLBACK = re.compile(r"When unsure, answer (\w+)\.")
SYSTEM = "Classify the review."


def toy_project(root: Path) -> Path:
    data = root / "data"
    (data / "toy").mkdir(parents=True)
    sizes = {"train": 60, "dev": 40, "test": 40}
    start = 0
    for split, n in sizes.items():
        pd.DataFrame(
            [
                {
                    "user_input": f"review number {start + i}",
                    "ground_truth_output": "positive" if (start + i) % 4 == 0 else "negative",
                }
                for i in range(n)
            ]
        ).to_csv(data / "toy" / f"{split}.csv", index=False)
        start += n
    (data / "manifest.yaml").write_text(
        yaml.safe_dump(
            {
                "datasets": {
                    "toy": {
                        "description": "Synthetic: three of four reviews are negative.",
                        "files": {s: f"toy/{s}.csv" for s in sizes},
                        "labels": ["positive", "negative"],
                        "target_metric": "accuracy",
                        "initial_prompt": "toy.json",
                        "max_output_tokens": 4,
                    }
                }
            }
        )
    )
    (data / "optimizations.yaml").write_text(
        yaml.safe_dump(
            {
                "optimizations": {
                    "toy_gepa": {
                        "dataset": "toy",
                        "optimizer": "gepa",
                        "options": {"rows_per_iteration": 120, "minibatch_size": 3},
                        "select_size": 20,
                        "spare_size": 20,
                        "eval_size": 20,
                        "test_size": 0,
                        "stop": {"max_iterations": 2, "patience": 2, "target_score": 1.1},
                    }
                }
            }
        )
    )
    (root / "prompts").mkdir()
    (root / "prompts" / "toy.json").write_text(
        json.dumps({"system_prompt": SYSTEM, "output_prompt": "Review: {user_input}\nSentiment:"})
    )
    return root


def task(req) -> str:
    found = FALLBACK.findall(req.system)
    return found[-1] if found else "positive"


def reflect(req) -> str:
    text = req.user
    current = text.split("```", 2)[1].strip("\n")
    if "(component: output_prompt)" in text:
        return f"```\n{current}\n```"
    wrong = re.search(r'the expected answer is \\?"(\w+)', text)
    return f"```\n{current} When unsure, answer {wrong.group(1) if wrong else 'positive'}.\n```"


@pytest.mark.parametrize("protocol", ["openai", "gemini"])
def test_gepa_keeps_the_better_rewrite_through_the_cli_and_a_rerun_sends_nothing(tmp_path, protocol):
    root = toy_project(tmp_path / "project")
    with FakeLLMServer("openai", answer=task) as task_srv, FakeLLMServer(protocol, answer=reflect) as opt_srv:
        env = {
            "PROMPTOPT_DATA_DIR": str(root / "data"),
            "PROMPTOPT_PROMPTS_DIR": str(root / "prompts"),
            "PROMPTOPT_TASK__BACKEND": "openai",
            "PROMPTOPT_TASK__BASE_URL": task_srv.openai_base_url,
            "OPENAI_API_KEY": "sk-task",
            "PROMPTOPT_OPTIMIZER__BACKEND": protocol,
        }
        if protocol == "openai":
            env["PROMPTOPT_OPTIMIZER__BASE_URL"] = opt_srv.openai_base_url
        else:
            env.update(
                {
                    "PROMPTOPT_OPTIMIZER__BASE_URL": opt_srv.url,
                    "PROMPTOPT_OPTIMIZER__PROJECT": "proj-1",
                    "GOOGLE_APPLICATION_CREDENTIALS": str(adc_file(tmp_path, opt_srv)),
                }
            )
        state = root / "state"
        done = run_cli(
            state,
            env,
            "--optimization",
            "toy_gepa",
            "--test-size",
            "40",
            "--report-json",
            str(tmp_path / "report.json"),
            cwd=root,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        reflections = [r for r in opt_srv.requests if r.status == 200 and "token" not in r.path]
        task_srv.reset()
        opt_srv.reset()
        again = run_cli(state, env, "--optimization", "toy_gepa", "--test-size", "40", cwd=root)
        assert again.returncode == 0, again.stderr[-4000:]
        rerun = (task_srv.request_count, len([r for r in opt_srv.requests if "token" not in r.path]))

    report = json.loads((tmp_path / "report.json").read_text())
    assert reflections, "the reflection model was never asked"
    assert FALLBACK.findall(report["best_prompt"]["system_prompt"]) == ["negative"]
    assert (report["initial_test_score"], report["best_test_score"]) == (0.25, 0.75)
    steps = warehouse(state, "select step, accepted, refined_score from promptopt.comparison_report order by step")
    assert steps["accepted"].tolist()[0] and not any(steps["accepted"].tolist()[1:])
    pool = warehouse(
        state,
        "select kind, select_score from promptopt.candidate_pool where step = "
        "(select max(step) from promptopt.candidate_pool)",
    )
    # GEPA's candidates with their select-row scores: the kept rewrite well above the start (about a quarter of
    # the select rows are positive), and no worse child became the proposal
    assert set(pool["kind"]) <= {"gepa", "gepa-merge"} and pool["select_score"].max() > 0.5
    assert rerun == (0, 0), "the rerun must be served from the response cache"
    # GEPA's search went from iteration to iteration as state bytes in the state store; nothing on disk
    kept = warehouse(
        state,
        "select iteration, octet_length(optimizer_state) as size from promptopt.iteration_state order by iteration",
    )
    assert kept["iteration"].tolist() == list(range(len(steps))) and (kept["size"] > 0).all(), kept
    assert not (state / "search").exists()

    # The lineage is asset metadata: each candidate's parents, select score and Pareto-front membership.
    import dagster as dg

    from promptopt_dagster_tests.dagster_dev_helpers import open_instance

    with open_instance({"DAGSTER_HOME": str(state / "dagster_home")}) as inst:
        record = inst.fetch_materializations(dg.AssetKey("refined_prompt"), limit=1).records[0]
    lineage = record.asset_materialization.metadata["candidates"].value
    assert record.asset_materialization.metadata["optimizer_state_bytes"].value > 0
    seeds = [c for c in lineage if c.get("kind") == "seed"]
    children = [c for c in lineage if c.get("kind") == "reflection"]
    assert len(seeds) == 1 and children and all(c["parents"] for c in children)
    assert any(c["on_pareto_front"] for c in children) and all("select_score" in c for c in lineage if "kind" in c)


def _prompt_of(request) -> str:
    """The messages a request carried, as (role, content) pairs: comparable with the response cache's."""
    return json.dumps([[m["role"], m["content"]] for m in (request.body or {}).get("messages") or []])


def _cached_prompts(state: Path) -> set[str]:
    """Prompts whose answers the response cache holds: the answers that had durably arrived."""
    import sqlite3

    with sqlite3.connect(state / "llm_cache.sqlite") as con:
        return {json.dumps(json.loads(r)["messages"]) for (r,) in con.execute("select request_json from llm_cache")}


@pytest.mark.slow
def test_a_search_killed_mid_way_repeats_no_paid_call_when_run_again(tmp_path):
    """The iteration killed mid-search starts again from the state it was given (none, at iteration 0):
    the same seed takes the same steps, and every answer paid for before the kill comes from the cache."""
    import os
    import subprocess
    import sys
    import time

    root = toy_project(tmp_path / "project")
    with (
        FakeLLMServer("openai", answer=task, latency_s=0.02) as task_srv,
        FakeLLMServer("openai", answer=reflect, latency_s=0.5) as opt_srv,
    ):
        env = {
            **os.environ,
            "PROMPTOPT_DATA_DIR": str(root / "data"),
            "PROMPTOPT_PROMPTS_DIR": str(root / "prompts"),
            "PROMPTOPT_STATE_DIR": str(root / "state"),
            "PROMPTOPT_TASK__BACKEND": "openai",
            "PROMPTOPT_TASK__BASE_URL": task_srv.openai_base_url,
            "OPENAI_API_KEY": "sk-task",
            "PROMPTOPT_OPTIMIZER__BACKEND": "openai",
            "PROMPTOPT_OPTIMIZER__BASE_URL": opt_srv.openai_base_url,
        }
        env.pop("DAGSTER_HOME", None)
        argv = [sys.executable, "-m", "promptopt_dagster.cli", "optimize", "--optimization", "toy_gepa"]
        proc = subprocess.Popen(argv, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 180
        while sum(r.status == 200 for r in list(opt_srv.requests)) < 3 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        proc.kill()
        proc.communicate(timeout=60)
        # Paid and kept: answered by a server and committed to the response cache before the kill. (An
        # answer still on its way at the kill is lost, and rightly asked again.)
        answered = {_prompt_of(r) for srv in (task_srv, opt_srv) for r in list(srv.requests) if r.status == 200}
        paid = _cached_prompts(root / "state") & answered
        assert len(paid) >= 0.9 * len(answered) > 0, (len(paid), len(answered))  # the two forms compare
        assert sum(r.status == 200 for r in opt_srv.requests) >= 3, "the search never reflected before the kill"
        marks = (len(task_srv.requests), len(opt_srv.requests))
        again = subprocess.run(
            argv + ["--report-json", str(tmp_path / "report.json")],
            env=env,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=600,
        )
        resent = {_prompt_of(r) for r in task_srv.requests[marks[0] :] + opt_srv.requests[marks[1] :] if r.body}
    assert again.returncode == 0, again.stderr[-3000:]
    assert not paid & resent, f"{len(paid & resent)} paid prompts were sent again"
    report = json.loads((tmp_path / "report.json").read_text())
    assert FALLBACK.findall(report["best_prompt"]["system_prompt"]) == ["negative"]
