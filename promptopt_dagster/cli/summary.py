"""The lines `promptopt optimize` prints at the end of a run (the full report is one flag away: --json)."""

from __future__ import annotations

from pathlib import Path

from promptopt_dagster.core.formatting import fmt_interval, fmt_score
from promptopt_dagster.core.prompts import PromptVersion


def summary_text(optimization: str, report: dict, this_run: dict, best_path: Path, rank: str) -> str:
    """A few lines a person reads at the end of a run; the full report is one flag away."""
    paid = (report.get("paid") or {}).get("total") or report["usage"]["total"]  # the usage ledger's figures
    best = report["best_prompt"]
    bounds = report.get("test_intervals", {})

    def score(name: str) -> str:
        interval = bounds.get(name)
        return fmt_score(report[name + "_test_score"]) + (f" {fmt_interval(interval)}" if interval else "")

    lines = [
        f"[{optimization}] {report['metric']} on {report['test_size']} held-out test rows (95% interval): "
        f"initial {score('initial')} -> best {score('best')}",
        f"  dev, {report['eval_size'] or 'all'} confirm rows: {report['initial_dev_score']:.4f} -> "
        f"{report['best_dev_score']:.4f} after {report['iterations']} iteration(s); stopped: {report['stop_reason']}",
        f"  model calls this run: {this_run['llm_calls']:,} ({this_run['cache_hits']:,} answers from the cache); "
        f"whole optimization: {paid['llm_calls']:,} paid calls, {paid['requests']:,} requests, "
        f"${paid['cost_usd']:.4f} (every run counted, interrupted ones too)",
        *(_migration_lines(report["migration"]) if report.get("migration") else []),
        f"  best prompt: v{best['version']} ({PromptVersion.model_validate(best).describe()}), written to {best_path}",
        f"  report: final_report[{optimization}] in the Dagster UI (`promptopt ui`); "
        "the JSON with --json or --report-json PATH",
        f"  leaderboard of {report['dataset']}: rank {rank} (`promptopt leaderboard {report['dataset']}`)",
    ]
    return "\n".join(lines)


def _migration_lines(migration: dict) -> list[str]:
    agreement, bounds = migration["agreement"], migration["agreement"]["intervals"]

    def score(value, interval) -> str:
        return fmt_score(value) + (f" {fmt_interval(interval)}" if interval else "")

    cost, per = migration["cost"], migration["per_answer"]
    lines = [
        f"  migration from {migration['source_model']}: agreement with its answers on {agreement['test_rows']} "
        f"test rows: before {score(agreement['before'], bounds.get('initial'))} -> after "
        f"{score(agreement['after'], bounds.get('best'))}"
    ]
    labels = migration.get("dataset_labels")
    if labels:
        lines.append(
            f"  the dataset's own labels ({labels['rows']} test rows): source {labels['source']:.4f}, "
            f"before {labels['initial']:.4f}, after {labels['best']:.4f}"
        )
    lines.append(
        "  cost: "
        + "; ".join(
            f"{role} {cost[role]['model']} {cost[role]['llm_calls']:,} calls + {cost[role]['cache_hits']:,} cached, "
            f"${cost[role]['cost_usd']:.4f} (${per[role].get('cost_usd_per_1k_answers', 0.0):.4f} per 1,000 answers)"
            for role in ("source", "task")
        )
    )
    return lines
