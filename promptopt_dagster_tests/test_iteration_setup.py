"""An iteration's setup is resolved once, stored whole, and is the only way its settings and rows reach
the loop: the lineage graph reads as the loop's steps."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pytest

from promptopt_dagster.app.datasets import DatasetSplits, dev_parts
from promptopt_dagster.app.iteration_setup import PARTS, IterationSetup
from promptopt_dagster.core.errors import DatasetError
from promptopt_dagster.defs.loop.assets import ITERATION_ASSETS
from promptopt_dagster_tests.dagster_helpers import make_defs, prepare, query, run_iteration, small_spec


def _splits(dev: int = 60) -> DatasetSplits:
    def rows(prefix: str, n: int) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "row_id": list(range(n)),
                "user_input": [f"{prefix} text {i}" for i in range(n)],
                "ground_truth_output": ["positive" if i % 3 else "negative" for i in range(n)],
            }
        )

    return DatasetSplits("sst2", rows("train", 40), rows("dev", dev), rows("test", 30))


def test_the_parts_are_the_dev_split_cut_as_the_settings_say_and_survive_the_table_in_order():
    spec = small_spec(eval_size=30, select_size=12, seed=7)
    splits = _splits()
    setup = IterationSetup.resolve(spec, splits)
    select, confirm = dev_parts(splits.dev, 30, 12, 7)
    assert setup.select.equals(select) and setup.confirm.equals(confirm)
    ids = [set(getattr(setup, p)["row_id"]) for p in ("select", "confirm", "spare")]
    assert sum(map(len, ids)) == 60 and set.union(*ids) == set(splits.dev["row_id"])  # disjoint, covering dev

    # the stored order is not trusted: the table is read back shuffled
    back = IterationSetup.from_frame(setup.to_frame().sample(frac=1.0, random_state=3))
    assert back.spec == spec
    for part in PARTS:
        assert getattr(back, part).equals(getattr(setup, part).reset_index(drop=True)), part


def test_the_demo_source_drops_train_rows_equal_to_a_held_out_row():
    splits = _splits()
    splits.train.loc[5, "user_input"] = "  DEV TEXT 3 "  # a dev row, up to case and whitespace
    setup = IterationSetup.resolve(small_spec(spare_size=0), splits)
    assert 5 not in set(setup.demo_source()["row_id"]) and len(setup.demo_source()) == 39


def test_a_short_dev_split_races_on_train_rows_held_out_of_the_demo_pool():
    splits = _splits(dev=45)  # 20 confirm, 10 select, 15 spare dev rows
    splits.train.loc[5, "user_input"] = "dev text 3"  # equal to a dev row: never a demo, so never a race row
    setup = IterationSetup.resolve(small_spec(spare_size=25), splits)
    assert len(setup.spare) == 15 and len(setup.spare_train) == 10
    race = setup.race_rows()
    assert len(race) == 25 and race.head(15)["user_input"].str.startswith("dev").all()  # dev rows first
    held = set(setup.spare_train["row_id"])
    assert 5 not in held and not held & set(setup.train["row_id"]) and not held & set(setup.demo_source()["row_id"])
    assert len(setup.train) == 30  # 40 train rows less the 10 held out
    assert IterationSetup.resolve(small_spec(spare_size=25), splits).race_rows().equals(race)  # every iteration
    # never more than half of what could be demos, however many spare rows are asked for
    assert len(IterationSetup.resolve(small_spec(spare_size=500), splits).spare_train) == 19
    # a long dev split races on a seeded sample of its own spare rows only
    roomy = IterationSetup.resolve(small_spec(spare_size=10), _splits(dev=60))
    assert roomy.spare_train.empty and len(roomy.race_rows()) == 10
    assert set(roomy.race_rows()["row_id"]) <= set(roomy.spare["row_id"])
    # its other spare rows are the deciding rows, up to spare_size of them, none a race row; a short one has none
    deciding = roomy.deciding_rows()
    assert len(roomy.spare) == 30 and len(deciding) == 10
    assert set(deciding["row_id"]) <= set(roomy.spare["row_id"]) and not set(deciding["row_id"]) & set(
        roomy.race_rows()["row_id"]
    )
    assert len(IterationSetup.resolve(small_spec(spare_size=25), _splits(dev=60)).deciding_rows()) == 5
    assert setup.deciding_rows().empty


def test_no_dev_rows_and_no_stored_setup_each_name_the_fix():
    with pytest.raises(DatasetError, match="no dev rows.*Add rows to its dev file"):
        IterationSetup.resolve(small_spec(), _splits(dev=0))
    with pytest.raises(DatasetError, match="materialize iteration_setup"):
        IterationSetup.from_frame(pd.DataFrame())


def test_only_the_setup_reads_the_optimization_and_the_loop_reads_as_a_chain(tmp_path):
    """(The final report and the leaderboard read the optimization's settings too: they are not iterations.)"""
    graph = make_defs(tmp_path).resolve_asset_graph()
    loop = [k for a in ITERATION_ASSETS for k in a.keys]
    parents = {k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys} for k in loop}
    assert parents["iteration_setup"] == {"optimization_settings", "optimization_rows"}
    outside = {"optimization_settings", "optimization_rows"}
    assert all(not (ps & outside) for name, ps in parents.items() if name != "iteration_setup"), parents
    assert parents["baseline_prompt"] == {"iteration_setup"}
    assert parents["baseline_predictions"] == {"iteration_setup", "baseline_prompt"}
    assert parents["refined_predictions"] == {"iteration_setup", "refined_prompt"}
    assert parents["best_prompt"] == {"comparison_report", "baseline_prompt", "refined_prompt"}


def test_the_stored_setup_is_what_the_iteration_answered_and_searched_on(tmp_path):
    with dg.instance_for_test() as instance:
        defs = make_defs(tmp_path)
        assert prepare(defs, instance).success
        result = run_iteration(defs, instance, 0, target_score=1.1)
        assert result.success
        stored = query(tmp_path, "select * from promptopt.iteration_setup")
        assert set(stored["iteration"]) == {"g1-i0"} and set(stored["optimization"]) == {"sst2"}
        setup = IterationSetup.from_frame(stored)
        assert (len(setup.confirm), len(setup.select)) == (20, 10)  # the small spec's eval_size and select_size
        answered = query(tmp_path, "select row_id from promptopt.baseline_predictions")
        assert sorted(answered["row_id"]) == sorted(setup.confirm["row_id"])
        meta = result.asset_materializations_for_node("iteration_setup")[0].metadata
        assert meta["confirm_rows"].value == 20 and meta["select_rows"].value == 10
        assert meta["dataset"].value == "sst2"
        refined = result.asset_materializations_for_node("refined_prompt")[0].metadata
        assert refined["select_rows"].value == 10 and refined["confirm_rows"].value == 20
