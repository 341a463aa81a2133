"""The leaderboard built from final reports: order, tie-break on cost, intervals, the text and the plot."""

import base64
import math

from promptopt_dagster.core.leaderboard import as_text, leaderboard, score_cost_plot


def report(name: str, generation: int, test: float, cost: float, interval=(0.0, 1.0), calls: int = 10) -> dict:
    return {"optimization": name, "generation": generation, "optimizer": "fewshot", "task_model": "fake/m",
            "metric": "accuracy", "best_test_score": test, "initial_test_score": 0.5, "best_dev_score": 0.8,
            "test_size": 100, "iterations": 2, "stop_reason": "patience", "fingerprint": "f",
            "test_intervals": {"best": list(interval) if interval else None},
            "usage": {"total": {"cost_usd": cost, "llm_calls": calls, "requests": calls}},
            "best_prompt": {"id": f"{name}-{generation}", "version": generation}}


def test_best_test_score_first_cheaper_first_on_a_tie_and_current_generations_marked():
    board = leaderboard("sst2", [report("a", 1, 0.80, 1.0), report("b", 1, 0.90, 2.0), report("c", 1, 0.90, 0.5),
                                 report("a", 2, 0.85, 1.0, interval=None)], current={"a": 2, "b": 1, "c": 1})
    assert list(zip(board["optimization"], board["generation"])) == [("c", 1), ("b", 1), ("a", 2), ("a", 1)]
    assert board["rank"].tolist() == [1, 2, 3, 4]
    assert board["current"].tolist() == [True, True, True, False]
    a2 = board[board["generation"] == 2].iloc[0]
    assert math.isnan(a2["test_low_95"]) and a2["prompt_id"] == "a-2"  # macro f1 and the like carry no interval
    text = as_text(board)
    assert text.splitlines()[2].split()[:2] == ["1", "c"] and "[0.000, 1.000]" in text and " 1 " in text


def test_an_empty_board_says_so_and_the_plot_is_a_png():
    assert "no optimization" in as_text(leaderboard("sst2", [], {}))
    board = leaderboard("sst2", [report("a", 1, 0.8, 0.0, calls=50), report("b", 1, 0.7, 0.0, calls=20)], {"a": 1})
    markdown = score_cost_plot(board)
    assert markdown.startswith("![score vs cost](data:image/png;base64,")
    assert base64.b64decode(markdown.split(",", 1)[1].rstrip(")"))[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_migration_is_ranked_apart_from_optimizations_scored_on_the_labels():
    migration = {**report("to_small", 1, 0.99, 0.1), "migration": {"source_model": "openai/big"}}
    board = leaderboard("sms_spam", [migration, report("a", 1, 0.80, 1.0), report("b", 1, 0.90, 2.0)],
                        current={"to_small": 1, "a": 1, "b": 1})
    # 0.99 agreement with a source model does not outrank 0.90 against the labels: they measure different things
    assert list(zip(board["optimization"], board["rank"], board["references"])) == [
        ("b", 1, "labels"), ("a", 2, "labels"), ("to_small", 1, "source openai/big")]
    text = as_text(board)
    assert "model migrations, scored as agreement with source openai/big (not the labels)" in text
    assert text.index("model migrations") > text.index(" b ")
