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


def summary_markdown(report: dict, iterations: list[dict]) -> str:
    """The "Prompt Optimization Summary" of one optimization generation, as the seed design's artifact:
    the score of every iteration with its accept/reject mark, the best prompt, why the loop stopped, spend.

    iterations: one dict per finished iteration (step, baseline_score, refined_score, accepted, best_score, why)."""
    total = report["usage"]["total"]
    intervals = report.get("test_intervals") or {}

    def bounds(which: str) -> str:
        b = intervals.get(which)
        return f" [{b[0]:.3f}, {b[1]:.3f}]" if b else ""

    lines = [f"## Prompt Optimization Summary: {report['optimization']} (generation {report['generation']})", "",
             f"Dataset `{report['dataset']}`, optimizer `{report['optimizer']}`, task model `{report['task_model']}`, "
             f"target `{report['metric']}`.", "",
             f"**Held-out test** ({report['test_size']} rows, never seen by the optimizer): initial "
             f"{report['initial_test_score']:.4f}{bounds('initial')} → best {report['best_test_score']:.4f}"
             f"{bounds('best')}", "",
             "| iteration | baseline (dev) | refined (dev) | decision | best so far | why |", "|---|---|---|---|---|---|"]
    for it in iterations:
        refined = it.get("refined_score")
        refined_text = "—" if refined is None or refined != refined else f"{refined:.4f}"
        mark = "✓ accepted" if it["accepted"] else "✗ rejected"
        lines.append(f"| {it['step']} | {it['baseline_score']:.4f} | {refined_text} | {mark} | {it['best_score']:.4f} | "
                     f"{_cell(it.get('why') or '', 70)} |")
    best = report["best_prompt"]
    lines += ["", f"**Stopped:** {report.get('stop_reason') or 'not stopped'}", "",
              f"**Spend:** {total['llm_calls']:,} model calls, {total['cache_hits']:,} cached answers, "
              f"{total['requests']:,} requests, {total['prompt_tokens'] + total['completion_tokens']:,} tokens, "
              f"${total['cost_usd']:.4f}", "",
              f"**Best prompt** v{best['version']} `{best['id']}` ({len(best.get('demos') or [])} demos):", "",
              "```", best["system_prompt"], "---", best["output_prompt"], "```"]
    return "\n".join(lines)


def score_plot(report: dict, iterations: list[dict]) -> str:
    """Dev score per iteration of this one optimization (baseline, refined with accept/reject marks, best so far),
    as markdown holding a PNG: the UI's own plots mix every partition of an asset."""
    from promptopt_dagster.core.plots import png_markdown

    steps = [it["step"] for it in iterations]

    def draw(ax) -> None:
        ax.plot(steps, [it["best_score"] for it in iterations], "-", color="tab:blue", label="best so far")
        ax.plot(steps, [it["baseline_score"] for it in iterations], "o", color="tab:gray", label="baseline")
        for accepted, marker, color, label in ((True, "^", "tab:green", "refined, accepted"),
                                               (False, "x", "tab:red", "refined, rejected")):
            pts = [(it["step"], it["refined_score"]) for it in iterations if bool(it["accepted"]) == accepted
                   and it.get("refined_score") is not None and it["refined_score"] == it["refined_score"]]
            if pts:
                ax.plot(*zip(*pts), marker, color=color, label=label, linestyle="none")
        ax.axhline(report["best_test_score"], color="tab:purple", linestyle="--", linewidth=1,
                   label=f"best on test ({report['best_test_score']:.3f})")
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"dev {report['metric']}")
        ax.set_xticks(steps)
        ax.set_title(f"{report['optimization']} g{report['generation']}: score per iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")

    return png_markdown(draw, "score per iteration", size=(6.4, 3.6))
