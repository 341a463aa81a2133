"""The response cache: an identical request is never sent twice, across runs and processes.

The key hashes the backend, model, generation parameters and the full rendered prompt, so a
change to any of them is a miss. Errors are never cached: a rerun retries exactly the failed rows.

It is a SQLite file in WAL mode, not a DuckDB one: several optimizations run side by side, each
in its own process, and every answer is committed the moment it arrives (a run killed mid-batch
keeps all it paid for). SQLite lets many processes read while one commits, and a commit there takes
microseconds; DuckDB admits one process per file, so each answer would wait for the file lock.
A cache from before (llm_cache.duckdb beside the file) is copied in once, so no answer is lost.

The same file holds the usage ledger (llm/ledger.py): each answer a backend was paid for is recorded
there in the transaction that caches it, so what an optimization paid survives a canceled or killed run.

Where runs share no disk (the `cluster` deployment: each run in its own container), the cache and the
ledger live in Postgres instead, named by a `postgresql://` URL: the same tables, the same statements
(SQLite and Postgres both speak `insert ... on conflict`), one transaction per answer, so every answer
is durable the moment it is paid for and every machine reads what any other paid for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from promptopt_dagster.llm import ledger
from promptopt_dagster.llm.base import LLMClient, LLMRequest, LLMResponse
from promptopt_dagster.llm.store_location import check_url, connect_postgres, is_url, postgres_sql, run_postgres

log = logging.getLogger("promptopt.llm")

_SCHEMA = """
create table if not exists llm_cache (
    key text primary key,
    backend text, model text, request_json text,
    text text, prompt_tokens integer, completion_tokens integer, finish_reason text,
    label_scores text,
    created_at text default current_timestamp,
    latency_s real
)"""
_COLUMNS = "key, backend, model, request_json, text, prompt_tokens, completion_tokens, finish_reason, label_scores"
#: columns added after the table was first created: (name, type), added to an older cache on open
_ADDED = (("latency_s", "real"),)
LEGACY_NAME = "llm_cache.duckdb"
#: The first answer stored for a request stays its answer: one asked again only for its label scores gains
#: them and nothing else, and one that arrives later from a process that sent the same request at the same
#: time changes nothing stored (nor erases scores stored before it: a later run that wants them would pay for
#: the answer again). A second answer can differ from the first (llama.cpp's label ranking stops early when
#: no scores are asked for, and its arithmetic follows the batch), and the candidates scored with the first
#: must score the same when a rerun reads them back: on sst2 a rerun with an AVX-512 build of llama.cpp sent
#: 1,153 requests after an ensemble had rewritten its members' answers. SQLite and Postgres both run this.
_UPSERT = (
    f"insert into llm_cache ({_COLUMNS}, latency_s) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) on conflict (key) do update "
    "set label_scores = coalesce(llm_cache.label_scores, excluded.label_scores)"
)


def cache_key(identity: dict, request: LLMRequest) -> str:
    req = request.to_dict()
    if req["json_schema"] is None:  # keys written before JSON mode existed stay valid
        del req["json_schema"]
    if not req["choices"]:  # and before constrained answers existed
        del req["choices"]
    if not req["calibration_prompts"]:  # and before calibration existed
        del req["calibration_prompts"]
    del req["want_label_scores"]  # the answer is the same; the scores are stored beside it when known
    payload = json.dumps({"identity": identity, "request": req}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class ResponseCache:
    """One store shared by every process of the project: a SQLite file (a path), or a Postgres database (a
    `postgresql://` URL); a connection per process and thread."""

    def __init__(self, location: Path | str, lock_timeout_s: float = 120.0) -> None:
        self.postgres = is_url(location)
        self.location: Path | str = check_url(location) if self.postgres else Path(location)
        self.lock_timeout_s = lock_timeout_s
        self._local = threading.local()
        if self.postgres:
            self._create_postgres()
            return
        self.path = Path(location)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._execute(_SCHEMA)
        self._add_columns()
        ledger.ensure_schema(self._execute)
        self._import_legacy()

    def _con(self):
        """This thread's connection; a forked child opens its own (a handle must not cross a fork)."""
        con = getattr(self._local, "con", None)
        if con is None or self._local.pid != os.getpid():
            if self.postgres:
                con = connect_postgres(self.location, self.lock_timeout_s)
            else:
                con = sqlite3.connect(self.path, timeout=self.lock_timeout_s, isolation_level=None)
                con.execute("pragma journal_mode=wal")  # readers never wait for the writer
                con.execute("pragma synchronous=normal")  # a commit survives the process being killed
            self._local.con, self._local.pid = con, os.getpid()
        return con

    def _execute(self, sql: str, params=()) -> list:
        """Rows of one statement on this thread's connection, in either store's dialect."""
        con = self._con()
        if not self.postgres:
            return con.execute(sql, params).fetchall()
        return run_postgres(con, sql, params)

    def _executemany(self, sql: str, rows: Sequence) -> None:
        con = self._con()
        if not self.postgres:
            con.executemany(sql, rows)
            return
        with con.cursor() as cur:
            cur.executemany(postgres_sql(sql), rows)

    def _create_postgres(self) -> None:
        """The tables, once: processes starting together wait on one advisory lock, as `create table if not
        exists` alone can collide in Postgres's catalog."""
        schema = _SCHEMA.replace("latency_s real", "latency_s double precision")

        def create() -> None:
            self._execute("select pg_advisory_xact_lock(hashtext('promptopt.llm_cache'))")
            self._execute(schema)
            ledger.ensure_schema(self._execute, postgres=True)

        self._write("", [], lambda _execute: create())

    def _add_columns(self) -> None:
        have = {row[1] for row in self._execute("pragma table_info(llm_cache)")}
        for name, kind in _ADDED:
            if name not in have:
                try:
                    self._execute(f"alter table llm_cache add column {name} {kind}")
                except sqlite3.OperationalError as exc:  # another process added it first
                    if "duplicate column" not in str(exc):
                        raise

    def _import_legacy(self) -> None:
        """Copy a DuckDB cache of an earlier version into this one, once (the DuckDB file is kept)."""
        legacy = self.path.with_name(LEGACY_NAME)
        if legacy == self.path or not legacy.exists() or len(self):
            return
        import duckdb  # start-up: ~40 ms, for a one-time copy of a legacy cache that most processes never make

        with duckdb.connect(str(legacy), read_only=True) as old:
            columns = {
                r[0]
                for r in old.execute(
                    "select column_name from information_schema.columns where table_name = 'llm_cache'"
                ).fetchall()
            }
            scores = "label_scores" if "label_scores" in columns else "null"
            rows = old.execute(
                f"select key, backend, model, request_json, text, prompt_tokens, completion_tokens, "
                f"finish_reason, {scores} from llm_cache"
            ).fetchall()
        self._write(
            f"insert into llm_cache ({_COLUMNS}) values (?, ?, ?, ?, ?, ?, ?, ?, ?) on conflict do nothing", rows
        )
        log.info("copied %d cached answers from %s into %s", len(rows), legacy, self.path)

    def get_many(self, keys: Sequence[str]) -> dict[str, LLMResponse]:
        out: dict[str, LLMResponse] = {}
        keys = list(keys)
        for start in range(0, len(keys), 500):  # SQLite caps the parameters of one statement
            chunk = keys[start : start + 500]
            rows = self._execute(
                "select key, text, prompt_tokens, completion_tokens, finish_reason, label_scores, latency_s "
                f"from llm_cache where key in ({', '.join('?' * len(chunk))})",
                chunk,
            )
            for k, t, p, c, f, s, latency in rows:
                out[k] = LLMResponse(
                    text=t,
                    prompt_tokens=p,
                    completion_tokens=c,
                    # the seconds the answer took when it was made: a prompt's cost per row reads the
                    # same on a rerun from the cache as on the run that paid for it (0: cached before
                    # the time was kept)
                    latency_s=float(latency or 0.0),
                    finish_reason=f,
                    cached=True,
                    label_scores=json.loads(s) if s else None,
                )
        return out

    def put_many(self, items: Sequence[tuple[str, dict, LLMRequest, LLMResponse]], paid: Sequence[tuple] = ()) -> None:
        """Cache the answers (errors are not cached) and record `paid` ledger rows, in one transaction."""
        rows = [
            (
                key,
                ident["backend"],
                ident["model"],
                json.dumps(req.to_dict(), ensure_ascii=False),
                r.text,
                r.prompt_tokens,
                r.completion_tokens,
                r.finish_reason,
                json.dumps(r.label_scores) if r.label_scores is not None else None,
                r.latency_s,
            )
            for key, ident, req, r in items
            if r.error is None
        ]
        if not rows and not any(p is not None for p in paid):
            return
        self._write(_UPSERT, rows, lambda execute: ledger.record(self._executemany, paid))

    def _write(self, sql: str, rows: list, also=None) -> None:
        """One transaction. SQLite: `begin immediate` takes the write lock up front, waiting up to
        lock_timeout_s; Postgres locks rows as they are written."""
        self._execute("begin immediate" if not self.postgres else "begin")
        try:
            if rows:
                self._executemany(sql, rows)
            if also is not None:
                also(self._execute)
        except BaseException:
            self._execute("rollback")
            raise
        self._execute("commit")

    def __len__(self) -> int:
        return self._execute("select count(*) from llm_cache")[0][0]


