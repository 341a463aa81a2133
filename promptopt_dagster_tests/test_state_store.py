"""The explicit state of an optimization: saved and loaded by key, and enough on its own to go on.

A run may start on a machine that has never seen the previous run's local files (a pod, a fresh
container): only the warehouse, the artifacts and the Dagster instance are shared. These tests give
every run an empty local state directory and expect what one directory for all of them gives.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import dagster as dg
import pytest

from promptopt_dagster.app.state import (
    IterationKey,
    NotContinuable,
    Outcome,
    Search,
    continue_from,
    loop_before,
)
from promptopt_dagster.core.decisions import LoopState, Spend
from promptopt_dagster.core.prompts import Demo, PoolRef, PromptVersion, Retrieval
from promptopt_dagster.defs import state_store as state_store_module
from promptopt_dagster.defs.state_store import WarehouseStateStore
from promptopt_dagster.defs.warehouse import WarehouseResource
from promptopt_dagster.llm.base import LLMRequest
from promptopt_dagster.optimizers.pool import Candidate
from promptopt_dagster_tests.dagster_helpers import _LABELS, SCRIPTS, _sst2_labels, make_defs, prepare, run_iteration

PACKAGE = Path(__file__).resolve().parents[1] / "promptopt_dagster"
START = PromptVersion(system_prompt="Classify.", output_prompt="Review: {user_input}\nLabel:")


@pytest.fixture(params=["duckdb", "postgres"])
def store(request, tmp_path) -> WarehouseStateStore:
    """The store in both warehouses: the DuckDB file of one machine, and Postgres (a real server) for runs that
    share no disk."""
    database = request.getfixturevalue("postgres_url") if request.param == "postgres" else str(tmp_path / "w.duckdb")
    return WarehouseStateStore(warehouse=WarehouseResource(database=database))


def test_search_and_outcome_round_trip_and_a_rerun_search_voids_the_old_decision(store):
    key = IterationKey("sst2", 2, 0)
    assert store.load(key) is None
    pool = [Candidate(START, 0, "baseline", {1: 1.0, 2: 0.0}, 0.5, None, True)]
    store.save_search(key, Search(pool, b"\x00gepa-archive\xff"))
    state = store.load(key)
    assert not state.finished and state.search.optimizer_state == b"\x00gepa-archive\xff"
    assert [(c.id, c.scores, c.select_score) for c in state.search.pool] == [(START.id, {1: 1.0, 2: 0.0}, 0.5)]

    loop = LoopState(best_score=0.75, iterations_without_improvement=1, spent=Spend(requests=7, metric_calls=40))
    store.save_outcome(key, Outcome(START, loop, "patience"))
    state = store.load(key)
    assert state.finished and state.outcome == Outcome(START, loop, "patience")
    assert state.search.optimizer_state == b"\x00gepa-archive\xff"  # the decision kept the search

    store.save_search(key, Search([], None))  # the iteration runs again: its old decision no longer holds
    assert not store.load(key).finished and store.load(key).search.optimizer_state is None


def test_an_iteration_continues_only_from_a_finished_one(store):
    first, second = IterationKey("sst2", 1, 0), IterationKey("sst2", 1, 1)
    assert continue_from(store, first) is None and loop_before(None) == LoopState()
    with pytest.raises(
        NotContinuable, match=r"Iteration g1-i0 of optimization 'sst2' has not finished.*partition g1-i0\|sst2 first"
    ):
        continue_from(store, second)
    store.save_search(first, Search())
    with pytest.raises(NotContinuable):
        continue_from(store, second)
    store.save_outcome(first, Outcome(START, LoopState(best_score=0.5)))
    previous = continue_from(store, second)
    assert previous.key == first and loop_before(previous).best_score == 0.5
    assert store.last_finished("sst2", 1).key == first and store.last_finished("sst2", 2) is None


def _final_report(defs, instance) -> dict:
    result = defs.resolve_job_def("final_report_job").execute_in_process(partition_key="sst2", instance=instance)
    assert result.success
    report = result.asset_materializations_for_node("final_report")[0].metadata["report"].value
    keep = ("best_prompt", "stop_reason", "iterations", "initial_dev_score", "best_dev_score", "best_test_score")
    fresh = ("id", "parent_id", "created_at")  # a new prompt version gets a new id wherever it is made
    return {
        **{k: report[k] for k in keep},
        "best_prompt": {k: v for k, v in report["best_prompt"].items() if k not in fresh},
    }


def test_a_retrieval_pool_is_stored_once_and_every_stored_version_refers_to_it(store, tmp_path, monkeypatch):
    pool = [
        Demo(user_input=f"review {i}: {'fine' if i % 3 else 'dull'}", ground_truth_output=str(i % 3)) for i in range(50)
    ]
    first = START.child(retrieval=Retrieval(k=3, pool=pool))
    second = first.child(calibrate=True)  # another version of the same optimization: the same pool
    stored = [store.stored_form(p) for p in (first, second)]
    assert all(isinstance(p.retrieval.pool, PoolRef) for p in stored) and stored[0].pool_ref == stored[1].pool_ref
    with store.warehouse.connect() as con:
        assert con.execute("select count(*), max(size) from promptopt.demo_pools") == [(1, 50)]
    key = IterationKey("sst2", 1, 0)
    store.save_outcome(key, Outcome(second, LoopState(best_score=0.5)))  # the decision stores the reference too
    loaded = store.load(key).outcome.best_prompt
    assert loaded == stored[1] and "review 7" not in loaded.to_json()
    monkeypatch.setattr(state_store_module, "_POOLS", {})  # another process: the pool comes from the warehouse
    back = store.with_pool(loaded)
    assert back.retrieval.pool == pool and back.render_completion("review 4: fine") == second.render_completion(
        "review 4: fine"
    )
    monkeypatch.setattr(state_store_module, "_POOLS", {})
    elsewhere = WarehouseStateStore(warehouse=WarehouseResource(database=str(tmp_path / "other.duckdb")))
    with pytest.raises(dg.Failure, match=r"retrieval pool \w{12} \(50 rows\) of a stored prompt is not in this"):
        elsewhere.with_pool(loaded)


def test_a_candidate_comes_back_with_the_pool_it_was_scored_with_not_the_optimizations_train_rows(store, monkeypatch):
    """A migration's baseline candidate retrieves from the pool its promoted prompt carries, not from the new
    run's train rows; the candidates fewshot makes retrieve from those. Each must come back with its own."""
    own = [Demo(user_input=f"old review {i}", ground_truth_output=str(i % 2)) for i in range(8)]
    train = [Demo(user_input=f"new review {i}", ground_truth_output=str(i % 2)) for i in range(12)]
    migrated = START.child(retrieval=Retrieval(k=2, pool=own))
    made = START.child(retrieval=Retrieval(k=2, pool=train))
    grown = made.child(retrieval=made.retrieval.model_copy(update={"k": 4}))
    key = IterationKey("sst2", 1, 0)
    candidates = [Candidate(p, 0, "seed", {1: 1.0}, 1.0, None, True) for p in (migrated, made, grown, START)]
    stored = store.save_search(key, Search(candidates, None))
    assert [c.prompt.pool_ref and c.prompt.pool_ref.size for c in stored] == [8, 12, 12, None]
    with store.warehouse.connect() as con:  # the train rows once for both candidates that retrieve from them
        assert con.execute("select size from promptopt.demo_pools order by size") == [(8,), (12,)]
    monkeypatch.setattr(state_store_module, "_POOLS", {})  # the next iteration runs in another process
    loaded = store.load(key, list(train)).search.pool  # the caller holds an equal copy of the train rows
    assert [c.prompt.retrieval.pool if c.prompt.retrieval else None for c in loaded] == [own, train, train, None]
    assert loaded[1].prompt.retrieval.pool is loaded[2].prompt.retrieval.pool  # one list, not one per candidate
    assert loaded[0].prompt.render_completion("old review 3") == migrated.render_completion("old review 3")


