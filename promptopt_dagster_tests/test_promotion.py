"""Promotion with approval on a real Dagster instance and DuckDB file: promote, block, roll back, audit.

Two optimizations of sst2 end with different best prompts: `sst2` (fewshot) finds demos, which the
scripted task model needs to answer right; `sst2_quick` (reflective, whose optimizer model only
errors) keeps the initial prompt, which scores 0. The served file must follow the audit exactly.
"""

from __future__ import annotations

import json

import dagster as dg
import pandas as pd
import pytest

from promptopt_dagster.app import promotion as po
from promptopt_dagster.app.optimizations import OptimizationSpec
from promptopt_dagster.defs.partitions import ensure_iteration, iteration_key
from promptopt_dagster_tests.dagster_helpers import (
    PROMPTS_DIR,
    generation_of,
    make_defs,
    prepare,
    query,
    small_spec,
    start,
)


def promote(defs, instance, dataset: str = "sst2", **config):
    return defs.resolve_job_def("promote_prompt").execute_in_process(
        partition_key=dataset,
        instance=instance,
        raise_on_error=False,
        run_config={"ops": {"promotion_audit": {"config": {"requested_by": "ana", **config}}}},
    )


def finish(defs, instance, spec: OptimizationSpec) -> dict:
    """Start the optimization, run its one iteration, and report it on the test rows."""
    started = start(defs, instance, spec, tags={"promptopt/driver": "cli"})
    assert started.success
    generation = generation_of(started)
    ensure_iteration(instance, generation, 0)
    assert (
        defs.resolve_job_def("optimize_iteration")
        .execute_in_process(partition_key=iteration_key(spec.name, generation, 0), instance=instance)
        .success
    )
    assert (
        defs.resolve_job_def("final_report_job").execute_in_process(partition_key=spec.name, instance=instance).success
    )
    return json.loads(query_report(defs, spec.name))


def query_report(defs, name: str) -> str:
    import duckdb

    database = defs.resources["warehouse"].database
    with duckdb.connect(database, read_only=True) as con:
        return con.execute("select report_json from promptopt.final_report where optimization = ?", [name]).fetchone()[
            0
        ]


@pytest.fixture
def two_optimizations(tmp_path):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "sst2.json").write_text((PROMPTS_DIR / "sst2.json").read_text())
    defs = make_defs(tmp_path, prompts_dir=prompts, cache=True)
    instance = dg.DagsterInstance.ephemeral()
    assert prepare(defs, instance).success
    good = finish(defs, instance, small_spec("sst2", stop={"max_iterations": 1}))
    bad = finish(
        defs,
        instance,
        OptimizationSpec(
            name="sst2_quick",
            dataset="sst2",
            optimizer="reflective",
            eval_size=20,
            select_size=10,
            spare_size=20,
            test_size=20,
            stop={"max_iterations": 1},
        ),
    )
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
    assert blocked.success  # a refusal is a recorded decision, not a failed run: the check says no
    assert not served_by(blocked)  # promoted_prompt did not materialize
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
    assert versions == [f"v0001-{good['best_prompt']['id']}.json", f"v0002-{bad['best_prompt']['id']}.json"]

    audit = query(tmp_path, "select * from promptopt.promotion_audit order by event_id")
    assert list(zip(audit["action"], audit["verdict"], audit["optimization"])) == [
        ("promote", "approved", "sst2"),
        ("promote", "blocked", "sst2_quick"),
        ("promote", "approved", "sst2_quick"),
        ("rollback", "approved", "sst2"),
    ]
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


