"""dagster-pandas types of the splits, predictions and metrics tables: what they refuse, and that they refuse it
before anything is stored."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pytest

from promptopt_dagster.defs.io_managers import WarehouseIOManager
from promptopt_dagster.defs.table_types import (
    PREDICTIONS,
    DatasetSplitsFrame,
    MetricsFrame,
    PredictionsFrame,
    column_schema,
)


def predictions(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "optimization": "sst2",
            "iteration": "g1-i0",
            "generation": 1,
            "step": 0,
            "prompt_id": "p1",
            "row_id": range(1, n + 1),
            "user_input": [f"review {i}" for i in range(n)],
            "ground_truth_output": "positive",
            "prediction": "positive",
            "error": None,
            "attempts": 1,
            "model": "fake/m",
            "prompt_tokens": 10,
            "completion_tokens": 1,
            "cost_usd": 0.0,
            "latency_s": 0.1,
            "cached": False,
        }
    )


def test_a_well_formed_predictions_table_passes():
    assert dg.check_dagster_type(PredictionsFrame, predictions()).success


@pytest.mark.parametrize(
    "broken, named",
    [
        (lambda f: f.drop(columns=["cached"]), "cached"),
        (lambda f: f.assign(attempts=[1, -1, 1]), "attempts"),
        (lambda f: f.assign(user_input=["a", None, "c"]), "user_input"),
        (lambda f: f.assign(prompt_tokens=["10", "11", "12"]), "prompt_tokens"),
    ],
)
def test_a_broken_predictions_table_fails_naming_the_column(broken, named):
    check = dg.check_dagster_type(PredictionsFrame, broken(predictions()))
    assert not check.success and named in check.description


def test_a_failed_value_rule_names_the_rows_by_row_id():
    check = dg.check_dagster_type(PredictionsFrame, predictions(4).assign(attempts=[1, -1, 1, -3]))
    assert not check.success and 'column "attempts"' in check.description
    assert check.description.endswith("Offending rows with row_id [2, 4], values [-1, -3].")
    nulls = dg.check_dagster_type(PredictionsFrame, predictions().assign(user_input=["a", None, "c"]))
    assert 'column "user_input"' in nulls.description and nulls.description.endswith("row_id [2], values [None].")
    assert "zip object" not in nulls.description


def test_splits_and_metrics_types_check_values():
    splits = pd.DataFrame(
        {
            "dataset": "sst2",
            "split": ["train", "dev", "holdout"],
            "row_id": [1, 2, 3],
            "user_input": ["a", "b", "c"],
            "ground_truth_output": ["x", None, "z"],
        }
    )
    check = dg.check_dagster_type(DatasetSplitsFrame, splits)
    assert not check.success and "split" in check.description and "holdout" in check.description
    assert dg.check_dagster_type(DatasetSplitsFrame, splits.assign(split=["train", "dev", "test"])).success
    metrics = pd.DataFrame(
        {
            "optimization": "sst2",
            "iteration": "g1-i0",
            "generation": 1,
            "step": 0,
            "row_id": [1],
            "score": [1.0],
            "value": [1.0],
            "weight": [1.0],
            "is_target": [True],
            "rationale": [None],
            "usage_json": ["{}"],
        }
    )
    check = dg.check_dagster_type(MetricsFrame, metrics)
    assert not check.success and "scorer" in check.description


def test_a_failed_type_check_stores_nothing_and_the_ui_gets_the_schema(tmp_path):
    database = str(tmp_path / "warehouse.duckdb")

    @dg.asset(dagster_type=PredictionsFrame, metadata=column_schema(PREDICTIONS))
    def baseline_predictions() -> pd.DataFrame:
        return predictions().drop(columns=["model"])

    result = dg.materialize(
        [baseline_predictions],
        raise_on_error=False,
        resources={"io_manager": WarehouseIOManager(database=database, schema="promptopt")},
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
    assert "model" in failure.message and "PredictionsFrame" in failure.message
    import duckdb

    with duckdb.connect(database) as con:  # the IO manager never ran: no table, no partial rows
        assert (
            con.execute(
                "select count(*) from information_schema.tables where table_name = 'baseline_predictions'"
            ).fetchone()[0]
            == 0
        )
    schema = baseline_predictions.specs_by_key[dg.AssetKey("baseline_predictions")].metadata["dagster/column_schema"]
    assert [c.name for c in schema.columns][:5] == ["optimization", "iteration", "generation", "step", "prompt_id"]
