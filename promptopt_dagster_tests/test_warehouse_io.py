"""The warehouse IO manager: tables keep taking rows after their first frame had an empty column."""

import dagster as dg
import duckdb
import pandas as pd

from promptopt_dagster.defs.io_managers import WarehouseIOManager

parts = dg.StaticPartitionsDefinition(["a", "b"])


@dg.asset(partitions_def=parts, metadata={"partition_expr": "part"})
def answers(context: dg.AssetExecutionContext) -> pd.DataFrame:
    # Partition a: every row answered (error all None); b: a row failed (error is text).
    error = None if context.partition_key == "a" else "timed out after 2 s"
    return pd.DataFrame({"part": [context.partition_key], "answer": ["positive"], "error": [error]})


def test_a_column_empty_in_the_first_frame_takes_text_later(tmp_path):
    database = str(tmp_path / "w.duckdb")
    resources = {"io_manager": WarehouseIOManager(database=database, schema="public")}
    instance = dg.DagsterInstance.ephemeral()
    for key in ("a", "b"):
        assert dg.materialize([answers], partition_key=key, resources=resources, instance=instance).success
    with duckdb.connect(database) as con:
        rows = con.execute("select part, error from public.answers order by part").fetchall()
        kind = con.execute(
            "select data_type from information_schema.columns where table_name = 'answers' and column_name = 'error'"
        ).fetchone()[0]
    assert rows == [("a", None), ("b", "timed out after 2 s")] and kind == "VARCHAR"


def test_a_table_stored_with_a_null_typed_column_is_repaired_on_the_next_write(tmp_path):
    database = str(tmp_path / "w.duckdb")
    with duckdb.connect(database) as con:  # as an earlier version left it
        con.execute("create schema public")
        con.execute("create table public.answers as select 'a' as part, 'positive' as answer, null as error")
    resources = {"io_manager": WarehouseIOManager(database=database, schema="public")}
    assert dg.materialize(
        [answers], partition_key="b", resources=resources, instance=dg.DagsterInstance.ephemeral()
    ).success
    with duckdb.connect(database) as con:
        assert con.execute("select part, error from public.answers order by part").fetchall() == [
            ("a", None),
            ("b", "timed out after 2 s"),
        ]


def test_a_table_from_an_earlier_version_takes_frames_with_columns_added_and_columns_dropped(tmp_path):
    """An earlier version stored `best_score` between `answer` and `error` (the loop state that moved to
    the state store) and had no `latency_s` yet: a new frame lands by column name, the dropped column
    NULL for the new row, the added one NULL for the old row."""
    database = str(tmp_path / "w.duckdb")
    with duckdb.connect(database) as con:
        con.execute("create schema public")
        con.execute(
            "create table public.timed as select 'a' as part, 'positive' as answer, 0.5 as best_score, 'x' as error"
        )

    @dg.asset(partitions_def=parts, metadata={"partition_expr": "part"}, name="timed")
    def timed(context: dg.AssetExecutionContext) -> pd.DataFrame:
        return pd.DataFrame({"part": ["b"], "answer": ["negative"], "error": ["late"], "latency_s": [1.5]})

    resources = {"io_manager": WarehouseIOManager(database=database, schema="public")}
    assert dg.materialize(
        [timed], partition_key="b", resources=resources, instance=dg.DagsterInstance.ephemeral()
    ).success
    with duckdb.connect(database) as con:
        rows = con.execute(
            "select part, answer, best_score, error, latency_s from public.timed order by part"
        ).fetchall()
    assert rows == [("a", "positive", 0.5, "x", None), ("b", "negative", None, "late", 1.5)]
