"""Warehouse tables for every asset, including the dataset x iteration ones: DuckDB on one machine,
Postgres where runs share no disk (`PostgresWarehouseIOManager`).

dagster-duckdb-pandas fails on a MultiPartitionsDefinition with a dynamic dimension ("The instance
is not available to load partitions", dagster issues #32631 and #17838) because resolving the
dynamic keys needs the instance, which the IO manager is not given. Running the library's own
handle_output and load_input inside `partition_loading_context` with the run's instance fixes
that without re-implementing the table writes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import duckdb
import pandas as pd
from dagster._core.storage.db_io_manager import (  # the framework dagster-duckdb is built on
    DbClient,
    DbIOManager,
    DbTypeHandler,
    TableSlice,
    static_where_clause,
)
from dagster_duckdb_pandas import DuckDBPandasIOManager
from pydantic import Field

from promptopt_dagster.defs import warehouse


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
    stored row and the history stay. `database`: the DuckDB file's path or the Postgres URL."""
    if not isinstance(obj, pd.DataFrame):
        return obj
    key = (database, schema, table)
    if key not in _STORED:  # once per table and process, not on every output
        with warehouse.connect(database) as con:
            try:
                described = con.execute(
                    "select column_name, data_type from information_schema.columns where table_schema = ? and "
                    "table_name = ? order by ordinal_position",
                    [schema, table],
                )
            except (duckdb.Error, warehouse.MissingTable):
                return obj
            if not described:  # the IO manager creates the table from this frame
                return obj
            for name, kind in described:  # created from an all-None column by an earlier version: see _typed_nulls
                if kind == '"NULL"' or kind == "NULL":
                    con.execute(f'alter table "{schema}"."{table}" alter column "{name}" type VARCHAR')
            stored = [name for name, _ in described]
            types = {"int64": "BIGINT", "Int64": "BIGINT", "float64": "DOUBLE", "bool": "BOOLEAN"}
            for column in [c for c in obj.columns if c not in stored]:
                dtype = obj[column].dtype
                kind = warehouse.pg_type(dtype) if con.postgres else types.get(str(dtype), "VARCHAR")
                con.execute(f'alter table "{schema}"."{table}" add column if not exists "{column}" {kind}')
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


# --- Postgres -------------------------------------------------------------------------------------------------


def _lock(cur, name: str) -> None:
    """Serialize creating one schema or table: concurrent `create ... if not exists` can collide in Postgres's
    catalog (a unique violation), so runs that start together take turns, until their transaction ends."""
    cur.execute("select pg_advisory_xact_lock(hashtext(%s))", (name,))


#: (database, schema, table) of the tables this process has seen keep their rows' positions: a column once
#: there stays, so each table is looked up once per process, not on every read and write
_POSITIONED: set[tuple[str, str, str]] = set()


def _has_position(cur, table_slice: TableSlice) -> bool:
    """Whether the table keeps each row's position (warehouse.ROW_POSITION): every table this version wrote."""
    key = (cur.connection.dsn, table_slice.schema, table_slice.table)
    if key not in _POSITIONED:
        cur.execute(
            "select 1 from information_schema.columns where table_schema = %s and table_name = %s and column_name = %s",
            (table_slice.schema, table_slice.table, warehouse.ROW_POSITION),
        )
        if cur.fetchone() is not None:
            _POSITIONED.add(key)
    return key in _POSITIONED


