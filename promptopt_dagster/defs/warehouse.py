"""The warehouse's connections: a DuckDB file (one machine) or a Postgres database (runs that share no disk).

The state store and the IO managers write their statements once, with `?` placeholders, and run them
through `connect(location)`: a path opens the DuckDB file (waiting, with backoff, while another process
holds its lock), a `postgresql://` URL opens Postgres. A table that does not exist yet raises
`MissingTable` in either, and query results come back as DataFrames typed as DuckDB types them
(integers with a NULL as Int64, booleans with a NULL as boolean), so nothing downstream can tell the
two apart.

Why Postgres for the shared deployment: bench/warehouse.py (docs/deploy.md has its figures).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import dagster as dg
import pandas as pd

from promptopt_dagster.llm.store_location import connect_postgres, is_url, run_postgres

#: Each row's position in the frame that wrote it, kept in every Postgres table the IO manager writes and
#: never shown (`frame` leaves it out). Postgres returns rows in the order they lie on disk, and a partition
#: rewritten into space that other partitions' old rows left (a second backfill, after autovacuum) comes back
#: shuffled; an iteration that samples its select, confirm and demo rows by position from the optimization's
#: rows (rewritten by each start) would then draw other rows and send prompts the cache never saw. DuckDB
#: returns rows in the order they were inserted (preserve_insertion_order).
ROW_POSITION = "_row_position"


class MissingTable(Exception):
    """The statement named a table nothing has written yet."""


#: Postgres type of each pandas dtype a frame column can have; anything else is text
PG_TYPES = {
    "int64": "bigint",
    "Int64": "bigint",
    "int32": "bigint",
    "float64": "double precision",
    "Float64": "double precision",
    "bool": "boolean",
    "boolean": "boolean",
    "datetime64[ns]": "timestamp",
    "datetime64[us]": "timestamp",
}
_INTEGER_OIDS, _FLOAT_OIDS, _BOOL_OIDS = {20, 21, 23}, {700, 701, 1700}, {16}
_TIMESTAMP_OIDS, _BYTES_OIDS = {1114, 1184}, {17}


def pg_type(dtype) -> str:
    text = str(dtype)
    if text.startswith("datetime64") and "," in text:
        return "timestamptz"
    return PG_TYPES.get(text, "text")


class Connection:
    """One connection's statements in the project's SQL: `?` placeholders, MissingTable for a table not there."""

    def __init__(self, con, postgres: bool) -> None:
        self.con, self.postgres = con, postgres

    def _run(self, sql: str, params: Sequence, read):
        """`read(cursor)` after the statement runs, in either store; a missing table raises MissingTable."""
        if not self.postgres:
            import duckdb

            try:
                return read(self.con.execute(sql, list(params)))
            except duckdb.CatalogException as exc:
                raise MissingTable(str(exc)) from exc
        import psycopg2.errors

        try:
            return run_postgres(self.con, sql, params, read)
        except (psycopg2.errors.UndefinedTable, psycopg2.errors.InvalidSchemaName) as exc:
            raise MissingTable(str(exc)) from exc

    def execute(self, sql: str, params: Sequence = ()) -> list[tuple]:
        if not self.postgres:
            return self._run(sql, params, lambda cur: cur.fetchall())
        return self._run(
            sql,
            params,
            lambda cur: [tuple(_plain(v) for v in row) for row in cur.fetchall()] if cur.description else [],
        )

    def fetchdf(self, sql: str, params: Sequence = ()) -> pd.DataFrame:
        if not self.postgres:
            return self._run(sql, params, lambda cur: cur.fetchdf())
        return self._run(sql, params, lambda cur: frame(cur.description, cur.fetchall()))

    def insert(self, table: str, obj: pd.DataFrame) -> None:
        """Append the frame's rows to an existing table that has the frame's columns (in order, in DuckDB;
        by name, in Postgres)."""
        if not self.postgres:
            self.con.register("_promptopt_rows", obj)
            try:
                self.con.execute(f"insert into {table} select * from _promptopt_rows")
            finally:
                self.con.unregister("_promptopt_rows")
            return
        from psycopg2.extras import execute_values

        rows = obj.astype(object).where(obj.notna(), None).itertuples(index=False, name=None)
        columns = ", ".join(f'"{c}"' for c in obj.columns)
        with self.con.cursor() as cur:
            execute_values(cur, f"insert into {table} ({columns}) values %s", list(rows), page_size=500)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        self.execute("begin transaction" if not self.postgres else "begin")
        try:
            yield self
        except BaseException:
            self.execute("rollback")
            raise
        self.execute("commit")


def _plain(value):
    return bytes(value) if isinstance(value, memoryview) else value


def frame(description, rows: list[tuple]) -> pd.DataFrame:
    """A Postgres result as DuckDB's fetchdf would type it, without the rows' positions (ROW_POSITION)."""
    columns = {}
    for i, column in enumerate(description):
        if column.name == ROW_POSITION:
            continue
        values = [_plain(row[i]) for row in rows]
        oid, has_null = column.type_code, any(v is None for v in values)
        if oid in _INTEGER_OIDS:
            columns[column.name] = pd.array(values, dtype="Int64") if has_null else pd.array(values, dtype="int64")
        elif oid in _FLOAT_OIDS:
            columns[column.name] = pd.array([float("nan") if v is None else float(v) for v in values], dtype="float64")
        elif oid in _BOOL_OIDS:
            columns[column.name] = pd.array(values, dtype="boolean") if has_null else pd.array(values, dtype="bool")
        elif oid in _TIMESTAMP_OIDS:
            columns[column.name] = pd.to_datetime(pd.Series(values, dtype=object))
        else:
            columns[column.name] = pd.Series(values, dtype=object)
    return pd.DataFrame(columns, columns=[c.name for c in description if c.name != ROW_POSITION])


def duckdb_connect(database: str, wait_s: float = 120.0):
    """A DuckDB connection that waits, with backoff, while another run's process holds the file."""
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


@contextmanager
def connect(location: str, wait_s: float = 120.0) -> Iterator[Connection]:
    """A connection to the warehouse at `location`: a DuckDB file's path or a Postgres URL."""
    postgres = is_url(location)
    con = connect_postgres(location, wait_s) if postgres else duckdb_connect(location, wait_s)
    try:
        yield Connection(con, postgres)
    finally:
        con.close()


class WarehouseResource(dg.ConfigurableResource):
    """The warehouse the state store reads and writes: a DuckDB file's path, or a Postgres URL (no password in
    it: libpq reads PGPASSWORD). The IO managers are configured with the same location."""

    database: str

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        with connect(self.database) as con:
            yield con
