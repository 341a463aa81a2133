"""The per-optimization summary and score plot that final_report shows in the UI."""

import base64
import logging
import math
import re

from promptopt_dagster.app.reports import (
    best_iteration,
    fmt_dollars,
    fmt_interval,
    fmt_refined,
    fmt_score,
    fmt_signed,
    score_plot,
    summary_markdown,
)
from promptopt_dagster.defs.metadata import rounded, usage_metadata
from promptopt_dagster.defs.reporting.assets import summary_links
from promptopt_dagster.defs.webserver_client import asset_partition_url
from promptopt_dagster.llm.usage import UsageStats

REPORT = {
    "optimization": "sst2_gepa",
    "generation": 2,
    "dataset": "sst2",
    "optimizer": "gepa",
    "task_model": "openai/gpt-4o-mini",
    "metric": "accuracy",
    "test_size": 200,
    "initial_test_score": 0.61,
    "best_test_score": 0.8,
    "test_intervals": {"initial": [0.54, 0.68], "best": None},
    "stop_reason": "patience: 2 iterations without an accepted refinement",
    "usage": {
        "total": {
            "llm_calls": 1200,
            "cache_hits": 300,
            "requests": 1210,
            "prompt_tokens": 90000,
            "completion_tokens": 1200,
            "cost_usd": 0.0123,
        }
    },
    "best_prompt": {
        "id": "abc123",
        "version": 3,
        "demos": [{}, {}],
        "system_prompt": "Classify the review.",
        "output_prompt": "Review: {user_input}\nSentiment:",
    },
}
ITERATIONS = [
    {"step": 0, "baseline_score": 0.6, "refined_score": 0.75, "accepted": True, "best_score": 0.75, "why": "gain 0.15"},
    {"step": 1, "baseline_score": 0.75, "refined_score": 0.7, "accepted": False, "best_score": 0.75, "why": "worse"},
    {
        "step": 2,
        "baseline_score": 0.75,
        "refined_score": None,
        "accepted": False,
        "best_score": 0.75,
        "why": "no proposal | reply truncated",
    },
]


def test_the_summary_tells_the_story_of_one_optimization():
    text = summary_markdown(REPORT, ITERATIONS)
    assert text.startswith("## Prompt Optimization Summary: sst2_gepa (generation 2)")
    assert "initial 0.6100 [0.5400, 0.6800] → best 0.8000" in text  # no interval for the best: none printed
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert rows[0].startswith("| 0 | 0.6000 | 0.7500 | ✓ accepted (best prompt) | 0.7500 |")
    assert rows[1].split(" | ")[3] == "✗ rejected" and rows[2].split(" | ")[2] == "no candidate survived"
    assert "no proposal \\| reply truncated" in rows[2]  # a pipe in the reason cannot break the table
    assert "**Stopped:** patience" in text and re.search(r"1,200 (paid )?model calls", text) and "$0.0123" in text
    assert "**Best prompt:** v3 `abc123`, accepted in iteration 0. Demos: 2 static demos" in text
    assert "Answer: free text." in text and "Review: {user_input}" in text


# what issue 22 saw: a float's binary noise, and a why clipped at 70 characters in the middle of its interval
WHY = "accepted: refined 0.8125 > baseline 0.5650 (gain +0.2475 [+0.1850, +0.3100] (90% paired bootstrap, 200 rows))"
NOISY = [
    {"step": 0, "baseline_score": 0.565, "refined_score": 0.8125, "accepted": True, "best_score": 0.8125, "why": WHY},
    {
        "step": 1,
        "baseline_score": 0.8125,
        "refined_score": 0.24749999999999872,
        "accepted": False,
        "best_score": 0.8125,
        "why": "rejected: refined 0.2475 does not beat baseline 0.8125",
    },
    {
        "step": 2,
        "baseline_score": 0.8125,
        "refined_score": float("nan"),
        "accepted": False,
        "best_score": 0.8125,
        "why": "rejected: the optimizer proposed nothing",
    },
]


def test_no_number_prints_its_binary_noise_and_no_why_or_interval_is_clipped():
    report = {
        **REPORT,
        "initial_test_score": 0.56499999999999995,
        "best_test_score": 0.81250000000000011,
        "test_intervals": {
            "initial": [0.49749999999999872, 0.63250000000000006],
            "best": [0.75999999999999995, 0.86500000000000021],
        },
        "usage": {"total": {**REPORT["usage"]["total"], "cost_usd": 0.012345678}},
    }
    text = summary_markdown(report, NOISY)
    assert "…" not in text and "..." not in text
    assert WHY.replace("|", "\\|") in text  # the whole why, its interval included
    assert "initial 0.5650 [0.4975, 0.6325] → best 0.8125 [0.7600, 0.8650]" in text
    assert "$0.0123" in text and "0.012345678" not in text
    assert "| 1 | 0.8125 | 0.2475 | ✗ rejected |" in text
    assert "| 2 | 0.8125 | no candidate survived | ✗ rejected |" in text and "nan" not in text
    # every decimal number in the summary has exactly 4 decimals (scores, bounds, dollars)
    assert {len(d) for d in re.findall(r"\d\.(\d+)", text)} == {4}


