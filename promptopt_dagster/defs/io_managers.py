"""DuckDB tables for every asset, including the dataset x iteration ones.

dagster-duckdb-pandas fails on a MultiPartitionsDefinition with a dynamic dimension ("The instance
is not available to load partitions", dagster issues #32631 and #17838) because resolving the
dynamic keys needs the instance, which the IO manager is not given. Running the library's own
handle_output and load_input inside `partition_loading_context` with the run's instance fixes
that without re-implementing the table writes.
"""

from __future__ import annotations

import time

import dagster as dg
import duckdb
import pandas as pd
from dagster_duckdb_pandas import DuckDBPandasIOManager


class _WithInstance(dg.IOManager):
    def __init__(self, inner: dg.IOManager, database: str, schema: str) -> None:
        self._inner = inner
        self._database, self._schema = database, schema

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        with dg.partition_loading_context(dynamic_partitions_store=context.step_context.instance):
            obj = _typed_nulls(obj)
            obj = _fit_to_table(self._database, self._schema, context.asset_key.path[-1], obj)
            self._inner.handle_output(context, obj)

    def load_input(self, context: dg.InputContext):
        """A table that does not exist yet reads as no rows, as a partition never written does; the
        asset that needs the rows says what to materialize (e.g. `dataset_splits` on a fresh home)."""
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


#: the stored column order of each table this process has checked: (database, schema, table) -> columns
_STORED: dict[tuple[str, str, str], list[str]] = {}


def _typed_nulls(obj):
    """Object columns with no value at all (e.g. `error` when every row was answered) as strings.

    DuckDB would create such a column with type NULL when the frame creates the table, and every later
    frame with a value there (the first row that failed) would then be refused."""
    if not isinstance(obj, pd.DataFrame):
        return obj
    empty = [c for c in obj.columns if obj[c].dtype == object and obj[c].isna().all()]
    return obj.astype({c: "string" for c in empty}) if empty else obj


def _fit_to_table(database: str, schema: str, table: str, obj):
    """The frame in the stored table's column order, after adding to the table the columns a newer
    version added to its frame.

    The library inserts rows positionally, so a warehouse written by an earlier version would refuse
    a wider frame, and a narrower one (a column a newer version no longer writes, such as the loop
    state that moved from the prompt tables to the state store) would land in the wrong columns.
    Added columns are NULL for old rows; a column no longer written is NULL for new ones. Every
    stored row and the history stay."""
    if not isinstance(obj, pd.DataFrame):
        return obj
    key = (database, schema, table)
    if key not in _STORED:  # once per table and process, not on every output
        with _connect(database) as con:
            try:
                described = con.execute(
                    "select column_name, data_type from information_schema.columns where table_schema = ? and "
                    "table_name = ? order by ordinal_position",
                    [schema, table],
                ).fetchall()
            except duckdb.Error:
                return obj
            if not described:  # the library creates the table from this frame
                return obj
            for name, kind in described:  # created from an all-None column by an earlier version: see _typed_nulls
                if kind == '"NULL"' or kind == "NULL":
                    con.execute(f'alter table "{schema}"."{table}" alter column "{name}" type VARCHAR')
            stored = [name for name, _ in described]
            types = {"int64": "BIGINT", "Int64": "BIGINT", "float64": "DOUBLE", "bool": "BOOLEAN"}
            for column in [c for c in obj.columns if c not in stored]:
                kind = types.get(str(obj[column].dtype), "VARCHAR")
                con.execute(f'alter table "{schema}"."{table}" add column "{column}" {kind}')
                stored.append(column)
        _STORED[key] = stored
    stored = _STORED[key]
    if list(obj.columns) == stored:
        return obj
    missing = [c for c in obj.columns if c not in stored]
    if missing:  # a column this process has not added yet (another frame of the same table): check again
        del _STORED[key]
        return _fit_to_table(database, schema, table, obj)
    fitted = obj.copy()
    for column in stored:
        if column not in fitted.columns:
            fitted[column] = pd.Series([None] * len(fitted), index=fitted.index, dtype=object)  # NULL in any type
    return fitted[stored]


def _connect(database: str, wait_s: float = 120.0):
    """A connection that waits, with backoff, while another run's process holds the file."""
    deadline, delay = time.monotonic() + wait_s, 0.05
    while True:
        try:
            return duckdb.connect(database)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
