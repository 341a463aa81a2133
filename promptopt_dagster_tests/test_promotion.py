"""Promotion with approval on a real Dagster instance and DuckDB file: promote, block, roll back, audit.

Two optimizations of sst2 end with different best prompts: `sst2` (fewshot) finds demos, which the
scripted task model needs to answer right; `sst2_quick` (reflective, whose optimizer model only
errors) keeps the initial prompt, which scores 0. The served file must follow the audit exactly.
"""

from __future__ import annotations

import json

import dagster as dg
import pytest

from promptopt_dagster.core import promotion as po
from promptopt_dagster.core.optimizations import OptimizationSpec
from promptopt_dagster.defs.partitions import ensure_iteration, iteration_key
from promptopt_dagster_tests.dagster_helpers import (PROMPTS_DIR, generation_of, make_defs, prepare, query, small_spec,
                                                     start)


def promote(defs, instance, dataset: str = "sst2", **config):
    return defs.resolve_job_def("promote_prompt").execute_in_process(
        partition_key=dataset, instance=instance, raise_on_error=False,
        run_config={"ops": {"promotion_audit": {"config": {"requested_by": "ana", **config}}}})


def finish(defs, instance, spec: OptimizationSpec) -> dict:
    """Start the optimization, run its one iteration, and report it on the test rows."""
    started = start(defs, instance, spec, tags={"promptopt/driver": "cli"})
    assert started.success
    generation = generation_of(started)
    ensure_iteration(instance, generation, 0)
    assert defs.resolve_job_def("optimize_iteration").execute_in_process(
        partition_key=iteration_key(spec.name, generation, 0), instance=instance).success
    assert defs.resolve_job_def("final_report_job").execute_in_process(partition_key=spec.name,
                                                                       instance=instance).success
    return json.loads(query_report(defs, spec.name))


def query_report(defs, name: str) -> str:
    import duckdb

    database = defs.resources["warehouse"].database
    with duckdb.connect(database, read_only=True) as con:
        return con.execute("select report_json from promptopt.final_report where optimization = ?", [name]).fetchone()[0]


@pytest.fixture
def two_optimizations(tmp_path):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "sst2.json").write_text((PROMPTS_DIR / "sst2.json").read_text())
    defs = make_defs(tmp_path, prompts_dir=prompts, cache=True)
    instance = dg.DagsterInstance.ephemeral()
    assert prepare(defs, instance).success
    good = finish(defs, instance, small_spec("sst2", stop={"max_iterations": 1}))
    bad = finish(defs, instance, OptimizationSpec(name="sst2_quick", dataset="sst2", optimizer="reflective",
                                                  eval_size=20, select_size=10, test_size=20,
                                                  stop={"max_iterations": 1}))
    return defs, instance, prompts, good, bad


def test_promote_block_a_worse_one_roll_back_and_the_audit_has_every_event(tmp_path, two_optimizations):
    defs, instance, prompts, good, bad = two_optimizations
    assert good["best_test_score"] > bad["best_test_score"]
    # the UI's story of each optimization: its summary and its own score plot on the final report
    shown = instance.fetch_materializations(dg.AssetKey("final_report"), limit=10).records
    summaries = {r.partition_key: r.asset_materialization.metadata for r in shown}
    assert "✗ rejected" in summaries["sst2_quick"]["summary"].value
    assert summaries["sst2"]["summary"].value.startswith("## Prompt Optimization Summary: sst2 (generation 1)")
    assert summaries["sst2"]["score_per_iteration"].value.startswith("![score per iteration](data:image/png")

    first = promote(defs, instance, optimization="sst2", note="first serving")
    assert first.success
    served = json.loads((prompts / "promoted" / "sst2.json").read_text())
    assert served["prompt"]["id"] == good["best_prompt"]["id"] and served["promotion"]["by"] == "ana"
    assert served["source"] == {**served["source"], "optimization": "sst2", "test_score": good["best_test_score"]}

    blocked = promote(defs, instance, optimization="sst2_quick", note="cheaper?")
    assert not blocked.success  # the blocking check stopped the run before promoted_prompt
    checks = {e.check_name: e for e in blocked.get_asset_check_evaluations()}
    message = checks["not_worse_than_promoted"].description
    assert not checks["not_worse_than_promoted"].passed and checks["no_held_out_rows"].passed
    assert f"{bad['best_test_score']:.4f}" in message and f"{good['best_test_score']:.4f}" in message
    assert json.loads((prompts / "promoted" / "sst2.json").read_text())["prompt"]["id"] == good["best_prompt"]["id"]

    anyway = promote(defs, instance, optimization="sst2_quick", margin=1.0, note="accept the drop")
    assert anyway.success
    assert json.loads((prompts / "promoted" / "sst2.json").read_text())["prompt"]["id"] == bad["best_prompt"]["id"]

    back = promote(defs, instance, action="rollback", note="the drop hurt")
    assert back.success
    restored = json.loads((prompts / "promoted" / "sst2.json").read_text())
    assert restored["prompt"]["id"] == good["best_prompt"]["id"] and restored["promotion"]["action"] == "rollback"
    versions = sorted(p.name for p in (prompts / "promoted" / "sst2").iterdir())
    assert len(versions) == 2  # one copy per version served

    audit = query(tmp_path, "select * from promptopt.promotion_audit order by event_id")
    assert list(zip(audit["action"], audit["verdict"], audit["optimization"])) == [
        ("promote", "approved", "sst2"), ("promote", "blocked", "sst2_quick"), ("promote", "approved", "sst2_quick"),
        ("rollback", "approved", "sst2")]
    assert audit["requested_by"].tolist() == ["ana"] * 4
    assert audit.loc[0, "iteration"] == f"g1-i{good['iterations'] - 1}"  # the best_prompt partition promoted
    assert audit["note"].tolist() == ["first serving", "cheaper?", "accept the drop", "the drop hurt"]
    assert audit.loc[1, "current_score"] == pytest.approx(good["best_test_score"])
    assert "below the promoted prompt" in audit.loc[1, "reason"]


