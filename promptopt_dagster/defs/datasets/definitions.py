"""The datasets area's definitions: its assets and the jobs that load a dataset and start an optimization."""

import dagster as dg

from promptopt_dagster.defs.datasets.assets import dataset_splits, optimization
from promptopt_dagster.defs.datasets.migration import migration_references
from promptopt_dagster.defs.names import DATASET_JOB, START_JOB
from promptopt_dagster.defs.partitions import dataset_partitions, optimization_partitions

prepare_dataset = dg.define_asset_job(
    DATASET_JOB,
    selection=[dataset_splits],
    partitions_def=dataset_partitions,
    executor_def=dg.in_process_executor,
    description="Load and validate one dataset's splits into the warehouse.",
)
start_optimization = dg.define_asset_job(
    START_JOB,
    selection=[migration_references, optimization],
    partitions_def=optimization_partitions,
    executor_def=dg.in_process_executor,
    description="Record an optimization's settings (a new generation when "
    "they changed) and its rows (in a model migration, with the "
    "source model's answers as references); the sensor runs "
    "iteration 0 next.",
)


def definitions() -> dg.Definitions:
    """The area's assets and jobs, without resources (the code location adds them)."""
    return dg.Definitions(
        assets=[dataset_splits, migration_references, optimization],
        jobs=[prepare_dataset, start_optimization],
    )
