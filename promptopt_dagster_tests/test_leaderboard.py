"""The leaderboard built from final reports: order, tie-break on answers used, intervals, the text and the plot."""

import base64
import math

from promptopt_dagster.app.leaderboard import as_text, leaderboard
from promptopt_dagster.app.plots import score_cost_plot


def report(name: str, generation: int, test: float, cost: float, interval=(0.0, 1.0), calls: int = 10) -> dict:
    return {
        "optimization": name,
        "generation": generation,
        "optimizer": "fewshot",
        "task_model": "fake/m",
        "metric": "accuracy",
        "best_test_score": test,
        "initial_test_score": 0.5,
        "best_dev_score": 0.8,
        "test_size": 100,
        "iterations": 2,
        "stop_reason": "patience",
        "fingerprint": "f",
        "test_intervals": {"best": list(interval) if interval else None},
        "usage": {"total": {"cost_usd": cost, "llm_calls": calls, "requests": calls}},
        "best_prompt": {"id": f"{name}-{generation}", "version": generation},
    }


def test_best_test_score_first_fewer_answers_first_on_a_tie_and_current_generations_marked():
    # c paid more than b, but used fewer answers: what was paid depends on whose cache an optimization found
    board = leaderboard(
        "sst2",
        [
            report("a", 1, 0.80, 1.0),
            report("b", 1, 0.90, 0.5),
            report("c", 1, 0.90, 2.0, calls=5),
            report("a", 2, 0.85, 1.0, interval=None),
        ],
        current={"a": 2, "b": 1, "c": 1},
    )
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
    board = leaderboard(
        "sms_spam",
        [migration, report("a", 1, 0.80, 1.0), report("b", 1, 0.90, 2.0)],
        current={"to_small": 1, "a": 1, "b": 1},
    )
    # 0.99 agreement with a source model does not outrank 0.90 against the labels: they measure different things
    assert list(zip(board["optimization"], board["rank"], board["references"])) == [
        ("b", 1, "labels"),
        ("a", 2, "labels"),
        ("to_small", 1, "source openai/big"),
    ]
    text = as_text(board)
    assert "model migrations, scored as agreement with source openai/big (not the labels)" in text
    assert text.index("model migrations") > text.index(" b ")


def test_the_ui_table_is_narrow_and_every_column_is_in_the_json_entry():
    """All 16 columns in one table were cut off after test_low_95 by the asset page's metadata column (no
    visible scrollbar): the table keeps what ranks and tells apart, the JSON entry every column."""
    from promptopt_dagster.defs.reporting.assets import BOARD_TABLE, board_metadata

    migration = {**report("to_small", 1, 0.99, 0.1), "migration": {"source_model": "openai/big"}}
    board = leaderboard(
        "sst2",
        [
            report("a", 1, 0.80, 0.012345678, interval=(0.74749999999999872, 0.85)),
            report("a", 2, 0.85, 1.0, interval=None),
            migration,
        ],
        {"a": 2, "to_small": 1},
    )
    shown = board_metadata(board)
    table = shown["leaderboard"].value
    names = [c.name for c in table.schema.columns]
    assert names == [n for n, _, _ in BOARD_TABLE] + ["scored against"] and len(names) <= 5
    rows = {r.data["optimization"]: r.data for r in table.records}
    assert rows["a g1"] == {
        "#": 2,
        "optimization": "a g1",
        "test": "0.8000 [0.7475, 0.8500]",
        "cost": "$0.0123, 10 calls",
        "scored against": "labels",
    }
    assert rows["a g2*"]["test"] == "0.8500" and rows["to_small g1*"]["scored against"] == "source openai/big"
    every = shown["leaderboard_json"].value
    assert len(every) == 3 and all(set(row) == set(board.columns) for row in every)  # every column, every row
    a1 = next(r for r in every if r["optimization"] == "a" and r["generation"] == 1)
    assert a1["test_low_95"] == 0.7475 and a1["cost_usd"] == 0.012346 and a1["stop_reason"] == "patience"
    assert next(r for r in every if r["generation"] == 2)["test_low_95"] is None  # NaN is null in JSON
    assert "leaderboard_json" not in board_metadata(leaderboard("sst2", [], {}))


def test_the_plots_labels_do_not_overlap_even_when_points_coincide():
    """Eight optimizations at one cost and nearly one score (cache hits, no price): each label goes where
    no other label is. Measured on the drawn figure, as pixel boxes of the labels' text."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from promptopt_dagster.app.plots import draw_score_cost, label_boxes

    names = [
        "sst2",
        "sst2_quick",
        "sst2_gepa_openai",
        "sst2_fewshot",
        "sst2_metaprompt",
        "sst2_long_name_x",
        "sst2_b",
        "sst2_c",
    ]
    board = leaderboard(
        "sst2",
        [report(n, 1, 0.80 + 0.001 * (i % 3), 0.0, interval=(0.7, 0.9), calls=40) for i, n in enumerate(names)],
        {n: 1 for n in names},
    )
    fig, ax = plt.subplots(figsize=(7.2, 4.8), dpi=100)
    try:
        draw_score_cost(ax, board)
        fig.tight_layout()  # what png_markdown does after drawing: the labels must stay where they were placed
        fig.canvas.draw()
        boxes = label_boxes(ax)
        assert len(boxes) == len(names)
        overlapping = [
            (i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])
        ]
        assert overlapping == []
        frame = fig.bbox
        assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
    finally:
        plt.close(fig)
