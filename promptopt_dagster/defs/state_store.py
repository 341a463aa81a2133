"""The one store of an optimization's state, and the only code that queries the warehouse by hand.

Dagster maps no dynamic partition to its predecessor (custom partition mappings are not supported,
dagster #16023), so what iteration N continues from cannot arrive as an asset input. It is saved
here instead, explicitly, as app/state.py's IterationState in the `iteration_state` table of the
warehouse that holds the asset tables; the final report's and the promotion's reads of earlier
partitions are here too. Every other module reaches the warehouse through the IO managers.

Nothing of an optimization lives on local disk between runs, so a run can start on a machine (or in
a container) that has never seen the previous one: only the warehouse is shared.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone

import dagster as dg
import pandas as pd
from pydantic import TypeAdapter

from promptopt_dagster.app.state import (
    IterationKey,
    IterationState,
    Outcome,
    Search,
    outcome_from_json,
    outcome_to_json,
    pool_from_json,
    pool_to_json,
)
from promptopt_dagster.core.prompts import Demo, PoolRef, PromptVersion, pool_id
from promptopt_dagster.defs.warehouse import Connection, MissingTable, WarehouseResource
from promptopt_dagster.llm import usage as llm_usage
from promptopt_dagster.optimizers.pool import Candidate

SCHEMA = "promptopt"
STATE_TABLE = f"{SCHEMA}.iteration_state"
_CREATE = f"""
create schema if not exists {SCHEMA};
create table if not exists {STATE_TABLE} (
    optimization varchar not null,
    generation bigint not null,
    iteration bigint not null,
    partition varchar not null,
    continued_from varchar,
    pool_json varchar,
    optimizer_state blob,
    outcome_json varchar,
    search_written_at varchar,
    outcome_written_at varchar,
    primary key (optimization, generation, iteration)
)"""


POOL_TABLE = f"{SCHEMA}.demo_pools"
_CREATE_POOLS = f"""
create schema if not exists {SCHEMA};
create table if not exists {POOL_TABLE} (
    pool_id varchar primary key,
    size bigint not null,
    demos_json varchar not null,
    written_at varchar
)"""
_DEMOS = TypeAdapter(list[Demo])
#: Pools read in this process, by content id (so never stale): the steps of a run read the same pool several times.
_POOLS: dict[str, list[Demo]] = {}


def _remember(key: str, demos: list[Demo]) -> None:
    while len(_POOLS) >= 4:  # a process uses one or two pools; a long-lived one must not keep them all
        _POOLS.pop(next(iter(_POOLS)))
    _POOLS[key] = demos


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _create(con: Connection, table: str, ddl: str) -> None:
    """Create a store table if missing, in the caller's transaction."""
    if con.postgres:  # runs that start together would collide creating it: they take turns
        con.execute("select pg_advisory_xact_lock(hashtext(?))", [table])
        con.execute(ddl.replace(" blob,", " bytea,"))
    else:
        con.execute(ddl)


def _fetch(con: Connection, sql: str, params: list) -> pd.DataFrame:
    """Rows of a query on the warehouse; empty when the table does not exist yet (nothing finished)."""
    try:
        return con.fetchdf(sql, params)
    except MissingTable:
        return pd.DataFrame()


