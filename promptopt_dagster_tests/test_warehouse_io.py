"""The warehouse IO managers: tables keep taking rows after their first frame had an empty column; the Postgres
one (runs that share no disk) replaces a partition in one transaction and reads back what DuckDB would."""

import dagster as dg
import duckdb
import pandas as pd

from promptopt_dagster.defs.io_managers import PostgresWarehouseIOManager, WarehouseIOManager
from promptopt_dagster.defs.warehouse import connect

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


@dg.asset(partitions_def=parts, metadata={"partition_expr": "part"})
def scored(context: dg.AssetExecutionContext) -> pd.DataFrame:
    n = 3 if context.partition_key == "a" else 2
    return pd.DataFrame(
        {
            "part": [context.partition_key] * n,
            "row_id": list(range(n)),
            "score": [1.0, 0.0, 0.5][:n],
            "accepted": [True, False, True][:n],
            "answer": ["positive", None, "negative"][:n],
            "tokens": pd.array([12, None, 7][:n], dtype="Int64"),
        }
    )


@dg.asset(partitions_def=parts, metadata={"partition_expr": "part"})
def scored_again(scored: pd.DataFrame) -> pd.DataFrame:
    return scored.assign(score=scored["score"] * 2)


def test_postgres_tables_replace_a_partition_and_read_back_as_duckdb_would(tmp_path, postgres_url):
    """Each partition written twice (a retried run): its rows are there once; the downstream asset reads them
    with DuckDB's types, and a column added by a newer frame lands by name."""
    instance = dg.DagsterInstance.ephemeral()
    outputs = {}
    for name, io_manager in (
        ("duckdb", WarehouseIOManager(database=str(tmp_path / "w.duckdb"), schema="public")),
        ("postgres", PostgresWarehouseIOManager(database=postgres_url, schema="public")),
    ):
        for key in ("a", "b", "a"):
            result = dg.materialize(
                [scored, scored_again], partition_key=key, resources={"io_manager": io_manager}, instance=instance
            )
            assert result.success
        with connect(io_manager.database) as con:
            outputs[name] = con.fetchdf("select * from public.scored_again order by part, row_id")
    assert len(outputs["postgres"]) == 5  # a's rows once, though written twice
    pd.testing.assert_frame_equal(outputs["postgres"], outputs["duckdb"], check_dtype=True)

    @dg.asset(partitions_def=parts, metadata={"partition_expr": "part"}, name="scored")
    def wider(context: dg.AssetExecutionContext) -> pd.DataFrame:  # a newer version's frame: one column more
        return pd.DataFrame(
            {
                "part": ["b"],
                "latency_s": [0.25],
                "row_id": [0],
                "score": [1.0],
                "accepted": [True],
                "answer": ["positive"],
                "tokens": pd.array([3], dtype="Int64"),
            }
        )

    io_manager = PostgresWarehouseIOManager(database=postgres_url, schema="public")
    assert dg.materialize([wider], partition_key="b", resources={"io_manager": io_manager}, instance=instance).success
    with connect(postgres_url) as con:
        rows = con.execute("select part, row_id, latency_s from public.scored order by part, row_id")
    assert rows == [("a", 0, None), ("a", 1, None), ("a", 2, None), ("b", 0, 0.25)]


@dg.asset(partitions_def=parts, metadata={"partition_expr": "part"})
def drawn(context: dg.AssetExecutionContext) -> pd.DataFrame:
    return pd.DataFrame({"part": context.partition_key, "row_id": [5, 3, 0, 4, 1, 2]})


@dg.asset(partitions_def=parts, metadata={"partition_expr": "part"})
def read_back(drawn: pd.DataFrame) -> pd.DataFrame:
    return drawn.assign(seen_at=range(len(drawn)))


def test_postgres_reads_a_partition_in_the_order_its_frame_had_after_the_rows_moved_on_disk(tmp_path, postgres_url):
    """Postgres returns rows as they lie on disk; a rewritten partition that landed in space other rows freed
    comes back shuffled, and an optimizer that draws demos by position then sends prompts the cache has never
    seen. CLUSTER moves the rows into row_id order on disk, as free-space reuse can: the next asset still
    reads them in the order they were written, and the position column shows in no frame."""
    io_manager = PostgresWarehouseIOManager(database=postgres_url, schema="public")
    resources, instance = {"io_manager": io_manager}, dg.DagsterInstance.ephemeral()
    assert dg.materialize([drawn], partition_key="a", resources=resources, instance=instance).success
    with connect(postgres_url) as con:
        con.execute("create index drawn_by_row on public.drawn (row_id)")
        con.execute("cluster public.drawn using drawn_by_row")
        on_disk = [r[0] for r in con.execute("select row_id from public.drawn")]
    assert on_disk == [0, 1, 2, 3, 4, 5]  # the rows did move
    result = dg.materialize(
        [drawn, read_back], partition_key="a", resources=resources, instance=instance, selection=[read_back]
    )
    assert result.success
    with connect(postgres_url) as con:
        frame = con.fetchdf("select * from public.read_back order by seen_at")
    assert frame["row_id"].tolist() == [5, 3, 0, 4, 1, 2]
    assert list(frame.columns) == ["part", "row_id", "seen_at"]
