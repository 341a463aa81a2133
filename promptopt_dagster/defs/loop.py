"""What happens after an iteration's best_prompt lands: run the next iteration or the final report.

The stop decision itself is made in core/decisions.py and stored on best_prompt; this module only
turns it into the next run. The sensor and the headless CLI both call `next_step`.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from promptopt_dagster.defs.partitions import iteration_key

ITERATION_JOB = "optimize_iteration"
REPORT_JOB = "final_report_job"
DATASET_JOB = "prepare_dataset"
START_JOB = "start_optimization"
DRIVER_TAG = "promptopt/driver"  # "cli" runs are driven by the CLI itself; the sensor leaves them alone


@dataclass(frozen=True)
class NextStep:
    job_name: str
    partition_key: str | dg.MultiPartitionKey
    iteration: int | None  # the iteration to run, None for the final report


def next_step(optimization: str, generation: int, iteration: int, stop_reason: str | None) -> NextStep:
    if stop_reason:
        return NextStep(REPORT_JOB, optimization, None)
    return NextStep(ITERATION_JOB, iteration_key(optimization, generation, iteration + 1), iteration + 1)


def stop_reason_of(materialization: dg.AssetMaterialization) -> str | None:
    value = materialization.metadata.get("stop_reason")
    text = getattr(value, "value", value)
    return text or None
