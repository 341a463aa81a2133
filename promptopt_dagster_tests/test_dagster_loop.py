"""The Dagster layer end to end with a scripted fake model: assets, checks, tables, sensor."""

from __future__ import annotations

import json
import shutil

import dagster as dg
import pytest

from promptopt_dagster.defs.names import DRIVER_TAG
from promptopt_dagster.defs.partitions import iteration_key
from promptopt_dagster_tests.dagster_helpers import DATA_DIR, make_defs, prepare, query, run_iteration


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def _checks(result) -> dict[str, bool]:
    return {f"{e.asset_key.to_user_string()}:{e.check_name}": e.passed for e in result.get_asset_check_evaluations()}


def test_one_iteration_materializes_every_asset_and_passes_the_gates(tmp_path, instance):
    defs = make_defs(tmp_path)
    assert prepare(defs, instance).success
    result = run_iteration(defs, instance, 0, target_score=1.1)
    assert result.success

    checks = _checks(result)
    assert checks == {
        "baseline_predictions:all_rows_answered": True,
        "baseline_metrics:scores_in_range": True,
        "refined_prompt:prompt_is_usable": True,
        "refined_prompt:no_held_out_rows": True,
        "refined_predictions:all_rows_answered": True,
        "refined_metrics:scores_in_range": True,
    }

    report = query(tmp_path, "select * from promptopt.comparison_report")
    assert len(report) == 1
    row = report.iloc[0]
    # Without demos the scripted model is always wrong; the fewshot optimizer adds demos and wins.
    assert (row["baseline_score"], row["refined_score"], bool(row["accepted"])) == (0.0, 1.0, True)
    assert row["stop_reason"] is None or str(row["stop_reason"]) in ("<NA>", "nan")

    preds = query(tmp_path, "select * from promptopt.baseline_predictions")
    assert len(preds) == 20 and set(preds["optimization"]) == {"sst2"} and set(preds["iteration"]) == {"g1-i0"}
    best = query(tmp_path, "select * from promptopt.best_prompt")
    chosen = json.loads(best.iloc[0]["prompt_json"])
    assert (chosen["demos"] or chosen["retrieval"]) and best.iloc[0]["version"] == 1

    meta = result.asset_materializations_for_node("comparison_report")[0].metadata
    assert "```diff" in meta["report"].value and (
        "+[demos:" in meta["report"].value or "+[retrieved demos:" in meta["report"].value
    )
    assert "Gain on the 20 confirm rows" in meta["report"].value
    assert meta["baseline_score"].value == 0.0 and meta["refined_score"].value == 1.0
    assert [r.data["prompt"] for r in meta["scores"].value.records] == ["baseline", "refined"]


def test_next_iteration_starts_from_best_prompt_and_partitions_round_trip(tmp_path, instance):
    defs = make_defs(tmp_path)
    prepare(defs, instance)
    first = run_iteration(defs, instance, 0, target_score=1.1)
    second = run_iteration(defs, instance, 1, target_score=1.1)
    assert first.success and second.success
    # each iteration names the partition it continued from, with a link to that partition's best prompt
    assert "continued_from" not in first.asset_materializations_for_node("baseline_prompt")[0].metadata
    link = second.asset_materializations_for_node("baseline_prompt")[0].metadata["continued_from"].value
    assert link == "[g1-i0|sst2](/assets/best_prompt?view=partitions&partition=g1-i0%7Csst2)"

    prompts = query(tmp_path, "select step, prompt_id from promptopt.best_prompt order by step")
    baseline_1 = query(tmp_path, "select prompt_id from promptopt.baseline_prompt where step = 1")
    assert baseline_1.iloc[0]["prompt_id"] == prompts.iloc[0]["prompt_id"]
    # the loop state travels through the state store, not through the prompt rows
    state = query(
        tmp_path, "select iteration, continued_from, outcome_json from promptopt.iteration_state order by iteration"
    )
    assert state["continued_from"].tolist()[1] == "g1-i0" and state["continued_from"].isna().tolist()[0]
    assert json.loads(state.iloc[0]["outcome_json"])["best_score"] == 1.0
    assert json.loads(state.iloc[0]["outcome_json"])["best_prompt"]["id"] == prompts.iloc[0]["prompt_id"]

    # Each partition write replaced only its own rows, and the IO manager reads each one back.
    counts = query(tmp_path, "select step, count(*) n from promptopt.baseline_predictions group by 1 order by 1")
    assert counts["n"].tolist() == [20, 20]
    for iteration in (0, 1):
        key = iteration_key("sst2", 1, iteration)
        loaded = defs.load_asset_value("baseline_predictions", partition_key=key, instance=instance)
        assert len(loaded) == 20 and set(loaded["step"]) == {iteration}

    # Rematerializing iteration 0 keeps iteration 1 intact.
    assert run_iteration(defs, instance, 0, target_score=1.1).success
    counts = query(tmp_path, "select step, count(*) n from promptopt.baseline_predictions group by 1 order by 1")
    assert counts["n"].tolist() == [20, 20]