class WarehouseStateStore(dg.ConfigurableResource):
    """app/state.py's StateStore in the warehouse (a DuckDB file, or Postgres where runs share no disk), plus
    the reads of earlier partitions.

    A resource, so a deployment could put the state elsewhere by swapping it; by default the
    Definitions build it on their `warehouse` resource."""

    warehouse: WarehouseResource

    # --- IterationState ------------------------------------------------------------------------

    def _upsert(self, key: IterationKey, columns: dict) -> None:
        """Write some of the key's columns, keeping the others (the search and the outcome are saved by
        different assets); a new row gets the key and its link to the previous iteration."""
        previous = key.previous()
        with self.warehouse.connect() as con, con.transaction():
            _create(con, STATE_TABLE, _CREATE)
            exists = con.execute(
                f"select 1 from {STATE_TABLE} where optimization = ? and generation = ? and iteration = ?",
                [key.optimization, key.generation, key.iteration],
            )
            if not exists:
                con.execute(
                    f"insert into {STATE_TABLE} (optimization, generation, iteration, partition, continued_from) "
                    "values (?, ?, ?, ?, ?)",
                    [key.optimization, key.generation, key.iteration, key.name, previous and previous.name],
                )
            assignments = ", ".join(f"{name} = ?" for name in columns)
            con.execute(
                f"update {STATE_TABLE} set {assignments} where optimization = ? and generation = ? and iteration = ?",
                [*_binary(con, columns.values()), key.optimization, key.generation, key.iteration],
            )

    def save_search(self, key: IterationKey, search: Search) -> list[Candidate]:
        """The search's candidates saved in stored form (each names its retrieval pool, kept once), which it
        returns: the candidate_pool table shows what is stored."""
        stored = [
            dataclasses.replace(c, prompt=p)
            for c, p in zip(search.pool, self._stored_forms([c.prompt for c in search.pool]))
        ]
        self._upsert(
            key,
            {
                "pool_json": pool_to_json(stored),
                "optimizer_state": search.optimizer_state,
                "search_written_at": _now(),
                # a rerun's new search invalidates the decision its earlier attempt made
                "outcome_json": None,
                "outcome_written_at": None,
            },
        )
        return stored

    def save_outcome(self, key: IterationKey, outcome: Outcome) -> None:
        """The decision, its best prompt in stored form (`with_pool` makes it usable again once loaded)."""
        stored = Outcome(self.stored_form(outcome.best_prompt), outcome.loop, outcome.stop_reason)
        self._upsert(key, {"outcome_json": outcome_to_json(stored), "outcome_written_at": _now()})

    def load(self, key: IterationKey, demo_pool: list[Demo] | None = None) -> IterationState | None:
        with self.warehouse.connect() as con:
            try:
                rows = con.execute(
                    f"select pool_json, optimizer_state, outcome_json from {STATE_TABLE} "
                    "where optimization = ? and generation = ? and iteration = ?",
                    [key.optimization, key.generation, key.iteration],
                )
            except MissingTable:  # nothing saved in this warehouse yet
                return None
        if not rows:
            return None
        pool_json, optimizer_state, outcome_json = rows[0]
        search = None
        if pool_json is not None:
            if demo_pool:  # most candidates retrieve from the train rows the caller holds: no warehouse read
                _remember(pool_id(demo_pool), demo_pool)
            candidates = pool_from_json(pool_json, demo_pool)
            search = Search(
                [dataclasses.replace(c, prompt=self.with_pool(c.prompt)) for c in candidates], optimizer_state
            )
        outcome = None if outcome_json is None else outcome_from_json(outcome_json)
        return IterationState(key, key.previous(), search, outcome)

    def last_finished(self, optimization: str, generation: int) -> IterationState | None:
        """The generation's latest iteration with a decision: what its final report reports."""
        with self.warehouse.connect() as con:
            found = _fetch(
                con,
                f"select iteration from {STATE_TABLE} where optimization = ? and generation = ? "
                "and outcome_json is not null order by iteration desc limit 1",
                [optimization, generation],
            )
        if found.empty:
            return None
        return self.load(IterationKey(optimization, generation, int(found.iloc[0]["iteration"])))

    # --- retrieval pools, stored once ---------------------------------------------------------------

    def stored_form(self, prompt: PromptVersion) -> PromptVersion:
        """The prompt as the platform stores it: its retrieval pool kept here once, by content id, and a
        `PoolRef` in its place (core/prompts.py says why). Every stored prompt goes through here."""
        return self._stored_forms([prompt])[0]

    def _stored_forms(self, prompts: list[PromptVersion]) -> list[PromptVersion]:
        """stored_form for many prompts in one transaction, each distinct pool written once."""
        split = [p.without_pool() for p in prompts]
        pools = {stored.pool_ref.id: (stored.pool_ref, demos) for stored, demos in split if demos is not None}
        if pools:
            with self.warehouse.connect() as con, con.transaction():
                _create(con, POOL_TABLE, _CREATE_POOLS)
                for ref, demos in pools.values():
                    if not con.execute(f"select 1 from {POOL_TABLE} where pool_id = ?", [ref.id]):
                        con.execute(
                            f"insert into {POOL_TABLE} (pool_id, size, demos_json, written_at) values (?, ?, ?, ?)",
                            [ref.id, ref.size, _DEMOS.dump_json(demos).decode("utf-8"), _now()],
                        )
            for ref, demos in pools.values():
                _remember(ref.id, demos)
        return [stored for stored, _ in split]

    def with_pool(self, prompt: PromptVersion) -> PromptVersion:
        """A stored prompt made usable: the pool its `PoolRef` names attached (unchanged when it has none)."""
        ref = prompt.pool_ref
        return prompt if ref is None else prompt.with_pool(self._pool(ref))

    def _pool(self, ref: PoolRef) -> list[Demo]:
        if ref.id in _POOLS:
            return _POOLS[ref.id]
        with self.warehouse.connect() as con:
            try:
                rows = con.execute(f"select demos_json from {POOL_TABLE} where pool_id = ?", [ref.id])
            except MissingTable:
                rows = []
        if not rows:
            raise dg.Failure(
                f"the retrieval pool {ref.id[:12]} ({ref.size} rows) of a stored prompt is not in this warehouse: "
                "the prompt was stored by another one. Rerun the optimization here (`promptopt optimize`)."
            )
        demos = _DEMOS.validate_json(rows[0][0])
        if pool_id(demos) != ref.id:
            raise dg.Failure(f"the retrieval pool {ref.id[:12]} stored in this warehouse does not match its id")
        _remember(ref.id, demos)
        return demos

    # --- reads of earlier partitions' asset tables -------------------------------------------------

    def history(self, optimization: str, generation: int) -> dict:
        """The latest finished iteration of a generation, the totals of the iterations leading to it, and
        each iteration's scores and decision (`iterations`, for the summary)."""
        last = self.last_finished(optimization, generation)
        if last is None:
            raise dg.Failure(
                f"Generation {generation} of optimization '{optimization}' has no finished iteration, "
                f"so there is no best prompt to report. Run `promptopt optimize` for it, or "
                f"materialize partition {IterationKey(optimization, generation, 0)} first."
            )
        step = last.key.iteration
        report = f"{SCHEMA}.comparison_report"
        where = "where optimization = ? and generation = ?"
        with self.warehouse.connect() as con:
            first = con.execute(
                f"select baseline_score, scores_json from {report} {where} and step = 0", [optimization, generation]
            )[0]
            accepted = next(
                iter(
                    con.execute(
                        f"select scores_json from {report} {where} and step <= ? and accepted order by step desc "
                        "limit 1",
                        [optimization, generation, step],
                    )
                ),
                None,
            )
            per_iteration = con.execute(
                f"select usage_json from {report} {where} and step <= ?", [optimization, generation, step]
            )
            steps = con.fetchdf(
                f"select step, baseline_score, refined_score, accepted, best_score, why from {report} {where} "
                "and step <= ? order by step",
                [optimization, generation, step],
            )
        best_scores = json.loads(accepted[0])["refined"] if accepted else json.loads(first[1])["baseline"]
        return {
            "state": last,
            "step": step,
            "initial_dev_score": first[0],
            "dev_scores": {"initial": json.loads(first[1])["baseline"], "best": best_scores},
            "iterations": [
                {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
                for r in steps.astype(object).to_dict("records")
            ],
            "usage": llm_usage.merge(*(llm_usage.from_json(u) for (u,) in per_iteration)),
        }

    def other_generation_reports(self, optimization: str, generation: int) -> pd.DataFrame:
        """The final_report rows of the optimization's other generations, which its new report must keep:
        the IO manager replaces the optimization's whole partition, and an old generation stays readable."""
        with self.warehouse.connect() as con:
            return _fetch(
                con,
                f"select * from {SCHEMA}.final_report where optimization = ? and generation <> ? order by generation",
                [optimization, generation],
            )

    def promotion_events(self, dataset: str) -> pd.DataFrame:
        """The dataset's promotion audit so far, which the next request appends to (the IO manager replaces
        the dataset's whole partition) and which says what is served now."""
        with self.warehouse.connect() as con:
            return _fetch(con, f"select * from {SCHEMA}.promotion_audit where dataset = ? order by event_id", [dataset])


def _binary(con: Connection, values) -> list:
    """Bytes as the driver binds a binary column (psycopg2 wants Binary; DuckDB takes bytes)."""
    if not con.postgres:
        return list(values)
    import psycopg2

    return [psycopg2.Binary(v) if isinstance(v, bytes) else v for v in values]
