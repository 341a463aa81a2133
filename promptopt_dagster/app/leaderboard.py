"""A dataset's leaderboard: every optimization of it (and each of its generations) side by side.

Built from the final reports alone, so it compares what was measured on held-out test rows, with the
intervals, next to what each result cost. The plot is matplotlib (PNG), because Dagster's UI shows
an image in markdown metadata but has no chart type of its own for one point per optimization.

A model migration scores agreement with its source model, not the dataset's labels: the two numbers
are not comparable, so each set of references is ranked on its own (the dataset's labels first).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

import pandas as pd

COLUMNS = {
    "dataset": "string",
    "rank": "int64",
    "optimization": "string",
    "generation": "int64",
    "current": "bool",
    "optimizer": "string",
    "task_model": "string",
    "metric": "string",
    "best_test_score": "float64",
    "test_low_95": "float64",
    "test_high_95": "float64",
    "initial_test_score": "float64",
    "best_dev_score": "float64",
    "test_size": "int64",
    "cost_usd": "float64",
    "llm_calls": "int64",
    "requests": "int64",
    "iterations": "int64",
    "stop_reason": "string",
    "prompt_id": "string",
    "prompt_version": "int64",
    "fingerprint": "string",
    # "labels", or "source <model>" for a migration: ranks restart per value. Last (then the columns added
    # after it), because the warehouse appends a new column to a table stored by an earlier version and rows
    # are inserted by position.
    "references": "string",
    # Answers the optimization used, from the model or the cache alike: what its settings cost intrinsically,
    # whoever paid for them. cost_usd, llm_calls and requests above are what it paid (the usage ledger).
    "answers": "int64",
    # What the best prompt costs a row on the test rows (the report's cost_per_row): what a user pays for the
    # score in every later call. NaN for reports written before it was measured.
    "tokens_per_row": "float64",
    "seconds_per_row": "float64",
}


def _bound(report: dict, end: int) -> float:
    interval = (report.get("test_intervals") or {}).get("best")
    return float(interval[end]) if interval else math.nan


def leaderboard(dataset: str, reports: Iterable[dict], current: dict[str, int]) -> pd.DataFrame:
    """One row per (optimization, generation) report, best test score first (fewer answers first on a tie).

    current: each optimization's current generation; other generations stay listed, marked not current.
    cost_usd, llm_calls and requests are what the generation paid, every run counted (the report's "paid",
    from the usage ledger; a report written before the ledger existed gives its per-asset usage)."""
    rows = []
    for report in reports:
        total = report["usage"]["total"]
        paid = (report.get("paid") or {}).get("total") or total
        rows.append(
            {
                "dataset": dataset,
                "rank": 0,
                "optimization": report["optimization"],
                "generation": int(report["generation"]),
                "current": current.get(report["optimization"]) == int(report["generation"]),
                "optimizer": report.get("optimizer") or "",
                "task_model": report.get("task_model") or "",
                "metric": report["metric"],
                "references": references_of(report),
                "best_test_score": float(report["best_test_score"]),
                "test_low_95": _bound(report, 0),
                "test_high_95": _bound(report, 1),
                "initial_test_score": float(report["initial_test_score"]),
                "best_dev_score": float(report["best_dev_score"]),
                "test_size": int(report["test_size"]),
                "cost_usd": float(paid["cost_usd"]),
                "llm_calls": int(paid["llm_calls"]),
                "requests": int(paid["requests"]),
                "answers": int(total["llm_calls"]) + int(total.get("cache_hits", 0)),
                "iterations": int(report["iterations"]),
                "stop_reason": report.get("stop_reason") or "",
                "prompt_id": report["best_prompt"]["id"],
                "prompt_version": int(report["best_prompt"]["version"]),
                "fingerprint": report.get("fingerprint") or "",
                **_best_cost(report),
            }
        )
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["_migration"] = frame["references"] != LABELS
    # A tie on the score goes to the optimization that needed fewer answers, cached or not. Not to the one that
    # paid less: what an optimization pays depends on whose cache it found (a second optimization of the same
    # rows and model pays nothing for answers the first one bought), not on what its settings cost.
    frame = frame.sort_values(
        ["_migration", "references", "best_test_score", "answers", "optimization", "generation"],
        ascending=[True, True, False, True, True, False],
        kind="stable",
    ).reset_index(drop=True)
    frame["rank"] = frame.groupby("references", sort=False).cumcount() + 1
    return frame.drop(columns="_migration").astype(COLUMNS)


LABELS = "labels"


def _best_cost(report: dict) -> dict[str, float]:
    cost = (report.get("cost_per_row") or {}).get("best") or {}
    seconds = cost.get("seconds")
    return {
        "tokens_per_row": float(cost.get("prompt_tokens", float("nan"))),
        "seconds_per_row": float("nan") if seconds is None else float(seconds),
    }


def references_of(report: dict) -> str:
    """What the report's test score measures agreement with: the dataset's labels, or a migration's source."""
    migration = report.get("migration")
    return f"source {migration['source_model']}" if migration else LABELS


def from_report_rows(dataset: str, final_reports: pd.DataFrame, current: dict[str, int]) -> pd.DataFrame:
    """The leaderboard of the `final_report` table's rows (one per optimization and generation)."""
    reports = [json.loads(text) for text in final_reports.get("report_json", pd.Series(dtype=str))]
    return leaderboard(dataset, reports, current)


def _tokens(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}"


def _interval(row) -> str:
    return "" if math.isnan(row.test_low_95) else f" [{row.test_low_95:.3f}, {row.test_high_95:.3f}]"


def as_text(frame: pd.DataFrame) -> str:
    """The table `promptopt leaderboard` prints."""
    if frame.empty:
        return "no optimization of this dataset has a final report yet"
    metric, size = frame.iloc[0]["metric"], int(frame["test_size"].max())
    lines = [
        f"{frame.iloc[0]['dataset']}: {metric} on up to {size} held-out test rows (95% interval); "
        "* marks each optimization's current generation",
        f"{'#':>2}  {'optimization':<20} {'gen':>3}  {'optimizer':<10} {'task model':<28} "
        f"{'test':<22} {'dev':>6}  {'initial':>7}  {'tok/row':>7}  {'cost $':>8} {'calls':>7} {'iter':>4}  "
        "stop / prompt",
    ]
    for row in frame.itertuples():
        if row.references != LABELS and row.rank == 1:
            lines.append(f"-- model migrations, scored as agreement with {row.references} (not the labels) --")
        test = f"{row.best_test_score:.4f}{_interval(row)}"
        lines.append(
            f"{row.rank:>2}  {row.optimization:<20} {row.generation:>2}{'*' if row.current else ' '}  "
            f"{row.optimizer:<10} {row.task_model[:28]:<28} {test:<22} {row.best_dev_score:>6.4f}  "
            f"{row.initial_test_score:>7.4f}  {_tokens(row.tokens_per_row):>7}  {row.cost_usd:>8.4f} {row.llm_calls:>7,} {row.iterations:>4}  "
            f"{row.stop_reason}; v{row.prompt_version} {row.prompt_id}"
        )
    return "\n".join(lines)
