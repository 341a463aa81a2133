"""A DuckDB response cache: an identical request is never sent twice, across runs and processes.

The key hashes the backend, model, generation parameters and the full rendered prompt, so a
change to any of them is a miss. Errors are never cached: a rerun retries exactly the failed rows.
The connection is opened per batch, so a second process waits for the file lock instead of failing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import duckdb

from promptopt_dagster.llm.base import LLMClient, LLMRequest, LLMResponse

log = logging.getLogger("promptopt.llm")

_SCHEMA = """
create table if not exists llm_cache (
    key varchar primary key,
    backend varchar, model varchar, request_json varchar,
    text varchar, prompt_tokens integer, completion_tokens integer, finish_reason varchar,
    created_at timestamp default current_timestamp
)"""


def cache_key(identity: dict, request: LLMRequest) -> str:
    payload = json.dumps({"identity": identity, "request": request.to_dict()}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class ResponseCache:
    def __init__(self, path: Path, lock_timeout_s: float = 120.0) -> None:
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        deadline, delay = time.monotonic() + self.lock_timeout_s, 0.05
        while True:
            try:
                con = duckdb.connect(str(self.path))
                break
            except duckdb.IOException as exc:  # another process holds the write lock
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        try:
            yield con
        finally:
            con.close()

    def get_many(self, keys: Sequence[str]) -> dict[str, LLMResponse]:
        if not keys:
            return {}
        with self._connect() as con:
            rows = con.execute(
                "select key, text, prompt_tokens, completion_tokens, finish_reason from llm_cache "
                "where key in (select unnest(?))", [list(keys)]).fetchall()
        return {k: LLMResponse(text=t, prompt_tokens=p, completion_tokens=c, finish_reason=f, cached=True)
                for k, t, p, c, f in rows}

    def put_many(self, items: Sequence[tuple[str, dict, LLMRequest, LLMResponse]]) -> None:
        rows = [(key, ident["backend"], ident["model"], json.dumps(req.to_dict(), ensure_ascii=False), r.text,
                 r.prompt_tokens, r.completion_tokens, r.finish_reason)
                for key, ident, req, r in items if r.error is None]
        if not rows:
            return
        with self._connect() as con:
            con.executemany("insert or ignore into llm_cache (key, backend, model, request_json, text, "
                            "prompt_tokens, completion_tokens, finish_reason) values (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def __len__(self) -> int:
        with self._connect() as con:
            return con.execute("select count(*) from llm_cache").fetchone()[0]


class CachedClient(LLMClient):
    """Wraps any backend; only cache misses reach it, so `usage.llm_calls` counts real requests."""

    def __init__(self, inner: LLMClient, cache: ResponseCache) -> None:
        super().__init__()
        self.inner = inner
        self.cache = cache
        self.backend = inner.backend
        self.mode = inner.mode

    @property
    def model(self) -> str:
        return self.inner.model

    def identity(self) -> dict:
        return self.inner.identity()

    def _generate(self, requests: Sequence[LLMRequest]) -> list[LLMResponse]:
        ident = self.identity()
        keys = [cache_key(ident, r) for r in requests]
        found = self.cache.get_many(keys)
        self.usage.cache_hits += len([k for k in keys if k in found])
        # Duplicate requests inside one batch are sent once.
        miss_keys = list(dict.fromkeys(k for k in keys if k not in found))
        if miss_keys:
            by_key = dict(zip(keys, requests))
            fresh = self.inner.generate([by_key[k] for k in miss_keys])
            self.cache.put_many([(k, ident, by_key[k], r) for k, r in zip(miss_keys, fresh)])
            found.update(zip(miss_keys, fresh))
        out, sent = [], set()
        for k in keys:
            r = found[k]
            if not r.cached and k in sent:  # a within-batch duplicate: answered, not sent again
                r = LLMResponse(**{**r.__dict__, "cached": True})
                self.usage.cache_hits += 1
            sent.add(k)
            out.append(r)
        return out
