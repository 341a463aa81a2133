"""Several scorers, a user scorer by dotted path and the LLM judge, through the real Dagster loop."""

from __future__ import annotations

import json
import textwrap

import dagster as dg
import pytest

from promptopt_dagster_tests import custom_scorers
from promptopt_dagster_tests.dagster_helpers import DATA_DIR, PROMPTS_DIR, make_defs, prepare, query, run_iteration


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def _project(tmp_path, scorers: str, extra: str = "") -> tuple:
    """A manifest over the shipped sst2 files with the given scorers (absolute paths: no copies)."""
    data = tmp_path / "data"
    data.mkdir()
    files = {s: str(DATA_DIR / "sst2" / f"{s}.csv") for s in ("train", "dev", "test")}
    (data / "manifest.yaml").write_text(
        textwrap.dedent(f"""
        scorers:
          first_word: promptopt_dagster_tests.custom_scorers:first_word_match
        {extra}
        datasets:
          sst2:
            files: {json.dumps(files)}
            labels: [positive, negative]
            initial_prompt: {PROMPTS_DIR / "sst2.json"}
            max_output_tokens: 4
    """)
        + textwrap.indent(textwrap.dedent(scorers), "    ")
    )
    return data


WEIGHTED = """
scorers:
  - {name: accuracy, weight: 1}
  - {name: first_word, weight: 1}
  - {name: llm_judge, weight: 0.5, options: {rubric: "Does the answer name the review's sentiment?"}}
target_metric: aggregate
"""


def test_weighted_scorers_custom_and_judge_through_one_iteration_and_the_report(tmp_path, instance):
    data = _project(tmp_path, WEIGHTED)
    defs = make_defs(tmp_path, data_dir=data, judge_script="judge_exact")
    assert prepare(defs, instance).success
    custom_scorers.CALLS.clear()
    result = run_iteration(defs, instance, 0, target_score=1.1)
    assert result.success
    assert custom_scorers.CALLS, "the dotted-path scorer was never called"

    metrics = query(tmp_path, "select * from promptopt.baseline_metrics order by scorer, row_id")
    assert set(metrics["scorer"]) == {"accuracy", "first_word", "llm_judge", "aggregate"}
    assert metrics[metrics["is_target"]]["scorer"].unique().tolist() == ["aggregate"]
    preds = query(tmp_path, "select * from promptopt.baseline_predictions order by row_id")
    first = metrics[metrics["scorer"] == "first_word"].sort_values("row_id")
    expected = custom_scorers.first_word_match(preds["prediction"].tolist(), preds["ground_truth_output"].tolist())
    assert first["score"].tolist() == expected
    wide = metrics.pivot(index="row_id", columns="scorer", values="score")
    weighted = (wide["accuracy"] + wide["first_word"] + 0.5 * wide["llm_judge"]) / 2.5
    assert wide["aggregate"].tolist() == pytest.approx(weighted.tolist())
    judged = metrics[metrics["scorer"] == "llm_judge"]
    assert judged["rationale"].notna().all() and judged["rationale"].str.contains("maybe").any()

    meta = result.asset_materializations_for_node("baseline_metrics")[0].metadata
    for key in ("accuracy", "first_word", "llm_judge", "aggregate", "score"):
        assert key in meta
    assert meta["target_metric"].value == "aggregate"
    worst = meta["worst_rows"].value.splitlines()
    assert "first_word" in worst[0] and "rationale" in worst[0] and "llm_judge: says maybe" in worst[2]
    assert meta["llm_calls"].value == 20  # the judge's calls on this asset

    report = query(tmp_path, "select * from promptopt.comparison_report").iloc[0]
    scores = json.loads(report["scores_json"])
    assert report["metric"] == "aggregate" and set(scores["baseline"]) == {
        "accuracy",
        "first_word",
        "llm_judge",
        "aggregate",
    }
    assert report["baseline_score"] == pytest.approx(scores["baseline"]["aggregate"])
    assert scores["refined"]["accuracy"] == 1.0 and bool(report["accepted"])
    usage = json.loads(report["usage_json"])
    judge_calls = sum(u["llm_calls"] for m, u in usage.items() if "judge" in m)
    # baseline and refined on confirm rows, the baseline on 10 select rows, both candidates on the minibatch
    # and on all select rows, and the race (the cheaper one, at the maximum, on 10 select + 10 spare rows;
    # the other could at best tie it): every answer was judged
    assert judge_calls == 20 + 20 + 10 + 2 * (10 + 10) + (10 + 10)

    final = defs.resolve_job_def("final_report_job").execute_in_process(partition_key="sst2", instance=instance)
    out = final.asset_materializations_for_node("final_report")[0].metadata["report"].value
    assert out["metric"] == "aggregate" and [s["name"] for s in out["scorers"]] == [
        "accuracy",
        "first_word",
        "llm_judge",
    ]
    assert set(out["test_scores"]["best"]) == {"accuracy", "first_word", "llm_judge", "aggregate"}
    assert out["best_test_score"] == out["test_scores"]["best"]["aggregate"]
    assert out["dev_scores"]["best"] == scores["refined"] and out["dev_scores"]["initial"] == scores["baseline"]


def test_the_run_can_target_one_scorer_instead_of_the_aggregate(tmp_path, instance):
    data = _project(tmp_path, WEIGHTED)
    defs = make_defs(tmp_path, data_dir=data, judge_script="judge_exact")
    prepare(defs, instance)
    assert run_iteration(defs, instance, 0, target_score=1.1, target_metric="first_word").success
    report = query(tmp_path, "select * from promptopt.comparison_report").iloc[0]
    assert report["metric"] == "first_word"
    assert report["baseline_score"] == json.loads(report["scores_json"])["baseline"]["first_word"]


def test_a_user_scorer_shadowing_a_builtin_stops_before_any_model_call(tmp_path, instance):
    data = _project(
        tmp_path,
        "target_metric: accuracy\n",
        extra="  accuracy: promptopt_dagster_tests.custom_scorers:first_word_match",
    )
    defs = make_defs(tmp_path, data_dir=data)
    result = prepare(defs, instance)
    assert not result.success
    message = str(
        result.failure_data_for_node("dataset_splits").error.cause
        or result.failure_data_for_node("dataset_splits").error
    )
    assert "'accuracy'" in message and "custom_scorers:first_word_match" in message and "built-in" in message