def test_three_promotions_then_rollbacks_step_back_through_the_history(tmp_path, two_optimizations):
    """Promotions A, B (worse, with a margin), A again: rollbacks serve B (worse: refused, then --force),
    then A, then are refused with nothing earlier. Every refusal is an audit row; copies are v0001..v0003."""
    defs, instance, prompts, good, bad = two_optimizations
    a, b = good["best_prompt"]["id"], bad["best_prompt"]["id"]
    served = prompts / "promoted" / "sst2.json"

    def serving() -> tuple[str, int, str]:
        document = json.loads(served.read_text())
        return document["prompt"]["id"], document["promotion"]["version"], document["promotion"]["action"]

    assert served_by(promote(defs, instance, optimization="sst2")) == [a]
    assert served_by(promote(defs, instance, optimization="sst2_quick", margin=1.0)) == [b]
    assert served_by(promote(defs, instance, optimization="sst2", note="back to the good one")) == [a]
    assert serving() == (a, 3, "promote")
    copies = sorted(p.name for p in (prompts / "promoted" / "sst2").iterdir())
    assert copies == [f"v0001-{a}.json", f"v0002-{b}.json", f"v0003-{a}.json"]  # by promotion, never colliding
    first = json.loads((prompts / "promoted" / "sst2" / copies[0]).read_text())
    assert first["promotion"]["version"] == 1 and first["prompt"]["version"] == good["best_prompt"]["version"]

    worse = promote(defs, instance, action="rollback", note="undo")
    assert worse.success and not served_by(worse) and serving() == (a, 3, "promote")
    check = {e.check_name: e for e in worse.get_asset_check_evaluations()}["not_worse_than_promoted"]
    assert not check.passed and "--force" in check.description
    assert f"{bad['best_test_score']:.4f}" in check.description
    assert f"{good['best_test_score']:.4f}" in check.description

    forced = promote(defs, instance, action="rollback", force=True, note="undo anyway")
    assert served_by(forced) == [b] and serving() == (b, 2, "rollback")
    check = {e.check_name: e for e in forced.get_asset_check_evaluations()}["not_worse_than_promoted"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN

    assert served_by(promote(defs, instance, action="rollback")) == [a] and serving() == (a, 1, "rollback")

    nothing = promote(defs, instance, action="rollback", note="one more")
    assert nothing.success and not served_by(nothing) and serving() == (a, 1, "rollback")
    check = {e.check_name: e for e in nothing.get_asset_check_evaluations()}["earlier_version_exists"]
    assert not check.passed and check.description.startswith("nothing earlier to roll back to")

    audit = query(tmp_path, "select * from promptopt.promotion_audit order by event_id")
    assert list(zip(audit["action"], audit["verdict"])) == [
        ("promote", "approved"),
        ("promote", "approved"),
        ("promote", "approved"),
        ("rollback", "blocked"),
        ("rollback", "approved"),
        ("rollback", "approved"),
        ("rollback", "blocked"),
    ]
    assert audit["event_id"].tolist() == list(range(1, 8))
    assert audit["note"].tolist()[3:] == ["undo", "undo anyway", "", "one more"]
    assert "is below the promoted prompt" in audit.loc[3, "reason"] and audit.loc[3, "prompt_id"] == b
    assert audit.loc[3, "candidate_score"] == pytest.approx(bad["best_test_score"])
    assert audit.loc[3, "current_score"] == pytest.approx(good["best_test_score"])
    assert "forced" in audit.loc[4, "reason"] and "served as v0002" in audit.loc[4, "reason"]
    assert audit.loc[6, "reason"].startswith("nothing earlier to roll back to")
    assert audit.loc[6, "current_prompt_id"] == a and pd.isna(audit.loc[6, "prompt_id"])


def test_nothing_to_roll_back_is_audited_and_an_unstarted_optimization_says_what_to_run(tmp_path, two_optimizations):
    defs, instance, *_ = two_optimizations
    nothing = promote(defs, instance, action="rollback")
    assert nothing.success and not served_by(nothing)
    audit = query(tmp_path, "select * from promptopt.promotion_audit order by event_id")
    assert list(zip(audit["action"], audit["verdict"])) == [("rollback", "blocked")]
    assert audit.loc[0, "reason"] == "nothing to roll back: no prompt of 'sst2' has been promoted"
    unknown = promote(defs, instance, optimization="nope")
    assert not unknown.success
    assert "has not been started here. Run `promptopt optimize --optimization nope`" in failure(unknown)


def served_by(result) -> list[str]:
    """The prompt ids promoted_prompt materialized in this run (none when the request was refused)."""
    return [
        e.event_specific_data.materialization.metadata["prompt_id"].value
        for e in result.all_events
        if e.is_step_materialization and e.asset_key == dg.AssetKey("promoted_prompt")
    ]


def failure(result) -> str:
    return " ".join(e.step_failure_data.error.message for e in result.all_events if e.is_step_failure)


def test_cli_errors_are_one_line_and_a_refusal_is_audited_with_exit_1(tmp_path):
    """On a fresh state: `promote` has nothing to promote (exit 2, one `error:` line naming what to run, no
    Dagster class); `rollback` is refused (exit 1) and the refusal is the audit's first row."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PROMPTOPT_STATE_DIR": str(tmp_path / "state")}
    env.pop("DAGSTER_HOME", None)

    def promptopt(*args):
        return subprocess.run(
            [sys.executable, "-m", "promptopt_dagster.cli", *args], env=env, capture_output=True, text=True, timeout=300
        )

    unstarted = promptopt("promote", "sst2")
    assert unstarted.returncode == 2, unstarted.stderr[-3000:]
    assert unstarted.stderr.count("\n") == 1 and unstarted.stderr.startswith("error: promote sst2: nothing to promote")
    assert "`promptopt optimize --optimization sst2`" in unstarted.stderr and "dagster" not in unstarted.stderr
    assert unstarted.stdout == ""
    refused = promptopt("rollback", "sst2", "--note", "oops")
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert refused.stdout == (
        "rollback of sst2: BLOCKED: nothing to roll back: no prompt of 'sst2' has been promoted\n"
    )
    import duckdb

    with duckdb.connect(str(tmp_path / "state" / "warehouse.duckdb"), read_only=True) as con:
        rows = con.execute("select action, verdict, note from promptopt.promotion_audit").fetchall()
    assert rows == [("rollback", "blocked", "oops")]


@pytest.mark.slow
def test_promote_roll_back_and_render_through_the_cli(tmp_path):
    """Real openai SDK against fake servers: toy_gepa (A) ends at 0.75 on the test rows, the default fewshot
    optimization toy (B) at 0.25. Through the CLI: A; B refused with both scores (exit 1); B with --force; A
    again. Rollbacks: to B refused (exit 1) then forced, to A, then nothing earlier (exit 1). Every request is
    an audit row, and the copies are v0001..v0003."""
    import os
    import subprocess
    import sys

    import yaml

    from promptopt_dagster_tests.fake_llm_servers import FakeLLMServer
    from promptopt_dagster_tests.remote_helpers import run_cli, warehouse
    from promptopt_dagster_tests.test_gepa_end_to_end import reflect, task, toy_project

    root = toy_project(tmp_path / "project")
    entries = yaml.safe_load((root / "data" / "optimizations.yaml").read_text())["optimizations"]
    entries["toy"] = {
        "dataset": "toy",
        "select_size": 20,
        "spare_size": 20,
        "eval_size": 20,
        "test_size": 40,
        "options": {"num_candidates": 2},
        "stop": {"max_iterations": 1},
    }
    entries["toy_gepa"]["test_size"] = 40
    (root / "data" / "optimizations.yaml").write_text(yaml.safe_dump({"optimizations": entries}))
    with FakeLLMServer("openai", answer=task) as task_srv, FakeLLMServer("openai", answer=reflect) as opt_srv:
        env = {
            "PROMPTOPT_DATA_DIR": str(root / "data"),
            "PROMPTOPT_PROMPTS_DIR": str(root / "prompts"),
            "PROMPTOPT_TASK__BACKEND": "openai",
            "PROMPTOPT_TASK__BASE_URL": task_srv.openai_base_url,
            "OPENAI_API_KEY": "sk-task",
            "PROMPTOPT_OPTIMIZER__BACKEND": "openai",
            "PROMPTOPT_OPTIMIZER__BASE_URL": opt_srv.openai_base_url,
        }
        state = root / "state"
        full_env = {**os.environ, **env, "PROMPTOPT_STATE_DIR": str(state)}
        full_env.pop("DAGSTER_HOME", None)

        def promptopt(*args, code: int = 0):
            done = subprocess.run(
                [sys.executable, "-m", "promptopt_dagster.cli", *args],
                env=full_env,
                cwd=root,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert done.returncode == code, done.stdout + done.stderr[-3000:]
            assert "Traceback" not in done.stderr and "Warning" not in done.stderr, done.stderr[-3000:]
            return done.stdout

        unfinished = subprocess.run(
            [sys.executable, "-m", "promptopt_dagster.cli", "promote", "toy"],
            env=full_env,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert unfinished.returncode == 2 and unfinished.stdout == ""
        assert unfinished.stderr.startswith(
            "error: promote toy: nothing to promote: optimization 'toy' of dataset "
            "'toy' has not been started here. Run `promptopt optimize "
            "--optimization toy`"
        ), unfinished.stderr
        for name in ("toy_gepa", "toy"):
            done = run_cli(state, env, "--optimization", name, cwd=root)
            assert done.returncode == 0, done.stderr[-3000:]

        assert "APPROVED" in promptopt("promote", "toy_gepa", "--note", "ship it", "--by", "ana")
        worse = promptopt("promote", "toy", code=1)
        assert "BLOCKED" in worse and "0.2500 is below the promoted prompt" in worse and "0.7500" in worse
        shown = promptopt("render", "toy", "a quiet film")
        assert "served as v0002" in promptopt("promote", "toy", "--force")
        assert "served as v0003" in promptopt("promote", "toy_gepa")
        copies = sorted(p.name.split("-")[0] for p in (root / "prompts" / "promoted" / "toy").iterdir())
        assert copies == ["v0001", "v0002", "v0003"]

        refused = promptopt("rollback", "toy", code=1)
        assert refused.startswith("rollback to ") and "test accuracy 0.2500 vs served 0.7500): BLOCKED:" in refused
        assert refused.rstrip().endswith("Pass --force to roll back anyway")
        assert "served as v0002" in promptopt("rollback", "toy", "--force", "--note", "B is cheaper")
        assert "served as v0001" in promptopt("rollback", "toy")
        nothing = promptopt("rollback", "toy", code=1)
        assert nothing.startswith("rollback of toy: BLOCKED: nothing earlier to roll back to: ")
        served = json.loads((root / "prompts" / "promoted" / "toy.json").read_text())
        assert served["promotion"]["version"] == 1 and served["source"]["optimization"] == "toy_gepa"
    assert shown.startswith("[system]\nClassify the review. When unsure, answer negative.")
    assert shown.rstrip().endswith("[user]\nReview: a quiet film\nSentiment:")
    audit = warehouse(state, "select action, verdict, optimization from promptopt.promotion_audit order by event_id")
    assert list(zip(audit["action"], audit["verdict"], audit["optimization"].fillna("-"))) == [
        ("promote", "approved", "toy_gepa"),
        ("promote", "blocked", "toy"),
        ("promote", "approved", "toy"),
        ("promote", "approved", "toy_gepa"),
        ("rollback", "blocked", "toy"),
        ("rollback", "approved", "toy"),
        ("rollback", "approved", "toy_gepa"),
        ("rollback", "blocked", "-"),
    ]
