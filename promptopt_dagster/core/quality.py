"""Quality gates as plain functions; the Dagster layer turns each result into an asset check.

They re-check what was actually stored, so a gate still holds if a loader or backend changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import pandas as pd

from promptopt_dagster.core.datasets import COLUMNS, SPLITS
from promptopt_dagster.core.prompts import PromptVersion, prompt_problem


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


def predictions_gate(predictions: pd.DataFrame, expected_row_ids: Iterable[int], max_failed_fraction: float) -> GateResult:
    expected = set(expected_row_ids)
    got = predictions["row_id"].tolist()
    if not got and not expected:
        return GateResult(False, "no evaluation rows: there was nothing to answer (is the dev split empty, or were "
                                 "the dataset's splits never loaded?)", {"rows": 0})
    missing, duplicated = expected - set(got), len(got) - len(set(got))
    failed = int(predictions["error"].notna().sum())
    fraction = failed / len(got) if got else 1.0
    details = {"rows": len(got), "missing": len(missing), "duplicated": duplicated, "failed": failed,
               "failed_fraction": fraction}
    if missing or duplicated:
        return GateResult(False, f"{len(missing)} eval rows unanswered, {duplicated} answered twice", details)
    if fraction > max_failed_fraction:
        errors = predictions.loc[predictions["error"].notna(), "error"].head(3).tolist()
        return GateResult(False, f"{failed} rows failed ({fraction:.1%} > {max_failed_fraction:.1%}); e.g. {errors}",
                          details)
    return GateResult(True, f"all {len(got)} rows answered", details)


def prompt_gate(prompt: PromptVersion) -> GateResult:
    if not (prompt.system_prompt.strip() or prompt.output_prompt.strip()):
        return GateResult(False, "prompt is empty")
    problem = prompt_problem(prompt.system_prompt, prompt.output_prompt)
    if problem:
        return GateResult(False, problem)
    return GateResult(True, "prompt is not empty, output_prompt keeps {user_input}, system_prompt has no placeholders",
                      {"chars": len(prompt.system_prompt) + len(prompt.output_prompt), "demos": len(prompt.demos)})


def metric_range_gate(scores: pd.Series) -> GateResult:
    bad = [s for s in scores if s is None or math.isnan(s) or not 0.0 <= s <= 1.0]
    if bad:
        return GateResult(False, f"{len(bad)} scores outside [0, 1] or NaN, e.g. {bad[:3]}")
    return GateResult(True, "all scores in [0, 1]", {"rows": len(scores)})
