"""Prompt versions no row has judged (`promptopt rewrite`), shown in the UI as what they are.

A zero-shot rewrite is made outside any run, so it is an external asset: the CLI records each one as
a runless materialization of `unscored_prompt`, and the UI lists them with their text, where the file
is, which model wrote them, and an UNSCORED label. They never enter `best_prompt`: only a run that
scores a prompt on rows can put it there.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from promptopt_dagster.core.prompts import PromptVersion

UNSCORED_PROMPT = dg.AssetKey("unscored_prompt")
STATUS = "UNSCORED: written from guidelines alone; no row has judged this prompt. Score it with `promptopt optimize`."

unscored_prompt = dg.AssetSpec(
    UNSCORED_PROMPT,
    group_name="prompts",
    kinds={"json"},
    description="Prompt versions written by `promptopt rewrite` (zero-shot MetaPrompt) that no row has scored yet. "
    "Each materialization is one rewrite; use its file as a dataset's initial prompt to score it.",
)


def record_unscored(
    instance: dg.DagsterInstance, name: str, prompt: PromptVersion, path: Path, written_by: str
) -> None:
    """Report one unscored version to the Dagster instance, so the UI shows it beside the scored ones."""
    metadata = {
        "status": dg.MetadataValue.text(STATUS),
        "scored": False,
        "name": name,
        "version": prompt.version,
        "path": dg.MetadataValue.path(str(path)),
        "written_by": written_by,
        "prompt": dg.MetadataValue.md(
            f"**UNSCORED**\n\n**system_prompt**\n\n```\n{prompt.system_prompt}\n```\n\n"
            f"**output_prompt**\n\n```\n{prompt.output_prompt}\n```"
        ),
    }
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key=UNSCORED_PROMPT, metadata=metadata, description=STATUS)
    )