def _neighbours_help(request: LLMRequest) -> str:
    """Right only when a demo shown shares two longer words with the review: retrieved demos do, static ones
    seldom."""
    blocks = (request.prompt or "").split("\n\n")
    review = blocks[-1].removeprefix("Review: ").removesuffix("\nSentiment:")
    words = {w for w in review.split() if len(w) > 3}
    shown = [b.split("\nSentiment:")[0].removeprefix("Review: ") for b in blocks[1:-1] if b.startswith("Review: ")]
    if not _LABELS:
        _LABELS.update(_sst2_labels())
    label = _LABELS[review]
    if any(len(words & {w for w in demo.split() if len(w) > 3}) >= 2 for demo in shown):
        return " " + label
    return " negative" if label == "positive" else " positive"


SCRIPTS["neighbours_help"] = _neighbours_help


def test_an_optimization_keeps_one_copy_of_its_retrieval_pool_and_answers_with_it_in_every_step(tmp_path):
    """The stored prompt versions, the loop state and the report name the pool; every step that answers gets it
    back (a step answering without it fails loudly, so the test scores prove it was attached)."""
    options = {"demo_counts": [2], "retrieved_counts": [4]}
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "sst2.json").write_text((PACKAGE.parent / "prompts" / "sst2.json").read_text())
    with dg.instance_for_test() as instance:
        defs = make_defs(tmp_path, script="neighbours_help", prompts_dir=prompts)
        assert prepare(defs, instance).success
        for iteration in (0, 1):
            assert run_iteration(defs, instance, iteration, target_score=1.1, max_iterations=2, options=options).success
        report = _final_report(defs, instance)
        promoted = defs.resolve_job_def("promote_prompt").execute_in_process(
            partition_key="sst2",
            instance=instance,
            run_config={"ops": {"promotion_audit": {"config": {"requested_by": "ana", "optimization": "sst2"}}}},
        )
    assert promoted.success
    ref = report["best_prompt"]["retrieval"]["pool"]
    # without a neighbour among its demos the model is always wrong: the test rows were answered with the pool
    assert set(ref) == {"id", "size"} and ref["size"] > 100 and report["best_test_score"] > 0.5
    with WarehouseResource(database=str(tmp_path / "warehouse.duckdb")).connect() as con:
        assert con.execute("select pool_id, size from promptopt.demo_pools") == [(ref["id"], ref["size"])]
        some_row = con.execute("select user_input from promptopt.dataset_splits where split = 'train' limit 1")[0][0]
        stored = [
            text
            for table, column in [
                *((t, "prompt_json") for t in ("baseline_prompt", "refined_prompt", "best_prompt")),
                ("iteration_state", "outcome_json"),
            ]
            for (text,) in con.execute(f"select {column} from promptopt.{table}")
        ]
    assert len(stored) == 8 and sum(ref["id"] in text for text in stored) >= 5
    assert not any(json.dumps(some_row)[1:-1] in text for text in stored)  # no version carries the pool's rows
    # the loop's and the report's artifacts name it too (a promotion's audit row holds the served document, whole)
    artifacts = [p for p in (tmp_path / "artifacts").rglob("*.json") if "promotion_audit" not in p.parts]
    assert len(artifacts) > 8 and max(path.stat().st_size for path in artifacts) < 200_000
    # the promoted file, which applications read alone, carries the pool the report names
    served = PromptVersion.model_validate(json.loads((prompts / "promoted" / "sst2.json").read_text())["prompt"])
    assert served.carries_pool and served.without_pool()[0].pool_ref == PoolRef.model_validate(ref)