def _tick(defs, instance, cursor=None):
    sensor = defs.resolve_sensor_def("iteration_sensor")
    context = dg.build_sensor_context(
        instance=instance, definitions=defs, cursor=cursor, instance_ref=instance.get_ref()
    )
    return sensor.evaluate_tick(context)


def test_sensor_adds_the_next_partition_and_requests_its_run(tmp_path, instance):
    defs = make_defs(tmp_path)
    prepare(defs, instance)
    run_iteration(defs, instance, 0, target_score=1.1, max_iterations=4)
    tick = _tick(defs, instance)

    assert [r.partition_keys for r in tick.dynamic_partitions_requests] == [["g1-i1"]]
    (request,) = tick.run_requests
    assert request.job_name == "optimize_iteration"
    assert request.partition_key == str(iteration_key("sst2", 1, 1))
    assert not request.run_config  # the settings travel with the generation, not with run config
    assert request.tags[DRIVER_TAG] == "sensor"

    # The cursor moved past that materialization: the next tick requests nothing new.
    again = _tick(defs, instance, cursor=tick.cursor)
    assert again.run_requests == [] and again.dynamic_partitions_requests == []


def test_sensor_stops_on_threshold_and_requests_the_final_report(tmp_path, instance):
    defs = make_defs(tmp_path)
    prepare(defs, instance)
    result = run_iteration(defs, instance, 0, target_score=0.9)
    assert result.asset_materializations_for_node("best_prompt")[0].metadata["stop_reason"].value == "threshold"
    tick = _tick(defs, instance)
    assert tick.dynamic_partitions_requests == []
    assert [(r.job_name, r.partition_key) for r in tick.run_requests] == [("final_report_job", "sst2")]


def test_sensor_updates_the_leaderboard_after_a_final_report(tmp_path, instance):
    defs = make_defs(tmp_path)
    prepare(defs, instance)
    run_iteration(defs, instance, 0, target_score=0.9)
    first = _tick(defs, instance)
    assert (
        defs.resolve_job_def("final_report_job")
        .execute_in_process(partition_key="sst2", instance=instance, tags={DRIVER_TAG: "sensor"})
        .success
    )
    second = _tick(defs, instance, cursor=first.cursor)
    assert [(r.job_name, r.partition_key) for r in second.run_requests] == [("leaderboard_job", "sst2")]
    assert "promptopt/optimization" not in second.run_requests[0].tags  # the dataset's board, not the chain's


