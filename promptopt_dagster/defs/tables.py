"""Row layouts of the warehouse tables that hold prompt versions.

The DuckDB IO manager inserts positionally, so every frame is built here with one fixed column
order and fixed dtypes; the full version also travels as JSON so it round-trips exactly.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pandas as pd

from promptopt_dagster.core.prompts import PromptVersion
from promptopt_dagster.defs.partitions import iteration_name

PROMPT_COLUMNS = {
    "optimization": "string",
    "iteration": "string",
    "generation": "int64",
    "step": "int64",
    "dataset": "string",
    "prompt_id": "string",
    "parent_id": "string",
    "version": "int64",
    "system_prompt": "string",
    "output_prompt": "string",
    "num_demos": "int64",
    "status": "string",
    "note": "string",
    "usage_json": "string",
    "prompt_json": "string",
    "written_at": "string",
    "metric_calls": "int64",
}


def prompt_frame(
    optimization: str,
    generation: int,
    iteration: int,
    dataset: str,
    prompt: PromptVersion,
    status: str,
    note: str | None = None,
    usage_json: str | None = None,
    metric_calls: int = 0,
) -> pd.DataFrame:
    """A prompt version and what wrote it; the loop's state is not here but in the state store.
    usage_json: model usage of the asset that wrote the row (refined_prompt); metric_calls: rows the
    optimizer scored (refined_prompt). Stored tables follow: see io_managers._fit_to_table.

    `prompt` is in stored form (WarehouseStateStore.stored_form): a retrieval pool is kept once, apart."""
    if prompt.carries_pool:
        raise ValueError(f"prompt {prompt.id} carries its retrieval pool: store it with state_store.stored_form first")
    row: dict[str, Any] = {
        "optimization": optimization,
        "iteration": iteration_name(generation, iteration),
        "generation": generation,
        "step": iteration,
        "dataset": dataset,
        "prompt_id": prompt.id,
        "parent_id": prompt.parent_id,
        "version": prompt.version,
        "system_prompt": prompt.system_prompt,
        "output_prompt": prompt.output_prompt,
        "num_demos": len(prompt.demos),
        "status": status,
        "note": note,
        "usage_json": usage_json,
        "prompt_json": prompt.to_json(),
        "written_at": datetime.now(timezone.utc).isoformat(),
        "metric_calls": metric_calls,
    }
    return pd.DataFrame([row], columns=list(PROMPT_COLUMNS)).astype(PROMPT_COLUMNS)


def prompt_from_frame(frame: pd.DataFrame) -> PromptVersion:
    """The stored prompt; a retrieval pool is a reference until the state store's `with_pool` attaches it."""
    if len(frame) != 1:
        raise ValueError(f"expected one prompt row, got {len(frame)}")
    return PromptVersion.model_validate_json(frame.iloc[0]["prompt_json"])


def with_partition(frame: pd.DataFrame, optimization: str, generation: int, iteration: int) -> pd.DataFrame:
    """Prepend the partition columns the IO manager filters on, and the generation and step they encode."""
    out = frame.copy()
    for position, (column, value) in enumerate(
        (
            ("optimization", optimization),
            ("iteration", iteration_name(generation, iteration)),
            ("generation", generation),
            ("step", iteration),
        )
    ):
        out.insert(position, column, value)
    return out
