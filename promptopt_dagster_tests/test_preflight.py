"""Pre-run checks wherever an optimization starts, not only in `promptopt optimize`.

A launch from the UI, a backfill and `promptopt submit` all start through the `optimization` asset
(the start_optimization job); these tests start it the way they do, with settings that can only fail.
"""

from __future__ import annotations

import dagster as dg
import duckdb
import pytest

from promptopt_dagster.app.optimizations import OptimizationSpec
from promptopt_dagster_tests.dagster_helpers import make_defs, prepare, small_spec, start


def _failure(result) -> str:
    return "\n".join(e.step_failure_data.error.message for e in result.all_events if e.is_step_failure)


def _stored_generations(tmp_path) -> int:
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        try:
            return con.execute("select count(*) from promptopt.optimization_settings").fetchone()[0]
        except duckdb.CatalogException:
            return 0


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            {"optimizer": "metaprompt", "options": {}, "optimizer_model": {"backend": "local"}},
            "optimizer 'metaprompt' needs a model that can write prompts",
        ),
        ({"target_metric": "bleu"}, "optimizations.sst2.target_metric 'bleu' is neither 'aggregate' nor one of"),
        ({"source_model": {"backend": "fake"}}, "optimizations.sst2.source_model is the task model"),
    ],
)
def test_a_start_as_the_ui_or_a_backfill_launches_it_fails_before_anything_is_stored(tmp_path, overrides, expected):
    with dg.instance_for_test() as instance:
        defs = make_defs(tmp_path)
        assert prepare(defs, instance).success
        spec = OptimizationSpec.model_validate({**small_spec().model_dump(exclude_none=True), **overrides})
        result = start(defs, instance, spec, tags={"promptopt/driver": "ui"})
        assert not result.success
        message = _failure(result)
        assert "Optimization 'sst2' cannot start: " in message and expected in message, message
        assert _stored_generations(tmp_path) == 0  # no generation recorded, no setting changed


def test_a_sound_start_passes_the_same_checks(tmp_path):
    with dg.instance_for_test() as instance:
        defs = make_defs(tmp_path)
        assert prepare(defs, instance).success
        assert start(defs, instance, small_spec()).success
        assert _stored_generations(tmp_path) == 1
