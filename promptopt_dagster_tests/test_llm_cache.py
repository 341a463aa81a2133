"""The response cache: nothing identical is sent twice, across batches, runs and processes."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap

import pytest

from promptopt_dagster.app.settings import PROJECT_ROOT
from promptopt_dagster.core.prompts import Demo, PromptVersion
from promptopt_dagster.llm.base import LLMRequest
from promptopt_dagster.llm.cache import CachedClient, ResponseCache, cache_key
from promptopt_dagster.llm.fake import FakeLLM

VENV_PYTHON = PROJECT_ROOT / ".venv" / "bin" / "python"
if not VENV_PYTHON.exists():  # a checkout whose environment lives elsewhere
    VENV_PYTHON = sys.executable


def echo(req: LLMRequest) -> str:
    return f"answer to {req.prompt}"


def batch(*prompts: str, **kw) -> list[LLMRequest]:
    return [LLMRequest(prompt=p, **kw) for p in prompts]


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path):
    """Each test on both stores: the SQLite file of one machine, and a Postgres database (a URL) of the
    shared deployment, on a real server (conftest.postgres_server)."""
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return tmp_path / "state" / "llm_cache.sqlite"


def client(db, responder=echo, name="fake-1") -> tuple[CachedClient, FakeLLM]:
    inner = FakeLLM(responder, name=name)
    return CachedClient(inner, ResponseCache(db)), inner


def test_second_identical_batch_sends_nothing(db):
    cached, inner = client(db)
    requests = batch("a", "b", "c")
    first = cached.generate(requests)
    assert [r.text for r in first] == ["answer to a", "answer to b", "answer to c"]
    assert not any(r.cached for r in first)
    assert len(inner.requests) == 3
    assert cached.usage.llm_calls == 3 and cached.usage.cache_hits == 0
    assert len(cached.cache) == 3

    before = dataclasses.replace(cached.usage)
    second = cached.generate(batch("a", "b", "c"))
    assert len(inner.requests) == 3  # nothing new reached the model
    used = cached.usage.since(before)
    assert used.llm_calls == 0
    assert used.cache_hits == 3
    assert [r.text for r in second] == [r.text for r in first]
    assert all(r.cached for r in second)
    assert [r.prompt_tokens for r in second] == [r.prompt_tokens for r in first]
    assert [r.finish_reason for r in second] == ["stop"] * 3


def test_fresh_cache_object_on_same_file_hits(db):
    cached, _ = client(db)
    cached.generate(batch("x", "y"))

    # A new run: new ResponseCache, new CachedClient, new inner model, same file.
    again, inner = client(db, responder=lambda r: pytest.fail(f"sent {r.prompt!r} despite the cache"))
    out = again.generate(batch("y", "x"))
    assert inner.requests == []
    assert [r.text for r in out] == ["answer to y", "answer to x"]
    assert again.usage.llm_calls == 0 and again.usage.cache_hits == 2


def test_cross_process(db):
    script = textwrap.dedent(
        f"""
        from pathlib import PosixPath
        from promptopt_dagster.llm.base import LLMRequest
        from promptopt_dagster.llm.cache import CachedClient, ResponseCache
        from promptopt_dagster.llm.fake import FakeLLM

        inner = FakeLLM(lambda r: "written by the child process: " + r.prompt)
        client = CachedClient(inner, ResponseCache({db!r}))
        out = client.generate([LLMRequest(prompt="p1"), LLMRequest(prompt="p2", max_tokens=4)])
        assert client.usage.llm_calls == 2, client.usage
        print("OK", len(inner.requests))
        """
    )
    proc = subprocess.run(
        [str(VENV_PYTHON), "-c", script], capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "OK 2"

    here, inner = client(db, responder=lambda r: "answered in the parent")
    out = here.generate([LLMRequest(prompt="p1"), LLMRequest(prompt="p2", max_tokens=4), LLMRequest(prompt="p3")])
    assert [r.text for r in out] == [
        "written by the child process: p1",
        "written by the child process: p2",
        "answered in the parent",
    ]
    assert [r.cached for r in out] == [True, True, False]
    assert [r.prompt for r in inner.requests] == ["p3"]
    assert here.usage.cache_hits == 2 and here.usage.llm_calls == 1


# --- what the key depends on ---------------------------------------------------------------------

BASE = LLMRequest(prompt="Review: fine\nSentiment:", max_tokens=4, temperature=0.0, stop=("\n",))
IDENT = {"backend": "fake", "model": "fake-1"}


@pytest.mark.parametrize(
    "ident, request_",
    [
        ({"backend": "fake", "model": "fake-2"}, BASE),
        ({"backend": "local", "model": "fake-1"}, BASE),
        (IDENT, dataclasses.replace(BASE, max_tokens=5)),
        (IDENT, dataclasses.replace(BASE, temperature=0.7)),
        (IDENT, dataclasses.replace(BASE, stop=())),
        (IDENT, dataclasses.replace(BASE, stop=("\n", "."))),
        (IDENT, dataclasses.replace(BASE, prompt="Review: fine\nSentiment: ")),
        (IDENT, LLMRequest(messages=(("user", "Review: fine\nSentiment:"),), max_tokens=4, stop=("\n",))),
    ],
    ids=["model", "backend", "max_tokens", "temperature", "no-stop", "more-stop", "prompt", "chat"],
)
def test_key_changes(ident, request_):
    assert cache_key(ident, request_) != cache_key(IDENT, BASE)


def test_key_is_stable():
    same = LLMRequest(prompt="Review: fine\nSentiment:", max_tokens=4, temperature=0.0, stop=("\n",))
    assert cache_key(dict(reversed(IDENT.items())), same) == cache_key(IDENT, BASE)
    assert len(cache_key(IDENT, BASE)) == 64


def test_key_changes_end_to_end(db):
    cached, inner = client(db)
    cached.generate([BASE])
    assert len(inner.requests) == 1

    variants = [
        dataclasses.replace(BASE, max_tokens=8),
        dataclasses.replace(BASE, temperature=0.5),
        dataclasses.replace(BASE, stop=()),
        dataclasses.replace(BASE, prompt=BASE.prompt + " "),
    ]
    out = cached.generate(variants)
    assert inner.requests[1:] == variants
    assert not any(r.cached for r in out)

    other_model, other_inner = client(db, name="fake-2")
    other_model.generate([BASE])
    assert other_inner.requests == [BASE]
    assert other_model.usage.cache_hits == 0


def test_rendered_prompt_change_is_a_miss(db):
    prompt = PromptVersion(system_prompt="Classify.", output_prompt="Review: {user_input}\nSentiment:")
    with_demo = prompt.child(demos=[Demo(user_input="nice", ground_truth_output="positive")])
    reworded = prompt.child(system_prompt="Classify the sentiment.")
    cached, inner = client(db)
    cached.generate(batch(prompt.render_completion("row")))
    cached.generate(batch(prompt.render_completion("row")))
    assert len(inner.requests) == 1
    cached.generate(batch(with_demo.render_completion("row"), reworded.render_completion("row")))
    assert len(inner.requests) == 3
    assert cached.usage.cache_hits == 1


# --- errors, duplicates, order -------------------------------------------------------------------


def test_errors_are_not_cached_and_retried(db):
    broken = {"b"}

    def flaky(req: LLMRequest) -> str:
        if req.prompt in broken:
            raise TimeoutError("model timed out")
        return echo(req)

    cached, inner = client(db, responder=flaky)
    out = cached.generate(batch("a", "b", "c"))
    assert [r.error for r in out] == [None, "TimeoutError: model timed out", None]
    assert out[1].text == ""
    assert cached.usage.errors == 1
    assert len(cached.cache) == 2

    broken.clear()
    before = len(inner.requests)
    again = cached.generate(batch("a", "b", "c"))
    assert [r.prompt for r in inner.requests[before:]] == ["b"]  # exactly the failed row is retried
    assert [r.text for r in again] == ["answer to a", "answer to b", "answer to c"]
    assert [r.cached for r in again] == [True, False, True]
    assert all(r.error is None for r in again)
    assert len(cached.cache) == 3


def test_errors_retried_by_a_new_run(db):
    cached, _ = client(db, responder=lambda r: (_ for _ in ()).throw(RuntimeError("down")))
    assert cached.generate(batch("a"))[0].error == "RuntimeError: down"
    assert len(cached.cache) == 0

    again, inner = client(db)
    assert again.generate(batch("a"))[0].text == "answer to a"
    assert len(inner.requests) == 1


def test_duplicates_in_one_batch_sent_once(db):
    cached, inner = client(db)
    out = cached.generate(batch("a", "b", "a", "a", "b"))
    assert [r.prompt for r in inner.requests] == ["a", "b"]
    assert [r.text for r in out] == ["answer to a", "answer to b", "answer to a", "answer to a", "answer to b"]
    assert [r.cached for r in out] == [False, False, True, True, True]
    assert cached.usage.llm_calls == 2
    assert cached.usage.cache_hits == 3
    assert inner.usage.llm_calls == 2


def test_duplicates_with_different_params_are_both_sent(db):
    cached, inner = client(db)
    cached.generate([LLMRequest(prompt="a", max_tokens=2), LLMRequest(prompt="a", max_tokens=3)])
    assert len(inner.requests) == 2


def test_responses_in_request_order(db):
    cached, inner = client(db)
    cached.generate(batch("p3", "p7"))  # some rows already cached
    prompts = [f"p{i}" for i in range(10, 0, -1)] + ["p3"]
    out = cached.generate(batch(*prompts))
    assert [r.text for r in out] == [f"answer to {p}" for p in prompts]
    assert [r.cached for r in out] == [p in {"p3", "p7"} or i == len(prompts) - 1 for i, p in enumerate(prompts)]
    # Only the misses were sent, each once, in the order they first appear.
    assert [r.prompt for r in inner.requests[2:]] == [p for p in prompts if p not in {"p3", "p7"}]


def test_default_responder_and_chat_requests(db):
    inner = FakeLLM(mode="chat")
    cached = CachedClient(inner, ResponseCache(db))
    assert cached.mode == "chat" and cached.model == "fake-1" and cached.backend == "fake"
    reqs = [
        LLMRequest(messages=(("system", "s"), ("user", "u1"))),
        LLMRequest(messages=(("system", "s"), ("user", "u2"))),
    ]
    first = cached.generate(reqs)
    assert first[0].text != first[1].text
    second = cached.generate(list(reversed(reqs)))
    assert [r.text for r in second] == [first[1].text, first[0].text]
    assert len(inner.requests) == 2


def test_empty_batch(db):
    cached, inner = client(db)
    assert cached.generate([]) == []
    assert inner.requests == [] and cached.usage.llm_calls == 0


# --- durability and the store ----------------------------------------------------------------------


def test_each_answer_is_committed_as_it_arrives(db):
    """A run killed mid-batch keeps every answer it had received: no batch waits to be written."""
    cached, _ = client(db)
    stream = cached.stream(batch("a", "b", "c", "d"))
    next(stream), next(stream)  # two answers consumed, the batch not finished, nothing closed
    assert len(ResponseCache(db)) == 2  # what another process would see


def test_a_duckdb_cache_of_an_earlier_version_is_copied_in_once(tmp_path):
    import duckdb

    legacy = tmp_path / "llm_cache.duckdb"
    with duckdb.connect(str(legacy)) as con:  # the layout earlier versions wrote
        con.execute(
            "create table llm_cache (key varchar primary key, backend varchar, model varchar, "
            "request_json varchar, text varchar, prompt_tokens integer, completion_tokens integer, "
            "finish_reason varchar, created_at timestamp default current_timestamp)"
        )
        request = LLMRequest(prompt="old")
        con.execute(
            "insert into llm_cache (key, backend, model, request_json, text, prompt_tokens, "
            "completion_tokens, finish_reason) values (?, 'fake', 'fake-1', '{}', 'kept', 3, 1, 'stop')",
            [cache_key(IDENT, request)],
        )
    cached, inner = client(tmp_path / "llm_cache.sqlite", responder=lambda r: pytest.fail("sent despite the cache"))
    out = cached.generate([request])
    assert out[0].text == "kept" and out[0].cached and inner.requests == []
    assert len(ResponseCache(tmp_path / "llm_cache.sqlite")) == 1  # reopening does not copy again


def test_a_cached_answer_keeps_the_seconds_it_took_and_an_older_cache_gains_the_column(db, tmp_path):
    """A prompt's seconds per row (objective.max_seconds_per_row) must read the same on a rerun from the cache."""
    import sqlite3

    class Timed(FakeLLM):  # a backend that says how long each answer took, as the real ones do
        def _generate(self, requests):
            return [
                dataclasses.replace(r, latency_s=0.05 + 0.01 * len(self.requests)) for r in super()._generate(requests)
            ]

    def timed(path) -> tuple[CachedClient, FakeLLM]:
        inner = Timed(echo)
        return CachedClient(inner, ResponseCache(path)), inner

    cached, _ = timed(db)
    first = [r for _, r in cached.stream(batch("a"))][0]
    assert not first.cached and first.latency_s == pytest.approx(0.06)
    again, inner = timed(db)
    second = [r for _, r in again.stream(batch("a"))][0]
    assert second.cached and inner.usage.requests == 0 and second.latency_s == pytest.approx(first.latency_s)

    old = tmp_path / "old.sqlite"  # a cache made before the column existed
    with sqlite3.connect(old) as con:
        con.execute(
            "create table llm_cache (key text primary key, backend text, model text, request_json text, text text, "
            "prompt_tokens integer, completion_tokens integer, finish_reason text, label_scores text, "
            "created_at text default current_timestamp)"
        )
    assert [r.latency_s for _, r in timed(old)[0].stream(batch("b"))] == [pytest.approx(0.06)]
    assert [(r.cached, r.latency_s) for _, r in timed(old)[0].stream(batch("b"))] == [(True, pytest.approx(0.06))]