class _PostgresClient(DbClient):
    """dagster's DbIOManager on Postgres: a partition's delete and insert are one transaction."""

    @staticmethod
    def delete_table_slice(context: dg.OutputContext, table_slice: TableSlice, connection) -> None:
        with connection.cursor() as cur:
            cur.execute("select to_regclass(%s)", (f"{table_slice.schema}.{table_slice.table}",))
            if cur.fetchone()[0] is None:
                return
            where = " and ".join(static_where_clause(d) for d in table_slice.partition_dimensions)
            cur.execute(f"delete from {table_slice.schema}.{table_slice.table}" + (f" where {where}" if where else ""))

    @staticmethod
    def ensure_schema_exists(context: dg.OutputContext, table_slice: TableSlice, connection) -> None:
        with connection.cursor() as cur:
            _lock(cur, f"schema {table_slice.schema}")
            cur.execute(f"create schema if not exists {table_slice.schema}")

    @staticmethod
    def get_select_statement(table_slice: TableSlice, ordered: bool = False) -> str:
        """`ordered`: the rows in the order their frame had (the table keeps each row's position)."""
        columns = ", ".join(table_slice.columns) if table_slice.columns else "*"
        statement = f"select {columns} from {table_slice.schema}.{table_slice.table}"
        if table_slice.partition_dimensions:
            statement += " where " + " and ".join(static_where_clause(d) for d in table_slice.partition_dimensions)
        return statement + (f' order by "{warehouse.ROW_POSITION}"' if ordered else "")

    @staticmethod
    @contextmanager
    def connect(context, _) -> Iterator:
        import psycopg2

        con = psycopg2.connect(context.resource_config["database"], connect_timeout=60)
        try:
            with con:  # commit on success, roll back on an error
                yield con
        finally:
            con.close()


class _PostgresPandas(DbTypeHandler[pd.DataFrame]):
    def handle_output(self, context: dg.OutputContext, table_slice: TableSlice, obj: pd.DataFrame, connection):
        name, position = f"{table_slice.schema}.{table_slice.table}", warehouse.ROW_POSITION
        obj = obj.drop(columns=[position], errors="ignore")  # _fit_to_table's empty slot for it: filled below
        if obj.empty:
            context.log.warning("Skipping the write of an empty DataFrame: no table is created for it.")
        else:
            with connection.cursor() as cur:
                _lock(cur, f"table {name}")
                columns = ", ".join(f'"{c}" {warehouse.pg_type(t)}' for c, t in obj.dtypes.items())
                cur.execute(f'create table if not exists {name} ({columns}, "{position}" bigint)')
                if not _has_position(cur, table_slice):  # a table written before rows kept their position
                    cur.execute(f'alter table {name} add column if not exists "{position}" bigint')
            warehouse.Connection(connection, postgres=True).insert(name, obj.assign(**{position: range(len(obj))}))
        context.add_output_metadata(
            {
                ("partition_row_count" if context.has_partition_key else "row_count"): obj.shape[0],
                "dataframe_columns": dg.MetadataValue.table_schema(
                    dg.TableSchema(columns=[dg.TableColumn(name=n, type=str(t)) for n, t in obj.dtypes.items()])
                ),
            }
        )

    def load_input(self, context: dg.InputContext, table_slice: TableSlice, connection) -> pd.DataFrame:
        if table_slice.partition_dimensions and len(context.asset_partition_keys) == 0:
            return pd.DataFrame()
        with connection.cursor() as cur:
            cur.execute("select to_regclass(%s)", (f"{table_slice.schema}.{table_slice.table}",))
            if cur.fetchone()[0] is None:  # a table nothing has written reads as no rows (see _WithInstance)
                return pd.DataFrame()
            cur.execute(_PostgresClient.get_select_statement(table_slice, ordered=_has_position(cur, table_slice)))
            return warehouse.frame(cur.description, cur.fetchall())

    @property
    def supported_types(self):
        return [pd.DataFrame]


class PostgresWarehouseIOManager(dg.ConfigurableIOManagerFactory):
    """The tables in a Postgres database, for runs that share no disk: many runs write at once, each partition
    in one transaction (its old rows deleted, its new rows inserted), and a run on any machine reads them.

    `database` is the URL (postgresql://USER@HOST:PORT/DB, the password in PGPASSWORD), named `database` as
    the DuckDB IO manager's file is, so the artifact IO managers take either."""

    database: str = Field(description="postgresql://USER@HOST:PORT/DATABASE (no password: set PGPASSWORD)")
    schema_: str | None = Field(default=None, alias="schema", description="the schema of the tables")

    def create_io_manager(self, context) -> dg.IOManager:
        inner = DbIOManager(
            db_client=_PostgresClient(),
            database=self.database,
            schema=self.schema_,
            type_handlers=[_PostgresPandas()],
            default_load_type=pd.DataFrame,
            io_manager_name="PostgresWarehouseIOManager",
        )
        return _WithInstance(inner, self.database, self.schema_ or "public")
