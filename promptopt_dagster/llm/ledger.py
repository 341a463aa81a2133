"""The usage ledger: one row per paid model call, written as it is paid, whatever becomes of the run.

Spend used to be summed from what assets materialized, so a canceled or killed run's calls were lost
and a rerun served from the cache looked free. The ledger is a table in the response cache's SQLite
file (llm/cache.py): a cache miss sent to a backend is recorded in the same transaction that stores
its answer, so an answer in the cache is always in the ledger, once. An error that was sent (and may
be billed) is recorded too, with its attempts; errors are never cached.

Each row carries its attribution (optimization, generation, iteration, run, role), which the Dagster
layer sets on the client before an asset calls it (defs/resources.py). A call made outside an
optimization (`promptopt rewrite`, a test) is recorded with optimization NULL. Calls of an asset whose
partition names the optimization but not its generation (migration_references, final_report) are
recorded with generation NULL and claimed by the generation whose final report reads them (`claim`).

This module is the llm layer: it imports neither dagster nor the project's defs or CLI.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from promptopt_dagster.llm.store_location import connect_postgres, is_url, run_postgres
from promptopt_dagster.llm.usage import UsageByModel, UsageStats, total

TABLE = "llm_ledger"
SCHEMA = f"""
create table if not exists {TABLE} (
    id integer primary key autoincrement,
    optimization text, generation integer, iteration integer, run_id text, role text,
    backend text, model text,
    requests integer not null, prompt_tokens integer not null, completion_tokens integer not null,
    cost_usd real not null, error integer not null,
    cache_key text,
    created_at text default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)"""
#: the same table in Postgres (the shared deployment's store): its own spelling of a serial id and a UTC time
POSTGRES_SCHEMA = (
    SCHEMA.replace("id integer primary key autoincrement", "id bigserial primary key")
    .replace("cost_usd real", "cost_usd double precision")
    .replace(
        "default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
        """default (to_char(now() at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))""",
    )
)
INDEXES = (
    f"create index if not exists {TABLE}_optimization on {TABLE} (optimization, generation)",
    f"create index if not exists {TABLE}_run on {TABLE} (run_id)",
)
_INSERT = (
    f"insert into {TABLE} (optimization, generation, iteration, run_id, role, backend, model, requests, "
    "prompt_tokens, completion_tokens, cost_usd, error, cache_key) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
ROLES = ("task", "optimizer", "judge", "source")


@dataclass(frozen=True)
class Attribution:
    """Whom a paid call belongs to. All None: a call made outside any optimization."""

    optimization: str | None = None
    generation: int | None = None
    iteration: int | None = None
    run_id: str | None = None
    role: str | None = None


def ensure_schema(execute: Callable, postgres: bool = False) -> None:
    """Create the table and its indexes with `execute(sql)` (the cache's statement runner, either store)."""
    execute(POSTGRES_SCHEMA if postgres else SCHEMA)
    for sql in INDEXES:
        execute(sql)


def row(tags: Attribution | None, backend: str, model: str, response, key: str | None = None) -> tuple | None:
    """The ledger row of one response a backend answered (or failed after trying); None when nothing was sent."""
    if response.cached or (response.error is not None and not response.attempts):
        return None
    t = tags or Attribution()
    return (
        t.optimization,
        t.generation,
        t.iteration,
        t.run_id,
        t.role,
        backend,
        model,
        int(response.attempts),
        int(response.prompt_tokens or 0),
        int(response.completion_tokens or 0),
        float(response.cost_usd or 0.0),
        int(response.error is not None),
        key,
    )


def record(executemany: Callable, rows: Iterable[tuple]) -> None:
    """Insert ledger rows with `executemany(sql, rows)`, inside the caller's transaction (the cache write of the
    same answers); a None (a response nothing was paid for, see `row`) is skipped."""
    rows = [r for r in rows if r is not None]
    if rows:
        executemany(_INSERT, rows)


# --- reading ----------------------------------------------------------------------------------------------


class _Reader:
    """Read access to the ledger wherever it lives; `rows` is None when it holds no ledger yet."""

    def __init__(self, location: Path | str, timeout_s: float = 30.0) -> None:
        self.postgres = is_url(location)
        self.con = None
        if self.postgres:
            self.con = connect_postgres(location, timeout_s)
            if self.query("select to_regclass(?)", (TABLE,))[0][0] is None:
                self.close()
        elif Path(location).exists():
            self.con = sqlite3.connect(f"file:{location}?mode=ro", uri=True, timeout=timeout_s)
            if not self.query("select 1 from sqlite_master where type = 'table' and name = ?", (TABLE,)):
                self.close()

    def query(self, sql: str, params=()) -> list:
        if not self.postgres:
            return self.con.execute(sql, params).fetchall()
        return run_postgres(self.con, sql, params)

    def close(self) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None


def _where(optimization: str | None, generation: int | None, run_id: str | None, unassigned: bool) -> tuple[str, list]:
    clauses, params = [], []
    if optimization is not None:
        clauses.append("optimization = ?")
        params.append(optimization)
    if generation is not None:
        if unassigned:
            clauses.append("(generation = ? or generation is null)")
        else:
            clauses.append("generation = ?")
        params.append(generation)
    if run_id is not None:
        clauses.append("run_id = ?")
        params.append(run_id)
    return (" where " + " and ".join(clauses)) if clauses else "", params


def _grouped(
    location: Path | str,
    group: str,
    optimization: str | None,
    generation: int | None,
    run_id: str | None,
    unassigned: bool,
) -> dict[str, UsageStats]:
    reader = _Reader(location)
    if reader.con is None:
        return {}
    where, params = _where(optimization, generation, run_id, unassigned)
    try:
        rows = reader.query(
            f"select {group}, count(*), sum(requests), sum(error), sum(prompt_tokens), "
            f"sum(completion_tokens), sum(cost_usd) from {TABLE}{where} group by 1",
            params,
        )
    finally:
        reader.close()
    return {
        str(key): UsageStats(
            llm_calls=n,
            requests=int(req or 0),
            errors=int(err or 0),
            prompt_tokens=int(p or 0),
            completion_tokens=int(c or 0),
            cost_usd=float(cost or 0.0),
        )
        for key, n, req, err, p, c, cost in rows
    }


def spend_by_model(
    location: Path | str,
    optimization: str | None = None,
    generation: int | None = None,
    run_id: str | None = None,
    unassigned: bool = False,
) -> UsageByModel:
    """What was paid, keyed by "backend/model" as UsageByModel is; cache_hits is always 0 (nothing cached is paid).

    unassigned: with a generation, also count this optimization's calls not yet given a generation."""
    return _grouped(location, "backend || '/' || model", optimization, generation, run_id, unassigned)


def spend(
    location: Path | str,
    optimization: str | None = None,
    generation: int | None = None,
    run_id: str | None = None,
    unassigned: bool = False,
) -> UsageStats:
    """Totals of what was paid: llm_calls are answers (and failures) a backend sent, requests their attempts."""
    return total(spend_by_model(location, optimization, generation, run_id, unassigned))


def spend_by_role(
    location: Path | str, optimization: str, generation: int | None = None, unassigned: bool = False
) -> dict[str, UsageStats]:
    return _grouped(location, "coalesce(role, 'task')", optimization, generation, None, unassigned)


def spend_by_run(location: Path | str, optimization: str) -> dict[str, UsageStats]:
    """Each run's paid calls for the optimization (a canceled or killed run included)."""
    return _grouped(location, "coalesce(run_id, '')", optimization, None, None, False)


def claim(location: Path | str, optimization: str, generation: int, timeout_s: float = 120.0) -> int:
    """Give this optimization's calls that have no generation yet (its migration references, its final report)
    to `generation`; the number of rows claimed. Called by the final report of that generation, the first
    report after the start that paid them."""
    sql = f"update {TABLE} set generation = ? where optimization = ? and generation is null"
    if is_url(location):
        reader = _Reader(location, timeout_s)
        if reader.con is None:
            return 0
        try:
            return run_postgres(reader.con, sql, (generation, optimization), lambda cur: cur.rowcount)
        finally:
            reader.close()
    path = Path(location)
    if not path.exists():
        return 0
    con = sqlite3.connect(path, timeout=timeout_s, isolation_level=None)
    try:
        ensure_schema(con.execute)
        return con.execute(sql, (generation, optimization)).rowcount
    finally:
        con.close()