def test_the_helpers_format_scores_gains_intervals_and_dollars_one_way():
    assert fmt_score(0.24749999999999872) == "0.2475" and fmt_score(None) == "n/a" and fmt_score(math.nan) == "n/a"
    assert fmt_signed(0.24749999999999872) == "+0.2475" and fmt_signed(-0.01) == "-0.0100"
    assert fmt_interval([0.24749999999999872, 0.31]) == "[0.2475, 0.3100]"
    assert fmt_interval([0.24749999999999872, 0.31], signed=True) == "[+0.2475, +0.3100]"
    assert fmt_interval(None) == "" and fmt_interval([math.nan, math.nan]) == ""
    assert fmt_dollars(0.012345) == "$0.0123" and fmt_refined(math.nan) == "no candidate survived"


def test_the_summary_names_the_best_prompts_iteration_demos_and_answer_mode():
    retrieved = {
        **REPORT["best_prompt"],
        "demos": [{}],
        "answer": "label",
        "labels": ["negative", "positive"],
        "retrieval": {"k": 4, "method": "bm25", "pool": [{}] * 50},
    }
    text = summary_markdown({**REPORT, "best_prompt": retrieved}, NOISY)
    assert "accepted in iteration 0." in text
    assert (
        "Demos: 1 static demo (the same for every input) + 4 retrieved demos per input (bm25, from a pool of "
        "50 rows)." in text
    )
    assert "Answer: one label of 2 (`negative`, `positive`)." in text
    zero_shot = {**REPORT["best_prompt"], "demos": []}
    rejected = [{**it, "accepted": False} for it in NOISY]
    text = summary_markdown({**REPORT, "best_prompt": zero_shot}, rejected)
    assert "the initial prompt: no iteration's refinement was accepted" in text
    assert "Demos: no demos (zero-shot)." in text and "(best prompt)" not in text
    assert best_iteration(ITERATIONS) == 0 and best_iteration(rejected) is None
    assert (
        best_iteration([{"step": 0, "accepted": True}, {"step": 1, "accepted": False}, {"step": 2, "accepted": True}])
        == 2
    )  # an accepted refinement is the next baseline


def test_the_summary_links_go_to_the_partitions_own_page():
    """The asset's overview (/assets/final_report?partition=X) shows the newest materialization of any
    partition; the Partitions tab with the partition selected shows that partition's own."""
    assert (
        asset_partition_url("final_report", "sst2_gepa") == "/assets/final_report?view=partitions&partition=sst2_gepa"
    )
    assert (
        asset_partition_url("comparison_report", "g2-i0|sst2 gepa", "http://127.0.0.1:3000/")
        == "http://127.0.0.1:3000/assets/comparison_report?view=partitions&partition=g2-i0%7Csst2%20gepa"
    )
    links = summary_links({**REPORT, "dataset": "sst2"}, ITERATIONS)
    assert links["this final report"].endswith("/assets/final_report?view=partitions&partition=sst2_gepa")
    assert links["iteration 0, where the best prompt was accepted"].endswith(
        "/assets/comparison_report?view=partitions&partition=g2-i0%7Csst2_gepa"
    )
    assert links["the best prompt"].endswith("/assets/best_prompt?view=partitions&partition=g2-i2%7Csst2_gepa")
    text = summary_markdown(REPORT, ITERATIONS, links)
    assert "[this final report](" + links["this final report"] + ")" in text
    assert "?partition=" not in text


def test_usage_metadata_leaves_out_a_model_that_was_never_used():
    """An OpenAI run listed the embedded default judge's client (built, never called) as all zeros."""
    by_model = {
        "openai/gpt-4o-mini": UsageStats(llm_calls=3, requests=3, prompt_tokens=30, cost_usd=0.001),
        "local/gemma-3-270m-it": UsageStats(),
        "fake/cached": UsageStats(cache_hits=2),
    }
    shown = usage_metadata(by_model)["usage_by_model"].value
    assert set(shown) == {"openai/gpt-4o-mini", "fake/cached"}  # cache hits alone are use
    assert usage_metadata(by_model)["llm_calls"].value == 3
    assert rounded(0.24749999999999872).value == 0.2475 and math.isnan(rounded(math.nan).value)


def test_no_price_known_is_said_once_per_model_per_process(caplog, tmp_path):
    from promptopt_dagster.llm import factory

    factory._UNPRICED_WARNED.discard("openai/unpriced-once")
    settings = factory.ModelSettings(backend="openai", model="unpriced-once", base_url="http://127.0.0.1:9/v1")
    with caplog.at_level(logging.WARNING, logger="promptopt.llm"):
        for _ in range(3):  # a run builds a client per resource and asset: no call is made here
            factory.build_client(settings, tmp_path, 1, None, api_key="sk-test")
    assert sum("no price known for openai/unpriced-once" in r.getMessage() for r in caplog.records) == 1


def test_the_score_plot_is_a_png_of_this_optimization_only():
    markdown = score_plot(REPORT, ITERATIONS)
    assert markdown.startswith("![score per iteration](data:image/png;base64,")
    assert base64.b64decode(markdown.split(",", 1)[1].rstrip(")"))[:8] == b"\x89PNG\r\n\x1a\n"