def test_final_reports_that_arrive_while_a_leaderboard_run_waits_request_no_other(tmp_path, instance):
    """A queued board run reads every report when it runs: reports written before it starts ride along,
    two reports in one tick ask for one run, and a board run that has started does not count."""
    defs = make_defs(tmp_path)
    prepare(defs, instance)
    run_iteration(defs, instance, 0, target_score=0.9)
    cursor = _tick(defs, instance).cursor
    final = defs.resolve_job_def("final_report_job")

    def report_twice_then_tick(cursor):
        for _ in range(2):
            assert final.execute_in_process(
                partition_key="sst2", instance=instance, tags={DRIVER_TAG: "sensor"}
            ).success
        return _tick(defs, instance, cursor=cursor)

    tick = report_twice_then_tick(cursor)
    assert [(r.job_name, r.partition_key) for r in tick.run_requests] == [("leaderboard_job", "sst2")]

    # created and not yet started (queued runs look the same to the check; the instance here has no queue)
    waiting = dg.DagsterRun(
        job_name="leaderboard_job", status=dg.DagsterRunStatus.NOT_STARTED, tags={"dagster/partition": "sst2"}
    )
    instance.add_run(waiting)
    tick = report_twice_then_tick(tick.cursor)
    assert tick.run_requests == []

    instance.report_run_failed(waiting)  # no longer waiting: the next report asks for a run again
    tick = report_twice_then_tick(tick.cursor)
    assert [(r.job_name, r.partition_key) for r in tick.run_requests] == [("leaderboard_job", "sst2")]


def test_sensor_stops_on_patience(tmp_path, instance):
    defs = make_defs(tmp_path, script="never_right")
    prepare(defs, instance)
    run_iteration(defs, instance, 0, target_score=0.9, patience=2)
    first = _tick(defs, instance)
    assert [r.partition_key for r in first.run_requests] == [str(iteration_key("sst2", 1, 1))]  # patience left
    run_iteration(defs, instance, 1, target_score=0.9, patience=2)
    second = _tick(defs, instance, cursor=first.cursor)
    assert [(r.job_name, r.partition_key) for r in second.run_requests] == [("final_report_job", "sst2")]
    stop = query(
        tmp_path, "select stop_reason, iterations_without_improvement from promptopt.comparison_report where step = 1"
    )
    assert (stop.iloc[0]["stop_reason"], stop.iloc[0]["iterations_without_improvement"]) == ("patience", 2)


def test_sensor_leaves_cli_driven_runs_alone(tmp_path, instance):
    defs = make_defs(tmp_path)
    prepare(defs, instance)
    run_iteration(defs, instance, 0, target_score=1.1, tags={DRIVER_TAG: "cli"})
    tick = _tick(defs, instance)
    assert tick.run_requests == [] and tick.dynamic_partitions_requests == []


def test_final_report_scores_initial_and_best_prompt_on_test(tmp_path, instance):
    defs = make_defs(tmp_path)
    prepare(defs, instance)
    run_iteration(defs, instance, 0, target_score=0.9)
    result = defs.resolve_job_def("final_report_job").execute_in_process(partition_key="sst2", instance=instance)
    report = result.asset_materializations_for_node("final_report")[0].metadata["report"].value
    assert report["stop_reason"] == "threshold" and report["iterations"] == 1
    assert (report["initial_test_score"], report["best_test_score"]) == (0.0, 1.0)
    assert report["initial_dev_score"] == 0.0 and report["best_dev_score"] == 1.0
    # every test row right (or wrong) leaves no doubt: the intervals collapse on the score
    assert report["test_intervals"]["initial"] == [0.0, 0.0] and report["test_intervals"]["best"] == [1.0, 1.0]
    # baseline 20 + refined 20 on confirm rows; on 10 select rows the baseline, then 2 candidates on a
    # 10-row minibatch and again on all 10 select rows; both are right on every row there, and the race
    # scores the cheaper (static demos) on the select rows plus the first 10 spare rows, where it is right
    # on every row again: the retrieved one could at best tie it, so it does not race, and with one left the
    # race ends; test 2 x 20. The fake model has no cache here.
    assert report["llm_calls"] == 20 + 20 + 10 + 2 * (10 + 10) + (10 + 10) + 40
    assert set(report["best_prompt"]) >= {"system_prompt", "output_prompt", "demos", "id", "parent_id", "version"}


