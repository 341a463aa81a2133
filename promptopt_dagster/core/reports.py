"""Human-readable renderings of an iteration and of the final result (markdown for the Dagster UI)."""

from __future__ import annotations

import pandas as pd

from promptopt_dagster.core.decisions import Decision
from promptopt_dagster.core.prompts import PromptVersion, unified_diff


def comparison_markdown(metric: str, decision: Decision, baseline: PromptVersion, refined: PromptVersion,
                        refined_note: str | None) -> str:
    refined_score = "n/a" if decision.refined_score is None else f"{decision.refined_score:.4f}"
    diff = unified_diff(baseline, refined) or "(no change)"
    lines = [
        f"### Iteration {decision.iteration}: {'accepted' if decision.accepted else 'rejected'}",
        "",
        "| prompt | version | id | " + metric + " |",
        "|---|---|---|---|",
        f"| baseline | v{baseline.version} | `{baseline.id}` | {decision.baseline_score:.4f} |",
        f"| refined | v{refined.version} | `{refined.id}` | {refined_score} |",
        "",
        f"**Decision:** {decision.why}. Iterations without improvement: {decision.iterations_without_improvement}. "
        f"**Next:** {'stop (' + decision.stop_reason + ')' if decision.stop_reason else 'continue'}.",
    ]
    if refined_note:
        lines += ["", f"**Optimizer note:** {refined_note}"]
    lines += ["", "#### Prompt diff", "```diff", diff, "```"]
    return "\n".join(lines)


def worst_rows_markdown(scored: pd.DataFrame, limit: int = 10) -> str:
    worst = scored.sort_values(["score", "row_id"]).head(limit)
    lines = ["| row | input | expected | answer | score |", "|---|---|---|---|---|"]
    for r in worst.itertuples():
        cells = [str(r.row_id), _cell(r.user_input), _cell(r.ground_truth_output), _cell(r.prediction), f"{r.score:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(text, width: int = 80) -> str:
    text = "" if text is None or (isinstance(text, float) and pd.isna(text)) else str(text)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"
