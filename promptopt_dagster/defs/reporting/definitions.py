"""The reporting area's definitions: the final report, the leaderboard and their jobs."""

import dagster as dg

from promptopt_dagster.defs.names import LEADERBOARD_JOB, REPORT_JOB
from promptopt_dagster.defs.partitions import dataset_partitions, optimization_partitions
from promptopt_dagster.defs.reporting.assets import final_report, leaderboard

final_report_job = dg.define_asset_job(
    REPORT_JOB,
    selection=[final_report],
    partitions_def=optimization_partitions,
    executor_def=dg.in_process_executor,
    description="Score the best and the initial prompt on the held-out test split.",
)
leaderboard_job = dg.define_asset_job(
    LEADERBOARD_JOB,
    selection=[leaderboard],
    partitions_def=dataset_partitions,
    executor_def=dg.in_process_executor,
    description="Rank every optimization of one dataset by its final report.",
)


def definitions() -> dg.Definitions:
    """The area's assets and jobs, without resources (the code location adds them)."""
    return dg.Definitions(assets=[final_report, leaderboard], jobs=[final_report_job, leaderboard_job])
