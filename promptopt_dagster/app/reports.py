"""Human-readable renderings of an iteration and of the final result (markdown for the Dagster UI)."""

from __future__ import annotations

import pandas as pd

from promptopt_dagster.app.plots import png_markdown
from promptopt_dagster.core.decisions import Decision

# the number helpers live in core/formatting.py (no pandas, for the CLI); re-exported for the report assets
from promptopt_dagster.core.formatting import (  # noqa: F401
    NO_CANDIDATE,
    fmt_dollars,
    fmt_interval,
    fmt_refined,
    fmt_score,
    fmt_signed,
    missing,
)
from promptopt_dagster.core.intervals import bootstrap_mean_interval
from promptopt_dagster.core.prompts import PromptVersion, unified_diff
from promptopt_dagster.optimizers.pool import cost_frontier


def comparison_markdown(
    metric: str,
    decision: Decision,
    baseline: PromptVersion,
    refined: PromptVersion,
    refined_note: str | None,
    scores: dict[str, dict[str, float] | None] | None = None,
) -> str:
    refined_score = fmt_refined(decision.refined_score)
    diff = unified_diff(baseline, refined) or "(no change)"
    lines = [
        f"### Iteration {decision.iteration}: {'accepted' if decision.accepted else 'rejected'}",
        "",
        "| prompt | version | id | " + metric + " |",
        "|---|---|---|---|",
        f"| baseline | v{baseline.version} | `{baseline.id}` | {fmt_score(decision.baseline_score)} |",
        f"| refined | v{refined.version} | `{refined.id}` | {refined_score} |",
        *(
            [
                "",
                f"**Gain on the {decision.gain.rows} confirm rows:** {fmt_signed(decision.gain.gain)}, "
                f"{decision.gain.confidence:.0%} interval {fmt_interval((decision.gain.low, decision.gain.high), True)} "
                "(paired bootstrap; accepted only when the whole interval is above min_improvement)",
            ]
            if decision.gain
            else []
        ),
        "",
        f"**Decision:** {decision.why}. Iterations without improvement: {decision.iterations_without_improvement}. "
        f"**Next:** {'stop (' + decision.stop_reason + ')' if decision.stop_reason else 'continue'}.",
    ]
    if scores and len(scores.get("baseline") or {}) > 2:  # several scorers: show each beside the aggregate
        names = list(scores["baseline"])
        lines += ["", "| prompt | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for which in ("baseline", "refined"):
            values = scores.get(which) or {}
            lines.append(f"| {which} | " + " | ".join(fmt_score(values.get(n)) for n in names) + " |")
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
        cells = [
            str(r["row_id"]),
            _cell(r["user_input"]),
            _cell(r["ground_truth_output"]),
            _cell(r["prediction"]),
            f"{r['score']:.2f}",
            *(f"{r[c]:.2f}" for c in scorers),
        ]
        if explained:
            cells.append(_cell(r.get("rationale"), 160))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(text, width: int | None = 80) -> str:
    """Text safe in a markdown table cell; clipped to `width` characters unless width is None."""
    text = "" if text is None or text is pd.NA or (isinstance(text, float) and pd.isna(text)) else str(text)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


def migration_markdown(migration: dict) -> str:
    """A model migration in the final report: agreement with the source before and after, the dataset's
    own labels where it has them, and what both models cost."""
    agreement, bounds = migration["agreement"], migration["agreement"]["intervals"]

    def score(value, interval=None) -> str:
        bounds = "" if missing(value) else fmt_interval(interval)
        return fmt_score(value) + (f" {bounds}" if bounds else "")

    lines = [
        f"### Migration from `{migration['source_model']}` to `{migration['task_model']}`",
        "",
        f"Agreement with the source model ({migration['metric']}) on {agreement['test_rows']} test rows, "
        "95% intervals:",
        "",
        "| prompt | agreement with the source |",
        "|---|---|",
        f"| before (initial prompt) | {score(agreement['before'], bounds.get('initial'))} |",
        f"| after (best prompt) | {score(agreement['after'], bounds.get('best'))} |",
    ]
    labels = migration.get("dataset_labels")
    if labels:
        lines += [
            "",
            f"Against the dataset's own labels ({labels['rows']} test rows): source "
            f"{score(labels['source'])}, before {score(labels['initial'])}, after {score(labels['best'])}.",
        ]
    lines += [
        "",
        "| model | role | calls | cached | tokens | cost | per 1,000 answers |",
        "|---|---|---|---|---|---|---|",
    ]
    cost, per = migration["cost"], migration["per_answer"]
    for role in ("source", "task"):
        c = cost[role]
        lines.append(
            f"| `{c['model']}` | {role} | {c['llm_calls']:,} | {c['cache_hits']:,} | "
            f"{c['prompt_tokens'] + c['completion_tokens']:,} | {fmt_dollars(c['cost_usd'])} | "
            f"{fmt_dollars(per[role].get('cost_usd_per_1k_answers'))} |"
        )
    for model, c in cost.get("other", {}).items():
        lines.append(
            f"| `{model}` | optimizer/judge | {c['llm_calls']:,} | {c['cache_hits']:,} | "
            f"{c['prompt_tokens'] + c['completion_tokens']:,} | {fmt_dollars(c['cost_usd'])} | |"
        )
    return "\n".join(lines)


def best_iteration(iterations: list[dict]) -> int | None:
    """The iteration whose refinement is the best prompt: the last accepted one (an accepted refinement becomes
    the next baseline, so nothing later beat it); None when none was accepted and the initial prompt is best."""
    accepted = [int(it["step"]) for it in iterations if it.get("accepted")]
    return accepted[-1] if accepted else None


def describe_demos(prompt: dict) -> str:
    """How many demos a prompt shows each input and where they come from: static (the same for every input,
    chosen by the optimizer) or retrieved (the k pool rows most similar to the input)."""
    static, retrieval = len(prompt.get("demos") or []), prompt.get("retrieval")
    ensemble = prompt.get("ensemble") or []
    parts = []
    if static:
        parts.append(
            f"{static} static demo{'s' if static != 1 else ''} (the same for every input"
            + (f"; {1 + len(ensemble)} demo sets, answers summed over them" if ensemble else "")
            + ")"
        )
    if retrieval:
        k = int(retrieval.get("k") or 0)
        parts.append(
            f"{k} retrieved demo{'s' if k != 1 else ''} per input ({retrieval.get('method', 'tfidf')}, "
            f"from a pool of {len(retrieval.get('pool') or [])} rows)"
        )
    return " + ".join(parts) if parts else "no demos (zero-shot)"


def describe_answer_mode(prompt: dict) -> str:
    """Free text, or one of the dataset's labels (the backend constrains or ranks the answer)."""
    labels = prompt.get("labels") or []
    if prompt.get("answer") == "label" and labels:
        shown = ", ".join(f"`{_cell(label, 40)}`" for label in labels[:12])
        more = f" and {len(labels) - 12} more" if len(labels) > 12 else ""
        return f"one label of {len(labels)} ({shown}{more})" + (", calibrated" if prompt.get("calibrate") else "")
    return "free text"


def summary_markdown(report: dict, iterations: list[dict], links: dict[str, str] | None = None) -> str:
    """The "Prompt Optimization Summary" of one optimization generation, as the seed design's artifact:
    the score of every iteration with its accept/reject mark, the best prompt (which iteration found it, its
    demos, its answer mode), why the loop stopped, spend.

    iterations: one dict per finished iteration (step, baseline_score, refined_score, accepted, best_score, why).
    links: name -> URL of a page of the Dagster UI (webserver_client.asset_partition_url), listed at the end.
    Every number goes through the fmt_* helpers; no cell is clipped (the UI wraps long text)."""
    total = report["usage"]["total"]
    paid = (report.get("paid") or {}).get("total") or total  # the usage ledger's figures (llm/ledger.py)
    intervals = report.get("test_intervals") or {}

    def bounds(which: str) -> str:
        text = fmt_interval(intervals.get(which))
        return f" {text}" if text else ""

    best = report["best_prompt"]
    found = best_iteration(iterations)
    where = (
        f"accepted in iteration {found}"
        if found is not None
        else "the initial prompt: no iteration's refinement was accepted"
    )
    lines = [
        f"## Prompt Optimization Summary: {report['optimization']} (generation {report['generation']})",
        "",
        f"Dataset `{report['dataset']}`, optimizer `{report['optimizer']}`, task model `{report['task_model']}`, "
        f"target `{report['metric']}`.",
        "",
        f"**Held-out test** ({report['test_size']} rows, never seen by the optimizer; 95% intervals): initial "
        f"{fmt_score(report['initial_test_score'])}{bounds('initial')} → best "
        f"{fmt_score(report['best_test_score'])}{bounds('best')}",
        "",
        f"**Best prompt:** v{best['version']} `{best['id']}`, {where}. Demos: {describe_demos(best)}. "
        f"Answer: {describe_answer_mode(best)}.",
        "",
        "| iteration | baseline (dev) | refined (dev) | decision | best so far | why |",
        "|---|---|---|---|---|---|",
    ]
    for it in iterations:
        mark = "✓ accepted" if it["accepted"] else "✗ rejected"
        mark += " (best prompt)" if found is not None and int(it["step"]) == found else ""
        lines.append(
            f"| {it['step']} | {fmt_score(it['baseline_score'])} | {fmt_refined(it.get('refined_score'))} | "
            f"{mark} | {fmt_score(it['best_score'])} | {_cell(it.get('why') or '', None)} |"
        )
    lines += [
        "",
        f"**Stopped:** {report.get('stop_reason') or 'not stopped'}",
        "",
        f"**Spend:** {paid['llm_calls']:,} model calls paid ({paid['requests']:,} requests, "
        f"{paid['prompt_tokens'] + paid['completion_tokens']:,} tokens, {fmt_dollars(paid['cost_usd'])}), every "
        f"run of this generation counted, canceled and killed ones too; {total['cache_hits']:,} answers from the "
        "cache",
        "",
        f"**Best prompt's text** (v{best['version']} `{best['id']}`; system prompt, then output prompt):",
        "",
        "```",
        best["system_prompt"],
        "---",
        best["output_prompt"],
        "```",
    ]
    if links:
        lines += ["", "**In the UI:** " + " · ".join(f"[{name}]({url})" for name, url in links.items())]
    return "\n".join(lines)


def score_plot(report: dict, iterations: list[dict]) -> str:
    """Dev score per iteration of this one optimization (baseline, refined with accept/reject marks, best so far),
    as markdown holding a PNG: the UI's own plots mix every partition of an asset."""
    steps = [it["step"] for it in iterations]

    def draw(ax) -> None:
        ax.plot(steps, [it["best_score"] for it in iterations], "-", color="tab:blue", label="best so far")
        ax.plot(steps, [it["baseline_score"] for it in iterations], "o", color="tab:gray", label="baseline")
        for accepted, marker, color, label in (
            (True, "^", "tab:green", "refined, accepted"),
            (False, "x", "tab:red", "refined, rejected"),
        ):
            pts = [
                (it["step"], it["refined_score"])
                for it in iterations
                if bool(it["accepted"]) == accepted
                and it.get("refined_score") is not None
                and it["refined_score"] == it["refined_score"]
            ]
            if pts:
                ax.plot(*zip(*pts), marker, color=color, label=label, linestyle="none")
        ax.axhline(
            report["best_test_score"],
            color="tab:purple",
            linestyle="--",
            linewidth=1,
            label=f"best on test ({fmt_score(report['best_test_score'])})",
        )
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"dev {report['metric']}")
        ax.set_xticks(steps)
        ax.set_title(f"{report['optimization']} g{report['generation']}: score per iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")

    return png_markdown(draw, "score per iteration", size=(6.4, 3.6))