def test_bad_dataset_file_fails_the_run_and_keeps_stored_rows(tmp_path, instance):
    defs = make_defs(tmp_path)
    assert prepare(defs, instance).success
    before = query(tmp_path, "select * from promptopt.dataset_splits order by split, row_id")

    bad_data = tmp_path / "data"
    shutil.copytree(DATA_DIR, bad_data)
    (bad_data / "sst2" / "dev.csv").write_text("text,label\ngood film,positive\n")
    result = prepare(make_defs(tmp_path, data_dir=bad_data), instance)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
    while failure.cause is not None:
        failure = failure.cause
    assert "dev.csv" in failure.message and "ground_truth_output" in failure.message

    after = query(tmp_path, "select * from promptopt.dataset_splits order by split, row_id")
    assert after.equals(before)


def test_partition_keys_parse_from_strings_as_the_ui_sends_them():
    from promptopt_dagster.defs.partitions import iteration_key, parse_key

    # Runs launched from the UI or GraphQL carry the key as a string, not a MultiPartitionKey (seen under dagster dev).
    assert parse_key(str(iteration_key("sst2", 2, 3))) == ("sst2", 2, 3)
    assert parse_key(iteration_key("sms_spam", 1, 12)) == ("sms_spam", 1, 12)


# --- failed rows, usage and budget ------------------------------------------------------------------------


def test_failed_rows_are_stored_and_the_blocking_check_stops_the_iteration_over_the_limit(tmp_path, instance):
    from promptopt_dagster.app.optimizations import OptimizationSpec

    assert OptimizationSpec(name="sst2", dataset="sst2").max_failed_fraction == 0.02
    defs = make_defs(tmp_path, script="fails_one_row_in_five")
    assert prepare(defs, instance).success
    result = run_iteration(defs, instance, 0, target_score=1.1)
    assert not result.success
    assert _checks(result) == {"baseline_predictions:all_rows_answered": False}
    stored = query(tmp_path, "select error, attempts from promptopt.baseline_predictions")
    failed = stored[stored["error"].notna()]
    assert len(stored) == 20 and 0 < len(failed) < 20  # every row kept, failures with their reason
    assert failed["error"].str.contains("rejected this row").all() and (failed["attempts"] == 1).all()
    assert (
        query(tmp_path, "select count(*) as n from information_schema.tables where table_name = 'refined_prompt'")["n"][
            0
        ]
        == 0
    )  # nothing ran downstream

    # The same failures under a looser limit: the iteration goes on, failed rows score 0.
    assert run_iteration(defs, instance, 0, target_score=1.1, max_failed_fraction=0.5).success


def test_usage_is_summed_per_iteration_and_a_budget_stops_the_loop(tmp_path, instance):
    defs = make_defs(tmp_path)
    assert prepare(defs, instance).success
    # Iteration 0 sends 20 baseline rows, 10 baseline select rows, 2 candidates x (10 minibatch + 10 select)
    # rows, the race (the cheaper one, right on every row, on 10 select + 10 spare; the other could at best
    # tie it) and 20 refined rows.
    result = run_iteration(defs, instance, 0, target_score=1.1, max_requests=50)
    assert result.success
    report = query(tmp_path, "select stop_reason, why, usage_json, spent_json from promptopt.comparison_report").iloc[0]
    assert report["stop_reason"] == "budget" and "requests 110 reached the budget of 50" in report["why"]
    assert json.loads(report["spent_json"])["requests"] == 110
    assert json.loads(report["spent_json"])["metric_calls"] == 110  # rows scored, whoever answered them
    assert json.loads(report["usage_json"])["fake/scripted-demos_help"]["llm_calls"] == 110
    meta = result.asset_materializations_for_node("comparison_report")[0].metadata
    assert meta["requests"].value == 110 and meta["stop_reason"].value == "budget"

    final = defs.resolve_job_def("final_report_job").execute_in_process(partition_key="sst2", instance=instance)
    data = final.asset_materializations_for_node("final_report")[0].metadata["report"].value
    assert data["stop_reason"] == "budget"
    assert data["usage"]["total"]["requests"] == 110 + 40 == data["requests"]  # + initial and best on 20 test rows
    assert data["usage"]["final_report"]["requests"] == 40
    assert set(data["usage"]["by_model"]) == {"fake/scripted-demos_help"}


