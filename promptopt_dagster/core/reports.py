"""Human-readable renderings of an iteration and of the final result (markdown for the Dagster UI)."""

from __future__ import annotations

import pandas as pd

from promptopt_dagster.core.decisions import Decision
from promptopt_dagster.core.prompts import PromptVersion, unified_diff


def comparison_markdown(metric: str, decision: Decision, baseline: PromptVersion, refined: PromptVersion,
                        refined_note: str | None, scores: dict[str, dict[str, float] | None] | None = None) -> str:
    refined_score = "n/a" if decision.refined_score is None else f"{decision.refined_score:.4f}"
    diff = unified_diff(baseline, refined) or "(no change)"
    lines = [
        f"### Iteration {decision.iteration}: {'accepted' if decision.accepted else 'rejected'}",
        "",
        "| prompt | version | id | " + metric + " |",
        "|---|---|---|---|",
        f"| baseline | v{baseline.version} | `{baseline.id}` | {decision.baseline_score:.4f} |",
        f"| refined | v{refined.version} | `{refined.id}` | {refined_score} |",
        *([f"", f"**Gain on the {decision.gain.rows} confirm rows:** {decision.gain.gain:+.4f}, "
           f"{decision.gain.confidence:.0%} interval [{decision.gain.low:+.4f}, {decision.gain.high:+.4f}] "
           "(paired bootstrap; accepted only when the whole interval is above min_improvement)"]
          if decision.gain else []),
        "",
        f"**Decision:** {decision.why}. Iterations without improvement: {decision.iterations_without_improvement}. "
        f"**Next:** {'stop (' + decision.stop_reason + ')' if decision.stop_reason else 'continue'}.",
    ]
    if scores and len(scores.get("baseline") or {}) > 2:  # several scorers: show each beside the aggregate
        names = list(scores["baseline"])
        lines += ["", "| prompt | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for which in ("baseline", "refined"):
            values = scores.get(which) or {}
            lines.append(f"| {which} | " + " | ".join(f"{values[n]:.4f}" if n in values else "n/a" for n in names) + " |")
    if refined_note:
        lines += ["", f"**Optimizer note:** {refined_note}"]
    lines += ["", "#### Prompt diff", "```diff", diff, "```"]
    return "\n".join(lines)


def worst_rows_markdown(scored: pd.DataFrame, scorers: list[str] | None = None, limit: int = 10) -> str:
    """The lowest-scored rows first (by the target `score`), with every scorer's score and the judge's why."""
    worst = scored.sort_values(["score", "row_id"], kind="stable").head(limit)
    scorers = [c for c in (scorers or []) if c in scored.columns]
    explained = "rationale" in scored.columns and scored["rationale"].notna().any()
    head = ["row", "input", "expected", "answer", "score", *scorers, *(["rationale"] if explained else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in worst.to_dict("records"):
        cells = [str(r["row_id"]), _cell(r["user_input"]), _cell(r["ground_truth_output"]), _cell(r["prediction"]),
                 f"{r['score']:.2f}", *(f"{r[c]:.2f}" for c in scorers)]
        if explained:
            cells.append(_cell(r.get("rationale"), 160))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(text, width: int = 80) -> str:
    text = "" if text is None or text is pd.NA or (isinstance(text, float) and pd.isna(text)) else str(text)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def migration_markdown(migration: dict) -> str:
    """A model migration in the final report: agreement with the source before and after, the dataset's
    own labels where it has them, and what both models cost."""
    agreement, bounds = migration["agreement"], migration["agreement"]["intervals"]

    def score(value, interval=None) -> str:
        if value is None:
            return "n/a"
        return f"{value:.4f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")

    lines = [f"### Migration from `{migration['source_model']}` to `{migration['task_model']}`", "",
             f"Agreement with the source model ({migration['metric']}) on {agreement['test_rows']} test rows, "
             "95% intervals:", "",
             "| prompt | agreement with the source |", "|---|---|",
             f"| before (initial prompt) | {score(agreement['before'], bounds.get('initial'))} |",
             f"| after (best prompt) | {score(agreement['after'], bounds.get('best'))} |"]
    labels = migration.get("dataset_labels")
    if labels:
        lines += ["", f"Against the dataset's own labels ({labels['rows']} test rows): source "
                      f"{score(labels['source'])}, before {score(labels['initial'])}, after {score(labels['best'])}."]
    lines += ["", "| model | role | calls | cached | tokens | cost (USD) | per 1,000 answers (USD) |",
              "|---|---|---|---|---|---|---|"]
    cost, per = migration["cost"], migration["per_answer"]
    for role in ("source", "task"):
        c = cost[role]
        lines.append(f"| `{c['model']}` | {role} | {c['llm_calls']:,} | {c['cache_hits']:,} | "
                     f"{c['prompt_tokens'] + c['completion_tokens']:,} | {c['cost_usd']:.4f} | "
                     f"{per[role].get('cost_usd_per_1k_answers', float('nan')):.4f} |")
    for model, c in cost.get("other", {}).items():
        lines.append(f"| `{model}` | optimizer/judge | {c['llm_calls']:,} | {c['cache_hits']:,} | "
                     f"{c['prompt_tokens'] + c['completion_tokens']:,} | {c['cost_usd']:.4f} | |")
    return "\n".join(lines)
