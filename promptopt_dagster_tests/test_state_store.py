"""The explicit state of an optimization: saved and loaded by key, and enough on its own to go on.

A run may start on a machine that has never seen the previous run's local files (a pod, a fresh
container): only the warehouse, the artifacts and the Dagster instance are shared. These tests give
every run an empty local state directory and expect what one directory for all of them gives.
"""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
import pytest
from dagster_duckdb import DuckDBResource

from promptopt_dagster.app.state import (
    IterationKey,
    NotContinuable,
    Outcome,
    Search,
    continue_from,
    loop_before,
)
from promptopt_dagster.core.decisions import LoopState, Spend
from promptopt_dagster.core.prompts import PromptVersion
from promptopt_dagster.defs.state_store import WarehouseStateStore
from promptopt_dagster.optimizers.pool import Candidate
from promptopt_dagster_tests.dagster_helpers import make_defs, prepare, run_iteration

PACKAGE = Path(__file__).resolve().parents[1] / "promptopt_dagster"
START = PromptVersion(system_prompt="Classify.", output_prompt="Review: {user_input}\nLabel:")


@pytest.fixture
def store(tmp_path) -> WarehouseStateStore:
    return WarehouseStateStore(warehouse=DuckDBResource(database=str(tmp_path / "w.duckdb")))


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
    assert expected["best_test_score"] == 1.0 and expected["best_prompt"]["demos"]


def test_no_sql_outside_the_state_store_and_the_warehouse_modules():
    """Every query of the warehouse by hand is in the store (defs/state_store.py) or the modules that
    implement storage (IO managers, the response cache and its usage ledger): a query anywhere else
    is state flowing through a side channel."""
    allowed = {
        "defs/state_store.py",
        "defs/io_managers.py",
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