def test_usage_shows_this_run_and_the_whole_optimization_after_a_cached_rerun(tmp_path, instance):
    defs = make_defs(tmp_path, cache=True)
    assert prepare(defs, instance).success
    first = [
        run_iteration(defs, instance, i, target_score=1.1)
        .asset_materializations_for_node("comparison_report")[0]
        .metadata
        for i in (0, 1)
    ]
    calls = [m["llm_calls"].value for m in first]
    assert all(c > 0 for c in calls)
    assert first[1]["optimization_llm_calls"].value == sum(calls)  # iterations 0 and 1 together

    rerun = (
        run_iteration(defs, instance, 1, target_score=1.1)
        .asset_materializations_for_node("comparison_report")[0]
        .metadata
    )
    assert rerun["llm_calls"].value == 0 and rerun["cache_hits"].value > 0  # this run: all from the cache
    assert rerun["optimization_llm_calls"].value == calls[0]  # iteration 0 as materialized, plus 0
    assert rerun["optimization_answers"].value == first[1]["optimization_answers"].value  # same answers consumed

    final = (
        defs.resolve_job_def("final_report_job")
        .execute_in_process(partition_key="sst2", instance=instance)
        .asset_materializations_for_node("final_report")[0]
        .metadata
    )
    assert final["llm_calls"].value + final["cache_hits"].value == 40  # this run: initial and best on 20 test rows
    assert final["optimization_answers"].value == rerun["optimization_answers"].value + 40


def test_an_iteration_without_loaded_splits_names_the_fix(tmp_path, instance):
    """A backfill over `<dataset>|0` on a fresh home used to fail with '0 rows failed (100.0% > 2.0%)'."""
    defs = make_defs(tmp_path)
    result = run_iteration(defs, instance, 0)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.message
    assert "never loaded" in message and "prepare_dataset" in message and "sst2" in message
    assert "rows failed" not in message


def test_a_prompt_that_copies_a_dev_row_is_stopped_by_the_leakage_gate(tmp_path, instance):
    defs = make_defs(tmp_path, script="quotes_a_row_it_was_shown")
    assert prepare(defs, instance).success
    result = run_iteration(defs, instance, 0, optimizer="reflective", target_score=1.1)
    assert not result.success
    gate = next(e for e in result.get_asset_check_evaluations() if e.check_name == "no_held_out_rows")
    assert not gate.passed and "copied verbatim from dev row(s)" in gate.description
    assert (
        query(tmp_path, "select count(*) as n from information_schema.tables where table_name = 'refined_predictions'")[
            "n"
        ][0]
        == 0
    )  # never scored


