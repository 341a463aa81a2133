"""Usage sums, prices, the rate limiter's arithmetic and the progress lines: plain logic, no server."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from promptopt_dagster.llm.base import LLMRequest
from promptopt_dagster.llm.factory import ModelSettings, build_client
from promptopt_dagster.llm.fake import FakeLLM
from promptopt_dagster.llm.progress import Progress
from promptopt_dagster.llm.ratelimit import RateLimiter
from promptopt_dagster.llm.remote import RetryPolicy, redact, retry_after_seconds
from promptopt_dagster.llm.usage import Price, UsageStats, from_json, from_rows, merge, price_for, to_json, total


def test_price_table_overrides_and_unknown_models():
    assert price_for("gemini", "gemini-2.5-flash") == Price(0.30, 2.50)
    assert price_for("openai", "gpt-4o-mini", input_per_mtok=1.0) == Price(1.0, 0.0)
    assert price_for("local", "gemma-3-270m-q4_k_m") == Price()
    assert price_for("openai", "my-finetune").known is False
    assert Price(0.30, 2.50).cost(1_000_000, 100_000) == pytest.approx(0.55)


def test_client_usage_counts_attempts_tokens_and_cost_but_not_cache_hits(tmp_path):
    client = build_client(
        ModelSettings(backend="fake", input_price_per_mtok=1e6, output_price_per_mtok=0.0),
        tmp_path,
        1,
        tmp_path / "cache.sqlite",
    )
    client.generate([LLMRequest(prompt="one two three")])
    client.generate([LLMRequest(prompt="one two three")])
    u = client.usage
    assert (u.llm_calls, u.requests, u.cache_hits, u.prompt_tokens) == (1, 1, 1, 3)
    assert u.cost_usd == pytest.approx(3.0)  # 3 prompt tokens at $1 each; the cache hit is free


def test_usage_from_prediction_rows_and_json_round_trip():
    rows = [
        {
            "model": "gemini/g",
            "cached": False,
            "attempts": 3,
            "error": None,
            "prompt_tokens": 10,
            "completion_tokens": 1,
            "cost_usd": 0.5,
        },
        {
            "model": "gemini/g",
            "cached": True,
            "attempts": 0,
            "error": None,
            "prompt_tokens": 10,
            "completion_tokens": 1,
            "cost_usd": 0.0,
        },
        {
            "model": "gemini/g",
            "cached": False,
            "attempts": 6,
            "error": "http_500: down",
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cost_usd": 0.0,
        },
        {
            "model": "openai/o",
            "cached": False,
            "attempts": 1,
            "error": float("nan"),
            "prompt_tokens": 4,
            "completion_tokens": 2,
            "cost_usd": 0.25,
        },
    ]
    by_model = from_rows(rows)
    assert by_model["gemini/g"] == UsageStats(
        llm_calls=2, requests=9, cache_hits=1, errors=1, prompt_tokens=10, completion_tokens=1, cost_usd=0.5
    )
    assert by_model["openai/o"].errors == 0  # NaN is how a stored "no error" comes back
    assert from_json(to_json(by_model)) == by_model
    both = merge(by_model, {"openai/o": UsageStats(requests=1)})
    assert both["openai/o"].requests == 2 and total(both).requests == 11


def test_retry_delay_is_jittered_capped_and_floored_by_retry_after():
    import random

    policy, rng = RetryPolicy(initial_backoff_s=1.0, max_backoff_s=8.0), random.Random(0)
    delays = [policy.delay(attempt, None, rng) for attempt in range(1, 8) for _ in range(50)]
    assert all(0 <= d <= 8.0 for d in delays) and len(set(delays)) > 300
    assert all(policy.delay(1, 5.0, rng) >= 5.0 for _ in range(20))
    assert policy.delay(1, 10_000, rng) == policy.max_retry_after_s
    assert retry_after_seconds({"retry-after": "7"}) == 7.0
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None


def test_redact_removes_every_occurrence():
    assert redact("key sk-abc123 and Bearer sk-abc123", ["sk-abc123", ""]) == "key [REDACTED] and Bearer [REDACTED]"


def test_token_bucket_waits_for_tokens_and_settles_to_actual_use():
    limiter = RateLimiter(tpm=6000)  # 100 tokens per second, bucket of 100

    async def scenario() -> float:
        await limiter.acquire(100)  # the full bucket
        started = time.monotonic()
        await limiter.acquire(50)  # must wait ~0.5 s for the refill
        return time.monotonic() - started

    waited = asyncio.run(scenario())
    assert 0.4 <= waited <= 0.9
    limiter.settle(estimated=50, actual=10)  # the reply used fewer tokens: 40 come back
    assert limiter._tokens.level >= 39


def test_progress_logs_at_a_steady_cadence_with_rate_eta_and_failures(caplog):
    caplog.set_level(logging.INFO, logger="promptopt.inference")
    progress = Progress(total=5, label="baseline sst2|0", interval_s=0.05)
    progress.advance()
    time.sleep(0.06)
    progress.advance(failed=True)
    progress.advance(cached=True)  # too soon after the last line: no line
    progress.advance()
    progress.advance()  # the last row always logs
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("baseline sst2|0: 2/5 rows (40%)") and "rows/s, ETA" in lines[0]
    assert lines[0].endswith("1 failed")
    assert lines[1].startswith("baseline sst2|0: 5/5 rows (100%)") and "1 cached, 1 failed" in lines[1]


def test_fake_llm_streams_in_order_and_generate_rejects_duplicates():
    client = FakeLLM(lambda r: r.prompt.upper())
    assert [r.text for r in client.generate([LLMRequest(prompt="a"), LLMRequest(prompt="b")])] == ["A", "B"]

    class Twice(FakeLLM):
        def _stream(self, requests):
            yield 0, super()._generate(requests)[0]
            yield 0, super()._generate(requests)[0]

    with pytest.raises(RuntimeError, match="answered request 0 twice"):
        Twice().generate([LLMRequest(prompt="a")])
