"""Promotion: a person puts an optimization's best prompt where applications read it, or takes it back.

An optimization ends with a report; serving is a separate, deliberate act with a paper trail. Every
request (approved or blocked) is one row of the dataset's audit table. What is served is derived
from that table alone: approved promotions push a version, approved rollbacks pop one, so a rollback
restores exactly the version that was served before, and the history cannot disagree with it. After
promotions A, B, C, rollbacks serve B, then A, then are refused: there is nothing earlier.

Served versions are numbered by promotion: the Nth approved promotion of a dataset is version N, and
its copy is `v000N-<prompt id>.json`, so the copies sort in the order they were served and a prompt
promoted twice gets two copies. The prompt's own version (how many refinements made it) is in the
copy's content, not its name.

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

#: nullable integers: a refused rollback with nothing to restore has no prompt, optimization or scores
AUDIT_COLUMNS = {
    "event_id": "int64",
    "dataset": "string",
    "action": "string",
    "verdict": "string",
    "reason": "string",
    "optimization": "string",
    "generation": "Int64",
    "iterations": "Int64",
    "iteration": "string",  # the best_prompt partition the candidate was read from (g<generation>-i<n>)
    "prompt_id": "string",
    "prompt_version": "Int64",
    "metric": "string",
    "candidate_score": "float64",
    "current_prompt_id": "string",
    "current_score": "float64",
    "margin": "float64",
    "test_rows": "Int64",
    "score_problem": "string",
    "leakage_problem": "string",
    "prompt_problem": "string",
    "requested_by": "string",
    "note": "string",
    "requested_at": "string",
    "document_json": "string",
    "history_problem": "string",  # added later: new columns go last (the warehouse appends them to old tables)
}


def served_stack(audit: pd.DataFrame) -> list[dict[str, Any]]:
    """The audit rows of the approved promotions still on the history, oldest first: the last one is served
    now, the one before it is what a rollback restores. Each has `served_version`: it was the dataset's
    Nth approved promotion (what names its copy)."""
    stack: list[dict[str, Any]] = []
    if audit is None or audit.empty:
        return stack
    approved = 0
    for row in audit.sort_values("event_id").to_dict("records"):
        if row["verdict"] != APPROVED:
            continue
        if row["action"] == "promote":
            approved += 1
            stack.append({**row, "served_version": approved})
        elif stack:
            stack.pop()
    return stack


def promotions(audit: pd.DataFrame) -> int:
    """How many promotions of the dataset were approved: the next one is served as version that + 1."""
    if audit is None or audit.empty:
        return 0
    return int(((audit["action"] == "promote") & (audit["verdict"] == APPROVED)).sum())


def history_problem(dataset: str, stack: list[dict[str, Any]]) -> str | None:
    """Why a rollback has nothing to restore, or None."""
    if not stack:
        return f"nothing to roll back: no prompt of '{dataset}' has been promoted"
    if len(stack) == 1:
        first = stack[0]
        return (
            f"nothing earlier to roll back to: {first['prompt_id']} (optimization {first['optimization']}, "
            f"served as {version_name(first['served_version'])}) is the first version of '{dataset}' still "
            "on the history"
        )
    return None


#: what a refused score gate tells the person to do, by action
SCORE_ADVICE = {
    "promote": "Promote a better optimization, or pass a larger --margin or --force if the drop is intended",
    "rollback": "Pass --force to roll back anyway",
}


def score_problem(
    action: str,
    metric: str,
    candidate: float,
    current: float | None,
    current_id: str | None,
    margin: float,
    rows: int,
    candidate_id: str = "",
    same_rows: bool = True,
) -> str | None:
    """Why the candidate (a rollback: the version it would restore) may not replace the served prompt, or
    None: both scores, the rows they are on, the margin. `SCORE_ADVICE` says what to do about it."""
    if current is None or candidate + margin >= current:
        return None
    who = "the candidate's" if action == "promote" else f"the rollback target {candidate_id}'s"
    where = (
        f"on the same {rows} test rows"
        if same_rows
        else "(their recorded test scores: the target's optimization is gone, so they were not re-scored)"
    )
    allowed = f" (allowed margin {margin:g})" if margin else ""
    return (
        f"{who} test {metric} {candidate:.4f} is below the promoted prompt {current_id}'s {current:.4f} "
        f"{where}{allowed}"
    )


def export_document(
    prompt: PromptVersion,
    *,
    dataset: str,
    max_output_tokens: int,
    stop: list[str],
    task_model: str,
    mode: str,
    source: dict[str, Any],
) -> dict[str, Any]:
    """What an application needs to send this prompt to its model, and where it came from. `mode`:
    completion (one text, base models) or chat (system/user/assistant turns), as the task model was asked."""
    return {
        "format": EXPORT_FORMAT,
        "dataset": dataset,
        "task_model": task_model,
        "mode": mode,
        "generation": {"max_output_tokens": max_output_tokens, "stop": list(stop) if mode == "completion" else []},
        "answer": {"kind": prompt.answer, "labels": list(prompt.labels) if prompt.answer == "label" else []},
        "prompt": json.loads(prompt.to_json()),
        "source": source,
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


def version_name(served_version: int) -> str:
    return f"v{int(served_version):04d}"


def serving_paths(root: str, dataset: str, served_version: int, prompt_id: str) -> tuple[str, str]:
    """The stable location, and the copy of the dataset's `served_version`th promotion beside it."""
    copy = f"{root}/{dataset}/{version_name(served_version)}-{prompt_id}.json"
    return current_path(root, dataset), (copy if root.startswith("gs://") else str(Path(copy)))


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