def test_two_optimizations_of_one_dataset_keep_separate_histories_and_generations(tmp_path, instance):
    """sst2 and sst2_quick (data/optimizations.yaml) side by side; an edit of one opens its generation 2."""
    from promptopt_dagster_tests.dagster_helpers import generation_of, small_spec, start

    defs = make_defs(tmp_path)
    assert prepare(defs, instance).success
    for name, seed in (("sst2", 0), ("sst2_quick", 1)):
        spec = small_spec(name, dataset="sst2", seed=seed, stop={"target_score": 1.1, "max_iterations": 1})
        assert generation_of(start(defs, instance, spec, tags={DRIVER_TAG: "cli"})) == 1
        ensure = run_iteration_in(defs, instance, name, 1, 0)
        assert ensure.success
        assert (
            defs.resolve_job_def("final_report_job").execute_in_process(partition_key=name, instance=instance).success
        )
    best = query(tmp_path, "select optimization, iteration, generation from promptopt.best_prompt order by 1")
    assert best.values.tolist() == [["sst2", "g1-i0", 1], ["sst2_quick", "g1-i0", 1]]
    reports = query(tmp_path, "select optimization, generation from promptopt.final_report order by 1")
    assert reports.values.tolist() == [["sst2", 1], ["sst2_quick", 1]]

    # sst2_quick's settings change: generation 2, whose rows sit beside generation 1's
    edited = small_spec("sst2_quick", dataset="sst2", seed=2, stop={"target_score": 1.1, "max_iterations": 1})
    assert generation_of(start(defs, instance, edited, tags={DRIVER_TAG: "cli"})) == 2
    assert run_iteration_in(defs, instance, "sst2_quick", 2, 0).success
    kept = query(tmp_path, "select iteration from promptopt.best_prompt where optimization = 'sst2_quick' order by 1")
    assert kept["iteration"].tolist() == ["g1-i0", "g2-i0"]
    # the same settings again continue their generation instead of opening a third
    assert generation_of(start(defs, instance, edited, tags={DRIVER_TAG: "cli"})) == 2

    # generation 2's report sits beside generation 1's, which stays as it was
    first_report = query(
        tmp_path, "select report_json from promptopt.final_report where optimization = 'sst2_quick'"
    ).iloc[0]["report_json"]
    assert (
        defs.resolve_job_def("final_report_job")
        .execute_in_process(partition_key="sst2_quick", instance=instance)
        .success
    )
    reports = query(tmp_path, "select optimization, generation, report_json from promptopt.final_report order by 1, 2")
    assert reports[["optimization", "generation"]].values.tolist() == [
        ["sst2", 1],
        ["sst2_quick", 1],
        ["sst2_quick", 2],
    ]
    assert reports.iloc[1]["report_json"] == first_report

    # the leaderboard of sst2: a row per optimization and generation, each optimization's current one marked
    result = defs.resolve_job_def("leaderboard_job").execute_in_process(partition_key="sst2", instance=instance)
    board = result.output_for_node("leaderboard")
    rows = {(r["optimization"], r["generation"]): r for r in board.to_dict("records")}
    assert set(rows) == {("sst2", 1), ("sst2_quick", 1), ("sst2_quick", 2)}
    assert [rows[k]["current"] for k in (("sst2", 1), ("sst2_quick", 1), ("sst2_quick", 2))] == [True, False, True]
    assert board["rank"].tolist() == [1, 2, 3] and board["best_test_score"].is_monotonic_decreasing
    for (name, generation), row in rows.items():
        report = json.loads(
            reports[(reports.optimization == name) & (reports.generation == generation)].iloc[0]["report_json"]
        )
        assert row["best_test_score"] == report["best_test_score"] and row["prompt_id"] == report["best_prompt"]["id"]
        assert [row["test_low_95"], row["test_high_95"]] == report["test_intervals"]["best"]
        assert (row["llm_calls"], row["iterations"], row["stop_reason"]) == (
            report["llm_calls"],
            report["iterations"],
            report["stop_reason"],
        )
        assert (row["optimizer"], row["task_model"]) == ("fewshot", report["task_model"]) and row["task_model"]
    shown = result.asset_materializations_for_node("leaderboard")[0].metadata
    assert len(shown["leaderboard"].value.records) == 3
    assert shown["score_vs_cost"].value.startswith("![score vs cost](data:image/png;base64,")


def run_iteration_in(defs, instance, optimization: str, generation: int, iteration: int):
    from promptopt_dagster.defs.partitions import ensure_iteration

    ensure_iteration(instance, generation, iteration)
    return defs.resolve_job_def("optimize_iteration").execute_in_process(
        partition_key=iteration_key(optimization, generation, iteration),
        instance=instance,
        tags={DRIVER_TAG: "test"},
        raise_on_error=False,
    )