def test_an_answer_without_label_scores_never_erases_the_scores_stored_for_it(db):
    """Two runs send one request at once, one asking for label scores: whichever answer lands last, the stored
    answer keeps its scores, so a later run that wants them is served from the cache (it paid again before)."""
    from promptopt_dagster.llm.base import LLMResponse

    cache = ResponseCache(db)
    ident, request = {"backend": "fake", "model": "fake-1"}, LLMRequest(prompt="Review: fine\nSentiment:")
    key = cache_key(ident, request)
    scored = LLMResponse(text="positive", label_scores={"positive": -0.1, "negative": -2.3})
    cache.put_many([(key, ident, request, scored)])
    cache.put_many([(key, ident, request, LLMResponse(text="positive"))])  # the other run's answer, later
    assert cache.get_many([key])[key].label_scores == {"positive": -0.1, "negative": -2.3}


def test_an_answer_asked_again_for_its_label_scores_keeps_the_answer_first_stored(db):
    """llama.cpp's label ranking stops early when no scores are asked for, and its arithmetic follows the
    batch, so the second answer can name another label. The rows scored with the first must read the same
    when a rerun reads them back (an ensemble had rewritten its members' answers: a rerun paid again)."""
    calls = []

    def ranker(req: LLMRequest) -> str:
        calls.append(req.want_label_scores)
        return "positive" if len(calls) == 1 else "negative"  # the second answer differs

    from promptopt_dagster.llm.base import LLMResponse

    class Scoring(FakeLLM):  # a backend that returns label scores when asked, as llama.cpp does
        def _generate(self, requests):
            return [
                dataclasses.replace(r, label_scores={"positive": -0.7, "negative": -0.6}) if q.want_label_scores else r
                for q, r in zip(requests, super()._generate(requests))
            ]

    cached = CachedClient(Scoring(ranker), ResponseCache(db))
    plain = LLMRequest(prompt="Review: fine\nSentiment:", choices=["positive", "negative"])
    assert cached.generate([plain])[0].text == "positive"
    again = cached.generate([dataclasses.replace(plain, want_label_scores=True)])[0]
    assert calls == [False, True]  # sent again: the scores were not stored
    assert again.text == "positive" and again.label_scores == {"positive": -0.7, "negative": -0.6}
    assert isinstance(again, LLMResponse) and not again.cached
    rerun = CachedClient(Scoring(ranker), ResponseCache(db))
    assert [r.text for r in rerun.generate([plain, dataclasses.replace(plain, want_label_scores=True)])] == [
        "positive",
        "positive",
    ]
    assert calls == [False, True]  # the rerun sent nothing