def frontier_rows(pool: list, chosen_id: str | None, seed: int = 0) -> list[dict]:
    """The pool's quality-versus-cost frontier (optimizers/pool.py::cost_frontier) as report rows: each
    candidate's select score with its 95% interval, prompt tokens and seconds per row, and whether it is
    the prompt the optimization chose. Select scores are what the search saw, not test scores: the
    interval says how far apart two of them must be to mean anything."""
    rows = []
    for c in cost_frontier(pool):
        interval = bootstrap_mean_interval(list(c.scores.values()), c.select_score, seed=seed) if c.scores else None
        rows.append(
            {
                "candidate": c.id,
                "choices": c.prompt.describe(),
                "select_score": c.select_score,
                "select_interval": [interval.low, interval.high] if interval else None,
                "select_rows": len(c.scores),
                "tokens_per_row": c.cost.prompt_tokens,
                "seconds_per_row": c.cost.seconds,
                "chosen": c.id == chosen_id,
            }
        )
    return rows


def frontier_markdown(rows: list[dict]) -> str:
    if not rows:
        return "No candidate with a measured cost per row (an optimizer that keeps no candidate pool)."
    lines = [
        "Candidates that no other one beats on both select score and prompt tokens per row, cheapest first.",
        "",
        "| candidate | choices | select score [95%] | tokens/row | s/row | chosen |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        bounds = r["select_interval"]
        score = f"{r['select_score']:.3f}" + (f" [{bounds[0]:.3f}, {bounds[1]:.3f}]" if bounds else "")
        seconds = "-" if r["seconds_per_row"] is None else f"{r['seconds_per_row']:.2f}"
        lines.append(
            f"| `{r['candidate']}` | {_cell(r['choices'])} | {score} | {r['tokens_per_row']:.0f} | {seconds} "
            f"| {'yes' if r['chosen'] else ''} |"
        )
    return "\n".join(lines)