def test_runs_with_an_empty_local_state_directory_each_give_the_same_best_prompt_and_report(tmp_path):
    settings = dict(target_score=1.1, max_iterations=2)
    # today's way: every run on one machine, one state directory (cache and search files) for all
    shared = tmp_path / "one_machine"
    shared.mkdir()
    with dg.instance_for_test() as instance:
        defs = make_defs(shared, cache=True)
        assert prepare(defs, instance).success
        for iteration in (0, 1):
            assert run_iteration(defs, instance, iteration, **settings).success
        expected = _final_report(defs, instance)

    # each run on a fresh machine: only the warehouse, the artifacts and the instance are shared
    cluster = tmp_path / "cluster"
    cluster.mkdir()
    with dg.instance_for_test() as instance:
        runs = iter(range(100))

        def fresh() -> dg.Definitions:
            state_dir = tmp_path / f"pod{next(runs)}"
            state_dir.mkdir()
            return make_defs(cluster, cache=True, state_dir=state_dir)

        assert prepare(fresh(), instance).success
        for iteration in (0, 1):
            assert run_iteration(fresh(), instance, iteration, **settings).success
        got = _final_report(fresh(), instance)
    assert got == expected and expected["iterations"] == 2
    assert expected["best_test_score"] == 1.0
    assert expected["best_prompt"]["demos"] or expected["best_prompt"]["retrieval"]


FALLBACK = re.compile(r"When unsure, answer (\w+)\.")


def _falls_back(request: LLMRequest) -> str:
    """A task model that answers the label the instruction last says to fall back on, else `maybe`."""
    found = FALLBACK.findall(request.prompt or "")
    return f" {found[-1]}" if found else " maybe"