def test_the_served_document_renders_what_the_model_receives(two_optimizations):
    defs, instance, prompts, good, _ = two_optimizations
    assert promote(defs, instance, optimization="sst2").success
    document = json.loads((prompts / "promoted" / "sst2.json").read_text())
    shown = po.render(document, "a gorgeous, witty film")
    assert shown == po.prompt_of(document).render_completion("a gorgeous, witty film")
    assert shown.endswith("a gorgeous, witty film\nSentiment:") and document["mode"] == "completion"
    assert document["generation"]["max_output_tokens"] > 0 and document["answer"]["kind"] in ("free", "label")


def test_nothing_to_roll_back_and_an_unfinished_optimization_fail_clearly(two_optimizations):
    defs, instance, *_ = two_optimizations
    nothing = promote(defs, instance, action="rollback")
    assert not nothing.success and "Nothing to roll back to" in failure(nothing)
    unknown = promote(defs, instance, optimization="nope")
    assert not unknown.success and "was never started" in failure(unknown)


def failure(result) -> str:
    return " ".join(e.step_failure_data.error.message for e in result.all_events if e.is_step_failure)


@pytest.mark.slow
def test_promote_and_render_through_the_cli_and_a_worse_candidate_exits_1(tmp_path):
    """Real openai SDK against fake servers: toy_gepa ends at 0.75 on the test rows, the default fewshot
    optimization at 0.25; the second promotion is refused with both scores, and nothing served changes."""
    import os
    import subprocess
    import sys

    import yaml

    from promptopt_dagster_tests.fake_llm_servers import FakeLLMServer
    from promptopt_dagster_tests.remote_helpers import run_cli
    from promptopt_dagster_tests.test_gepa_end_to_end import reflect, task, toy_project

    root = toy_project(tmp_path / "project")
    entries = yaml.safe_load((root / "data" / "optimizations.yaml").read_text())["optimizations"]
    entries["toy"] = {"dataset": "toy", "select_size": 20, "eval_size": 20, "test_size": 40,
                      "options": {"num_candidates": 2}, "stop": {"max_iterations": 1}}
    entries["toy_gepa"]["test_size"] = 40
    (root / "data" / "optimizations.yaml").write_text(yaml.safe_dump({"optimizations": entries}))
    with FakeLLMServer("openai", answer=task) as task_srv, FakeLLMServer("openai", answer=reflect) as opt_srv:
        env = {"PROMPTOPT_DATA_DIR": str(root / "data"), "PROMPTOPT_PROMPTS_DIR": str(root / "prompts"),
               "PROMPTOPT_TASK__BACKEND": "openai", "PROMPTOPT_TASK__BASE_URL": task_srv.openai_base_url,
               "OPENAI_API_KEY": "sk-task", "PROMPTOPT_OPTIMIZER__BACKEND": "openai",
               "PROMPTOPT_OPTIMIZER__BASE_URL": opt_srv.openai_base_url}
        state = root / "state"
        for name in ("toy_gepa", "toy"):
            done = run_cli(state, env, "--optimization", name, cwd=root)
            assert done.returncode == 0, done.stderr[-3000:]
        full_env = {**os.environ, **env, "PROMPTOPT_STATE_DIR": str(state)}
        full_env.pop("DAGSTER_HOME", None)

        def promptopt(*args):
            return subprocess.run([sys.executable, "-m", "promptopt_dagster.cli", *args], env=full_env, cwd=root,
                                  capture_output=True, text=True, timeout=300)

        first = promptopt("promote", "toy_gepa", "--note", "ship it", "--by", "ana")
        assert first.returncode == 0, first.stderr[-3000:]
        assert "APPROVED" in first.stdout and "serving" in first.stdout
        worse = promptopt("promote", "toy")
        shown = promptopt("render", "toy", "a quiet film")
    assert worse.returncode == 1, worse.stderr[-3000:]
    assert "BLOCKED" in worse.stdout and "0.2500 is below the promoted prompt" in worse.stdout and "0.7500" in worse.stdout
    assert shown.returncode == 0
    assert shown.stdout.startswith("[system]\nClassify the review. When unsure, answer negative.")
    assert shown.stdout.rstrip().endswith("[user]\nReview: a quiet film\nSentiment:")
