"""What happens after an iteration's best_prompt lands: run the next iteration or the final report.

The stop decision itself is made in core/decisions.py and stored on best_prompt; this module only
turns it into the next run. The sensor and the headless CLI both call `next_step`.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from promptopt_dagster.app.optimizations import OptimizationSpec
from promptopt_dagster.app.settings import get_settings
from promptopt_dagster.defs.names import ITERATION_JOB, OPTIMIZATION_TAG, REPORT_JOB, SUBMISSION_TAG
from promptopt_dagster.defs.partitions import iteration_key

#: Tags every run of an optimization carries, so the runs list (and `promptopt status`) can say what a run is
#: without opening it; the sensor copies them from the run it follows to the run it launches.
CHAIN_TAGS = (
    OPTIMIZATION_TAG,
    "promptopt/dataset",
    "promptopt/optimizer",
    "promptopt/task_model",
    "promptopt/generation",
    "promptopt/fingerprint",
    SUBMISSION_TAG,
)


def start_run_config(spec: OptimizationSpec) -> dict:
    """Run config of START_JOB with these settings: the migration's references and the start read the same."""
    config = {"config": {"spec_json": spec.model_dump_json()}}
    return {"ops": {"migration_references": config, "optimization": config}}


@dataclass(frozen=True)
class NextStep:
    job_name: str
    partition_key: str | dg.MultiPartitionKey
    iteration: int | None  # the iteration to run, None for the final report


def next_step(optimization: str, generation: int, iteration: int, stop_reason: str | None) -> NextStep:
    if stop_reason:
        return NextStep(REPORT_JOB, optimization, None)
    return NextStep(ITERATION_JOB, iteration_key(optimization, generation, iteration + 1), iteration + 1)


def optimization_tags(spec: OptimizationSpec, fingerprint: str, generation: int | None = None) -> dict[str, str]:
    """What a run of this optimization is, as run tags. A spec without a task model runs on the deployment's.
    `fingerprint`: spec.fingerprint(its dataset's manifest entry), or the one its generation recorded."""
    model = spec.task_model or get_settings().task
    tags = {
        OPTIMIZATION_TAG: spec.name,
        "promptopt/dataset": spec.dataset,
        "promptopt/optimizer": spec.optimizer,
        "promptopt/task_model": f"{model.backend}/{model.model or 'default'}",
        "promptopt/fingerprint": fingerprint,
    }
    if generation is not None:
        tags["promptopt/generation"] = str(generation)
    return tags


def chain_tags(run_tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in run_tags.items() if k in CHAIN_TAGS}


def stop_reason_of(materialization: dg.AssetMaterialization) -> str | None:
    value = materialization.metadata.get("stop_reason")
    text = getattr(value, "value", value)
    return text or None