class CachedClient(LLMClient):
    """Wraps any backend; only cache misses reach it, so `usage.requests` counts real model calls.

    Each answer is committed to the cache as it arrives, so an interrupted or killed run keeps every
    answer it had received, and its rerun sends only the rest. The same commit records the call in the
    usage ledger under `attribution` (whose optimization, generation, iteration, run and role it is),
    which the Dagster layer sets before an asset calls the model."""

    def __init__(self, inner: LLMClient, cache: ResponseCache) -> None:
        super().__init__()
        self.inner = inner
        self.cache = cache
        self.backend = inner.backend
        self.mode = inner.mode
        self.ranks_labels = inner.ranks_labels
        self.price = inner.price
        self.attribution: ledger.Attribution | None = None

    @property
    def model(self) -> str:
        return self.inner.model

    def identity(self) -> dict:
        return self.inner.identity()

    def close(self) -> None:
        self.inner.close()

    def context_window(self) -> int | None:
        return self.inner.context_window()

    def count_tokens(self, texts: Sequence[str]) -> list[int] | None:
        return self.inner.count_tokens(texts)

    def _stream(self, requests: Sequence[LLMRequest]) -> Iterator[tuple[int, LLMResponse]]:
        ident = self.identity()
        keys = [cache_key(ident, r) for r in requests]
        found = self.cache.get_many(list(dict.fromkeys(keys)))
        to_send: list[int] = []  # index of the first request with each missing key
        duplicates: dict[str, list[int]] = {}  # later requests identical to one being sent
        for i, k in enumerate(keys):
            if k in found and not (requests[i].want_label_scores and found[k].label_scores is None):
                yield i, dataclasses.replace(found[k])
            elif k in duplicates:
                duplicates[k].append(i)
            else:
                duplicates[k] = []
                to_send.append(i)
        for j, r in self.inner.stream([requests[i] for i in to_send]):
            i = to_send[j]
            paid = ledger.row(self.attribution, self.inner.backend, self.inner.model, r, keys[i])
            self.cache.put_many([(keys[i], ident, requests[i], r)], [paid])
            if keys[i] in found and r.error is None:  # asked again for its scores: the stored answer stands
                r = dataclasses.replace(found[keys[i]], label_scores=r.label_scores, cached=False)
            yield i, r
            for dup in duplicates[keys[i]]:  # answered once, not sent again
                yield dup, dataclasses.replace(r, cached=True)