def _reflects(request: LLMRequest) -> str:
    """A reflection model that answers from what it is sent: the text it is shown, told to fall back on the
    expected label of the first wrong row it was shown (GEPA's proposal format: one fenced block)."""
    text = request.messages[-1][1] if request.messages else request.prompt or ""
    current = text.split("```", 2)[1].strip("\n")
    if "(component: output_prompt)" in text:
        return f"```\n{current}\n```"
    wrong = re.search(r'the expected answer is \\?"(\w+)', text)
    return f"```\n{current} When unsure, answer {wrong.group(1) if wrong else 'positive'}.\n```"


SCRIPTS.update({"falls_back": _falls_back, "reflects": _reflects})


def _gepa_iterations(defs_for_run, instance) -> list[dict]:
    gepa = dict(optimizer="gepa", options={"rows_per_iteration": 60, "minibatch_size": 3}, max_iterations=2)
    assert prepare(defs_for_run(), instance).success
    seen = []
    for iteration in (0, 1):
        result = run_iteration(defs_for_run(), instance, iteration, target_score=1.1, patience=3, **gepa)
        assert result.success
        made = {m.asset_key.path[-1]: m.metadata for m in result.asset_materializations_for_node("refined_prompt")}
        meta, pool = made["refined_prompt"], made["candidate_pool"]
        seen.append(
            {
                "status": meta["status"].value,
                "prompt": meta["prompt"].value.split("\n", 1)[1],  # the texts; ids are new in every run
                "candidates": pool["candidates"].value,
                "state_kept": meta["optimizer_state_bytes"].value > 0,
                # GEPA's archive as its lineage lists it: what the search found, step by step
                "lineage": [
                    (c["kind"], c["select_score"], c["found_after_metric_calls"])
                    for c in meta["candidates"].value
                    if "kind" in c
                ],
            }
        )
    return seen


def test_a_gepa_search_resumes_from_the_stored_state_on_a_machine_without_the_previous_runs_files(tmp_path):
    """Iteration 1 continues iteration 0's GEPA search from the archive in the state store: with an empty
    local directory per run, it proposes and pools exactly what it does on one machine."""
    scripts = dict(script="falls_back", optimizer_script="reflects", cache=True)
    one = tmp_path / "one_machine"
    one.mkdir()
    with dg.instance_for_test() as instance:
        expected = _gepa_iterations(lambda: make_defs(one, **scripts), instance)
    cluster = tmp_path / "cluster"
    cluster.mkdir()
    runs = iter(range(100))

    def fresh() -> dg.Definitions:
        state_dir = tmp_path / f"pod{next(runs)}"
        state_dir.mkdir()
        return make_defs(cluster, state_dir=state_dir, **scripts)

    with dg.instance_for_test() as instance:
        got = _gepa_iterations(fresh, instance)
    assert got == expected
    # the search went on: iteration 1 started from a non-empty archive and pooled more candidates
    assert expected[0]["state_kept"] and expected[1]["state_kept"]
    # iteration 1's archive starts with iteration 0's whole search (the seed is still the initial prompt,
    # scored 0.0): the search went on instead of starting again from iteration 0's best prompt
    first, second = expected[0]["lineage"], expected[1]["lineage"]
    assert second[: len(first)] == first and len(second) > len(first) and first[0][:2] == ("seed", 0.0)
    assert expected[1]["candidates"] > expected[0]["candidates"]
    assert not any(path.name == "search" for path in tmp_path.rglob("*"))  # no search folder anywhere


def test_no_sql_outside_the_state_store_and_the_warehouse_modules():
    """Every query of the warehouse by hand is in the store (defs/state_store.py) or the modules that
    implement storage (IO managers, the response cache and its usage ledger): a query anywhere else
    is state flowing through a side channel."""
    allowed = {
        "defs/state_store.py",
        "defs/io_managers.py",
        "defs/warehouse.py",
        "defs/artifact_io_managers.py",
        "llm/cache.py",
        "llm/ledger.py",
    }
    sql = re.compile(
        r"\b(select\s+(\*|\w+(,\s*\w+)*)\s+from\s|insert\s+into\s|update\s+\S+\s+set\s|delete\s+from\s"
        r"|create\s+(table|schema)\s|alter\s+table\s)",
        re.I,
    )
    found = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if sql.search(path.read_text()) and str(path.relative_to(PACKAGE)) not in allowed
    )
    assert found == []
