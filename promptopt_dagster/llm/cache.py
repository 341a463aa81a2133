"""A DuckDB response cache: an identical request is never sent twice, across runs and processes.

The key hashes the backend, model, generation parameters and the full rendered prompt, so a
change to any of them is a miss. Errors are never cached: a rerun retries exactly the failed rows.
The connection is opened per batch, so a second process waits for the file lock instead of failing.
"""

from __future__ import annotations

import dataclasses
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
_ADD_SCORES = "alter table llm_cache add column if not exists label_scores varchar"  # caches from before ensembles


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
    def __init__(self, path: Path, lock_timeout_s: float = 120.0) -> None:
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute(_SCHEMA)
            con.execute(_ADD_SCORES)

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
                "select key, text, prompt_tokens, completion_tokens, finish_reason, label_scores from llm_cache "
                "where key in (select unnest(?))", [list(keys)]).fetchall()
        return {k: LLMResponse(text=t, prompt_tokens=p, completion_tokens=c, finish_reason=f, cached=True,
                               label_scores=json.loads(s) if s else None)
                for k, t, p, c, f, s in rows}

    def put_many(self, items: Sequence[tuple[str, dict, LLMRequest, LLMResponse]]) -> None:
        rows = [(key, ident["backend"], ident["model"], json.dumps(req.to_dict(), ensure_ascii=False), r.text,
                 r.prompt_tokens, r.completion_tokens, r.finish_reason,
                 json.dumps(r.label_scores) if r.label_scores is not None else None)
                for key, ident, req, r in items if r.error is None]
        if not rows:
            return
        with self._connect() as con:  # replace: an answer asked again for its label scores gains them
            con.executemany("insert or replace into llm_cache (key, backend, model, request_json, text, "
                            "prompt_tokens, completion_tokens, finish_reason, label_scores) "
                            "values (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def __len__(self) -> int:
        with self._connect() as con:
            return con.execute("select count(*) from llm_cache").fetchone()[0]


class CachedClient(LLMClient):
    """Wraps any backend; only cache misses reach it, so `usage.requests` counts real model calls.

    Answers are written to the cache while the batch is still running (every `flush_every` answers
    or `flush_s` seconds), so an interrupted run keeps what it had already paid for.
    """

    def __init__(self, inner: LLMClient, cache: ResponseCache, flush_every: int = 64, flush_s: float = 2.0) -> None:
        super().__init__()
        self.inner = inner
        self.cache = cache
        self.backend = inner.backend
        self.mode = inner.mode
        self.ranks_labels = inner.ranks_labels
        self.price = inner.price
        self.flush_every, self.flush_s = flush_every, flush_s

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
        pending: list[tuple[str, dict, LLMRequest, LLMResponse]] = []
        last_flush = time.monotonic()
        try:
            for j, r in self.inner.stream([requests[i] for i in to_send]):
                i = to_send[j]
                pending.append((keys[i], ident, requests[i], r))
                yield i, r
                for dup in duplicates[keys[i]]:  # answered once, not sent again
                    yield dup, dataclasses.replace(r, cached=True)
                if len(pending) >= self.flush_every or time.monotonic() - last_flush > self.flush_s:
                    self.cache.put_many(pending)
                    pending, last_flush = [], time.monotonic()
        finally:
            self.cache.put_many(pending)
