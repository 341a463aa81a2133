"""DuckDB tables for every asset, including the dataset x iteration ones.

dagster-duckdb-pandas fails on a MultiPartitionsDefinition with a dynamic dimension ("The instance
is not available to load partitions", dagster issues #32631 and #17838) because resolving the
dynamic keys needs the instance, which the IO manager is not given. Running the library's own
handle_output and load_input inside `partition_loading_context` with the run's instance fixes
that without re-implementing the table writes.
"""

from __future__ import annotations

import dagster as dg
from dagster_duckdb_pandas import DuckDBPandasIOManager


class _WithInstance(dg.IOManager):
    def __init__(self, inner: dg.IOManager, database: str, schema: str) -> None:
        self._inner = inner
        self._database, self._schema = database, schema

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        with dg.partition_loading_context(dynamic_partitions_store=context.step_context.instance):
            obj = _typed_nulls(obj)
            _add_new_columns(self._database, self._schema, context.asset_key.path[-1], obj)
            self._inner.handle_output(context, obj)

    def load_input(self, context: dg.InputContext):
        """A table that does not exist yet reads as no rows, as a partition never written does; the
        asset that needs the rows says what to materialize (e.g. `dataset_splits` on a fresh home)."""
        import duckdb
        import pandas as pd

        with dg.partition_loading_context(dynamic_partitions_store=context.instance):
            try:
                return self._inner.load_input(context)
            except duckdb.CatalogException:
                return pd.DataFrame()


class WarehouseIOManager(DuckDBPandasIOManager):
    """DuckDBPandasIOManager that works with dynamic partition dimensions, with runs side by side.

    DuckDB admits one process per file at a time. Every read and write here is a short connection
    that the library retries with backoff while another process holds the file, and no run keeps a
    connection open while it waits for a model, so concurrent runs take turns per write, not per run."""

    def create_io_manager(self, context) -> dg.IOManager:
        return _WithInstance(super().create_io_manager(context), self.database, self.schema_ or "public")


_UP_TO_DATE: set[tuple[str, str, str]] = set()


def _typed_nulls(obj):
    """Object columns with no value at all (e.g. `error` when every row was answered) as strings.

    DuckDB would create such a column with type NULL when the frame creates the table, and every later
    frame with a value there (the first row that failed) would then be refused."""
    import pandas as pd

    if not isinstance(obj, pd.DataFrame):
        return obj
    empty = [c for c in obj.columns if obj[c].dtype == object and obj[c].isna().all()]
    return obj.astype({c: "string" for c in empty}) if empty else obj


def _add_new_columns(database: str, schema: str, table: str, obj) -> None:
    """Append columns a newer version added at the end of a table's frame to the stored table.

    The library inserts rows positionally, so a warehouse written by an earlier version would refuse
    the wider frame; adding the columns (NULL for old rows) keeps every stored row and the history."""
    import duckdb
    import pandas as pd

    if not isinstance(obj, pd.DataFrame) or (database, schema, table) in _UP_TO_DATE:
        return
    _UP_TO_DATE.add((database, schema, table))  # once per table and process, not on every output
    with _connect(database) as con:
        try:
            described = con.execute(
                "select column_name, data_type from information_schema.columns where table_schema = ? and "
                "table_name = ? order by ordinal_position",
                [schema, table],
            ).fetchall()
        except duckdb.Error:
            return
        stored = [name for name, _ in described]
        for name, kind in described:  # created from an all-None column by an earlier version: see _typed_nulls
            if kind == '"NULL"' or kind == "NULL":
                con.execute(f'alter table "{schema}"."{table}" alter column "{name}" type VARCHAR')
        if not stored or len(stored) >= len(obj.columns) or list(obj.columns[: len(stored)]) != stored:
            return
        types = {"int64": "BIGINT", "float64": "DOUBLE", "bool": "BOOLEAN"}
        for column in obj.columns[len(stored) :]:
            kind = types.get(str(obj[column].dtype), "VARCHAR")
            con.execute(f'alter table "{schema}"."{table}" add column "{column}" {kind}')


def _connect(database: str, wait_s: float = 120.0):
    """A connection that waits, with backoff, while another run's process holds the file."""
    import time

    import duckdb

    deadline, delay = time.monotonic() + wait_s, 0.05
    while True:
        try:
            return duckdb.connect(database)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
