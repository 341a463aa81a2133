"""Promotion: a person puts an optimization's best prompt where applications read it, or takes it back.

An optimization ends with a report; serving is a separate, deliberate act with a paper trail. Every
request (approved or blocked) is one row of the dataset's audit table. What is served is derived
from that table alone: approved promotions push a version, approved rollbacks pop one, so a rollback
restores exactly the version that was served before, and the history cannot disagree with it.

The served file is self-contained (`export_document`): instruction, template, demos or the
retrieval pool, the answer constraint and generation settings, so an application renders the prompt
without this project (`render` shows exactly what the model receives).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from promptopt_dagster.core.prompts import PromptVersion

ACTIONS = ("promote", "rollback")
APPROVED, BLOCKED = "approved", "blocked"
EXPORT_FORMAT = "promptopt.promoted_prompt/v1"

AUDIT_COLUMNS = {
    "event_id": "int64", "dataset": "string", "action": "string", "verdict": "string", "reason": "string",
    "optimization": "string", "generation": "int64", "iterations": "int64",
    "iteration": "string",  # the best_prompt partition the candidate was read from (g<generation>-i<n>)
    "prompt_id": "string",
    "prompt_version": "int64", "metric": "string", "candidate_score": "float64", "current_prompt_id": "string",
    "current_score": "float64", "margin": "float64", "test_rows": "int64", "score_problem": "string",
    "leakage_problem": "string", "prompt_problem": "string", "requested_by": "string", "note": "string",
    "requested_at": "string", "document_json": "string",
}


def served_stack(audit: pd.DataFrame) -> list[dict[str, Any]]:
    """The audit rows whose prompts were served, oldest first; the last one is served now."""
    stack: list[dict[str, Any]] = []
    for row in audit.sort_values("event_id").to_dict("records"):
        if row["verdict"] != APPROVED:
            continue
        if row["action"] == "promote":
            stack.append(row)
        elif stack:
            stack.pop()
    return stack


def score_problem(metric: str, candidate: float, current: float | None, current_id: str | None, margin: float,
                  rows: int) -> str | None:
    """Why the candidate may not replace the served prompt on these test rows, or None."""
    if current is None:
        return None
    if candidate + margin < current:
        return (f"the candidate's test {metric} {candidate:.4f} is below the promoted prompt {current_id}'s "
                f"{current:.4f} on the same {rows} test rows (allowed margin {margin:g}). Promote a better "
                "optimization, or pass a larger --margin if the drop is intended")
    return None


def export_document(prompt: PromptVersion, *, dataset: str, max_output_tokens: int, stop: list[str],
                    task_model: str, mode: str, source: dict[str, Any]) -> dict[str, Any]:
    """What an application needs to send this prompt to its model, and where it came from. `mode`:
    completion (one text, base models) or chat (system/user/assistant turns), as the task model was asked."""
    return {
        "format": EXPORT_FORMAT, "dataset": dataset, "task_model": task_model, "mode": mode,
        "generation": {"max_output_tokens": max_output_tokens, "stop": list(stop) if mode == "completion" else []},
        "answer": {"kind": prompt.answer, "labels": list(prompt.labels) if prompt.answer == "label" else []},
        "prompt": json.loads(prompt.to_json()), "source": source,
    }


def prompt_of(document: dict[str, Any]) -> PromptVersion:
    return PromptVersion.model_validate(document["prompt"])


def render(document: dict[str, Any], user_input: str) -> str:
    """Exactly what the model receives for one input: the completion text, or the chat turns, in the
    mode the document was promoted for (an ensembled prompt sends one such request per demo set)."""
    prompt = prompt_of(document)
    if document.get("mode", "completion") == "completion":
        return prompt.render_completion(user_input)
    turns = prompt.render_chat(user_input)
    return "\n\n".join(f"[{t['role']}]\n{t['content']}" for t in turns)


def current_path(root: str, dataset: str) -> str:
    """The stable location applications read: locally `<root>/<dataset>.json`, on GCS
    `<root>/<dataset>/current.json` (a bucket has no atomic rename, but one object upload is atomic)."""
    if root.startswith("gs://"):
        return f"{root}/{dataset}/current.json"
    return str(Path(root) / f"{dataset}.json")


def serving_paths(root: str, dataset: str, version: int, prompt_id: str) -> tuple[str, str]:
    """The stable location, and this version's own copy beside it."""
    copy = f"{root}/{dataset}/v{version:04d}-{prompt_id}.json"
    return current_path(root, dataset), (copy if root.startswith("gs://") else str(Path(copy)))


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
