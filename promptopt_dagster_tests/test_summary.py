"""The per-optimization summary and score plot that final_report shows in the UI."""

import base64

from promptopt_dagster.core.reports import score_plot, summary_markdown

REPORT = {"optimization": "sst2_gepa", "generation": 2, "dataset": "sst2", "optimizer": "gepa",
          "task_model": "openai/gpt-4o-mini", "metric": "accuracy", "test_size": 200,
          "initial_test_score": 0.61, "best_test_score": 0.8, "test_intervals": {"initial": [0.54, 0.68], "best": None},
          "stop_reason": "patience: 2 iterations without an accepted refinement",
          "usage": {"total": {"llm_calls": 1200, "cache_hits": 300, "requests": 1210, "prompt_tokens": 90000,
                              "completion_tokens": 1200, "cost_usd": 0.0123}},
          "best_prompt": {"id": "abc123", "version": 3, "demos": [{}, {}], "system_prompt": "Classify the review.",
                          "output_prompt": "Review: {user_input}\nSentiment:"}}
ITERATIONS = [
    {"step": 0, "baseline_score": 0.6, "refined_score": 0.75, "accepted": True, "best_score": 0.75, "why": "gain 0.15"},
    {"step": 1, "baseline_score": 0.75, "refined_score": 0.7, "accepted": False, "best_score": 0.75, "why": "worse"},
    {"step": 2, "baseline_score": 0.75, "refined_score": None, "accepted": False, "best_score": 0.75,
     "why": "no proposal | reply truncated"},
]


def test_the_summary_tells_the_story_of_one_optimization():
    text = summary_markdown(REPORT, ITERATIONS)
    assert text.startswith("## Prompt Optimization Summary: sst2_gepa (generation 2)")
    assert "initial 0.6100 [0.540, 0.680] → best 0.8000" in text  # no interval for the best: none printed
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert rows[0].startswith("| 0 | 0.6000 | 0.7500 | ✓ accepted | 0.7500 |")
    assert rows[1].split(" | ")[3] == "✗ rejected" and rows[2].split(" | ")[2] == "—"
    assert "no proposal \\| reply truncated" in rows[2]  # a pipe in the reason cannot break the table
    assert "**Stopped:** patience" in text and "1,200 model calls" in text and "$0.0123" in text
    assert "v3 `abc123` (2 demos)" in text and "Review: {user_input}" in text


def test_the_score_plot_is_a_png_of_this_optimization_only():
    markdown = score_plot(REPORT, ITERATIONS)
    assert markdown.startswith("![score per iteration](data:image/png;base64,")
    assert base64.b64decode(markdown.split(",", 1)[1].rstrip(")"))[:8] == b"\x89PNG\r\n\x1a\n"
