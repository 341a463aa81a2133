"""Quality gates as plain functions; the Dagster layer turns each result into an asset check.

They re-check what was actually stored, so a gate still holds if a loader or backend changes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from promptopt_dagster.app.datasets import COLUMNS, SPLITS, data_row_numbers
from promptopt_dagster.core.prompts import PromptVersion, prompt_problem
from promptopt_dagster.core.text_spans import squash, verbatim_span_rows


@dataclass(frozen=True)
class GateResult:
    passed: bool
    message: str
    details: dict[str, Any] = field(default_factory=dict)


def dataset_gate(frame: pd.DataFrame) -> GateResult:
    missing = [c for c in ("split", "row_id", *COLUMNS) if c not in frame.columns]
    if missing:
        return GateResult(False, f"missing columns {missing}")
    counts = {s: int((frame["split"] == s).sum()) for s in SPLITS}
    empty = [s for s, n in counts.items() if n == 0]
    if empty:
        return GateResult(False, f"empty split(s) {empty}", counts)
    by_split = {s: set(frame.loc[frame["split"] == s, "user_input"]) for s in SPLITS}
    overlaps = {f"{a}&{b}": len(by_split[a] & by_split[b]) for i, a in enumerate(SPLITS) for b in SPLITS[i + 1 :]}
    if any(overlaps.values()):
        return GateResult(False, f"splits share inputs: {overlaps}", {**counts, **overlaps})
    return GateResult(True, "schema ok, splits non-empty and disjoint", {**counts, **overlaps})


def predictions_gate(
    predictions: pd.DataFrame, expected_row_ids: Iterable[int], max_failed_fraction: float
) -> GateResult:
    expected = set(expected_row_ids)
    got = predictions["row_id"].tolist()
    if not got and not expected:
        return GateResult(
            False,
            "no evaluation rows: there was nothing to answer (is the dev split empty, or were "
            "the dataset's splits never loaded?)",
            {"rows": 0},
        )
    missing, duplicated = expected - set(got), len(got) - len(set(got))
    failed = int(predictions["error"].notna().sum())
    fraction = failed / len(got) if got else 1.0
    details = {
        "rows": len(got),
        "missing": len(missing),
        "duplicated": duplicated,
        "failed": failed,
        "failed_fraction": fraction,
    }
    if missing or duplicated:
        return GateResult(False, f"{len(missing)} eval rows unanswered, {duplicated} answered twice", details)
    if fraction > max_failed_fraction:
        errors = predictions.loc[predictions["error"].notna(), "error"].head(3).tolist()
        return GateResult(
            False, f"{failed} rows failed ({fraction:.1%} > {max_failed_fraction:.1%}); e.g. {errors}", details
        )
    return GateResult(True, f"all {len(got)} rows answered", details)


def prompt_gate(prompt: PromptVersion) -> GateResult:
    if not (prompt.system_prompt.strip() or prompt.output_prompt.strip()):
        return GateResult(False, "prompt is empty")
    problem = prompt_problem(prompt.system_prompt, prompt.output_prompt)
    if problem:
        return GateResult(False, problem)
    return GateResult(
        True,
        "prompt is not empty, output_prompt keeps {user_input}, system_prompt has no placeholders",
        {"chars": len(prompt.system_prompt) + len(prompt.output_prompt), "demos": len(prompt.demos)},
    )


def metric_range_gate(scores: pd.Series) -> GateResult:
    bad = [s for s in scores if s is None or math.isnan(s) or not 0.0 <= s <= 1.0]
    if bad:
        return GateResult(False, f"{len(bad)} scores outside [0, 1] or NaN, e.g. {bad[:3]}")
    return GateResult(True, "all scores in [0, 1]", {"rows": len(scores)})


def drop_held_out(rows: pd.DataFrame, held_out: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """`rows` without those equal to a held-out row up to case and whitespace (the splits are only
    checked for exact repeats): the demo pool an optimizer may use without tripping leakage_gate."""
    seen = {squash(t) for frame in held_out.values() for t in frame["user_input"]}
    return rows[~rows["user_input"].map(squash).isin(seen)]


def leakage_gate(prompt: PromptVersion, held_out: dict[str, pd.DataFrame], min_span: int = 40) -> GateResult:
    """Fail a prompt that carries held-out rows: as a demo, or as a long verbatim span of its text.

    A test row in the prompt inflates the reported test score, and a row of the split that accepts
    candidates inflates acceptance; neither shows up in any other number. `held_out` maps a split
    name to its rows (row_id, user_input); spans are compared case- and whitespace-insensitively."""
    found: list[str] = []
    # retrieved demos come from the pool, so a held-out row in the pool is as bad as one in the demos (`rows`
    # refuses a pool stored apart and not attached: an unchecked pool must not pass)
    sets = [prompt.demos, *prompt.ensemble, prompt.retrieval.rows if prompt.retrieval else []]
    demos = {squash(d.user_input) for demos in sets for d in demos}
    for split, rows in held_out.items():
        inputs = {squash(t): int(i) for t, i in zip(rows["user_input"], rows["row_id"])}
        demo_rows = [row_id for squashed, row_id in inputs.items() if squashed in demos]
        if demo_rows:
            found.append(f"demo(s) or demo-pool rows that are {split} rows (data rows {data_row_numbers(demo_rows)})")
        ids = list(inputs.values())
        spans = [
            ids[i]
            for i in verbatim_span_rows(f"{prompt.system_prompt}\n{prompt.output_prompt}", list(inputs), min_span)
        ]
        if spans:
            found.append(
                f"{min_span}+ characters copied verbatim from {split} row(s) "
                f"{data_row_numbers(spans)} in its instructions"
            )
    if found:
        return GateResult(
            False,
            f"prompt v{prompt.version} leaks held-out rows: {'; '.join(found)}. Scores on "
            "those rows would be inflated; the prompt is not used.",
            {"leaks": len(found)},
        )
    return GateResult(
        True, "no demo and no long verbatim span comes from a held-out row", {"splits_checked": ", ".join(held_out)}
    )
