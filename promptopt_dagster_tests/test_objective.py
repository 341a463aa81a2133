"""The cost trade-off is the user's: ceilings on tokens or seconds per row are honoured, `within_points`
buys the cheapest prompt near the best, and the report shows the score-versus-cost frontier."""

from __future__ import annotations

import json
import random

import dagster as dg
import pytest
from pydantic import ValidationError

from promptopt_dagster.app.leaderboard import as_text, leaderboard
from promptopt_dagster.app.optimizations import OptimizationSpec
from promptopt_dagster.core.objective import Objective, RowCost
from promptopt_dagster.core.prompts import Demo, PromptVersion
from promptopt_dagster.optimizers.pool import Candidate, best, cost_frontier, pick_parent
from promptopt_dagster_tests.dagster_helpers import make_defs, prepare, query, run_iteration

START = PromptVersion(system_prompt="Classify.", output_prompt="Review: {user_input}\nLabel:")


def _candidate(score: float, tokens: float, seconds: float | None = None, demos: int = 0) -> Candidate:
    prompt = START.child(demos=[Demo(user_input=f"row {i}", ground_truth_output="positive") for i in range(demos)])
    prompt = prompt.child(system_prompt=f"Classify ({score}, {tokens}).")
    scores = {i: float(i < round(score * 10)) for i in range(10)}
    return Candidate(prompt, 0, "seed", scores, score, cost=RowCost(tokens, seconds))


def test_a_ceiling_rules_out_the_best_and_within_points_buys_the_cheapest_near_it():
    cheap, middle, costly = _candidate(0.6, 100, 0.1), _candidate(0.8, 400, 0.3), _candidate(0.9, 900, 0.8)
    pool = [cheap, middle, costly]
    assert best(pool, objective=Objective()) is best(pool)  # empty objective: the optimizer's own rule
    assert best(pool, objective=Objective(within_points=None, max_tokens_per_row=10_000)) is costly
    assert best(pool, objective=Objective(max_tokens_per_row=500)) is middle
    assert best(pool, objective=Objective(max_seconds_per_row=0.2)) is cheap
    assert best(pool, objective=Objective(max_tokens_per_row=50)) is None  # nothing qualifies: no proposal
    assert best(pool, objective=Objective(within_points=0.1)) is middle  # 0.8 is within 0.1 of 0.9
    assert best(pool, objective=Objective(within_points=0.3)) is cheap
    # a parent is never drawn from over the ceiling, whatever the draw
    assert {pick_parent(pool, random.Random(s), objective=Objective(max_tokens_per_row=500)).id for s in range(20)} <= {
        cheap.id,
        middle.id,
    }


def test_a_seconds_ceiling_refuses_a_prompt_whose_time_was_never_measured():
    assert not Objective(max_seconds_per_row=1.0).allows(RowCost(10, None))
    assert not Objective(max_tokens_per_row=10).allows(None)
    assert Objective().allows(None) and Objective(within_points=0.02).allows(None)


def test_the_frontier_keeps_only_candidates_nothing_beats_on_both_cheapest_first():
    a, b, c, dominated = _candidate(0.6, 100), _candidate(0.8, 400), _candidate(0.9, 900), _candidate(0.7, 500)
    assert [x.id for x in cost_frontier([c, dominated, a, b])] == [a.id, b.id, c.id]


def test_the_objective_is_validated_and_fingerprinted_only_when_stated():
    from promptopt_dagster.app.datasets import load_manifest
    from promptopt_dagster_tests.dagster_helpers import DATA_DIR

    dataset = load_manifest(DATA_DIR / "manifest.yaml")["sst2"]
    plain = OptimizationSpec(name="sst2", dataset="sst2")
    assert plain.fingerprint(dataset) == OptimizationSpec(name="sst2", dataset="sst2", objective={}).fingerprint(
        dataset
    )
    stated = OptimizationSpec(name="sst2", dataset="sst2", objective={"max_tokens_per_row": 300})
    assert stated.fingerprint(dataset) != plain.fingerprint(dataset)
    with pytest.raises(ValidationError, match="max_token_per_row"):
        OptimizationSpec(name="sst2", dataset="sst2", objective={"max_token_per_row": 300})
    with pytest.raises(ValidationError, match="within_points"):
        OptimizationSpec(name="sst2", dataset="sst2", objective={"within_points": 5})


def _pool(tmp_path, generation: int):
    pool = query(tmp_path, f"select * from promptopt.candidate_pool where generation = {generation}")
    return {r["candidate_id"]: r for r in pool.to_dict("records")}


def test_a_token_ceiling_changes_the_proposal_and_the_report_shows_the_frontier(tmp_path):
    with dg.instance_for_test() as instance:
        defs = make_defs(tmp_path, script="more_demos_help")
        assert prepare(defs, instance).success
        # no objective: the best score, here the costlier prompt (12 static demos against 8 retrieved)
        assert run_iteration(defs, instance, 0, target_score=1.1).success
        first = query(tmp_path, "select * from promptopt.refined_prompt where generation = 1").iloc[0]
        pool = _pool(tmp_path, 1)
        chosen = pool[first["prompt_id"]]
        cheaper = [
            r for r in pool.values() if r["kind"] != "baseline" and r["tokens_per_row"] < chosen["tokens_per_row"]
        ]
        assert cheaper, "the test needs a cheaper candidate than the best-scoring one"
        ceiling = int(max(r["tokens_per_row"] for r in cheaper)) + 1

        # the user's ceiling: a new generation whose proposal sends at most `ceiling` tokens a row
        result = run_iteration(defs, instance, 0, target_score=1.1, objective={"max_tokens_per_row": ceiling})
        assert result.success
        refined = query(tmp_path, "select * from promptopt.refined_prompt where generation = 2").iloc[0]
        assert refined["status"] == "proposed"
        second = _pool(tmp_path, 2)
        assert second[refined["prompt_id"]]["tokens_per_row"] <= ceiling < chosen["tokens_per_row"]
        assert (
            json.loads(refined["prompt_json"])["metadata"]["objective"]
            == f"at most {ceiling} prompt tokens per row, the best score"
        )

        report_run = defs.resolve_job_def("final_report_job").execute_in_process(
            partition_key="sst2", instance=instance
        )
        meta = report_run.asset_materializations_for_node("final_report")[0].metadata
        report = meta["report"].value
        frontier = report["frontier"]
        assert frontier and [r["tokens_per_row"] for r in frontier] == sorted(r["tokens_per_row"] for r in frontier)
        assert [r["select_score"] for r in frontier] == sorted(r["select_score"] for r in frontier)
        assert all(r["select_interval"][0] <= r["select_score"] <= r["select_interval"][1] for r in frontier)
        assert report["objective"].startswith(f"at most {ceiling}")
        assert report["cost_per_row"]["best"]["prompt_tokens"] > report["cost_per_row"]["initial"]["prompt_tokens"]
        assert "tokens/row" in meta["quality_vs_cost"].value
        board = leaderboard("sst2", [report], {"sst2": 2})
        assert board.iloc[0]["tokens_per_row"] == pytest.approx(report["cost_per_row"]["best"]["prompt_tokens"])
        assert "tok/row" in as_text(board)
