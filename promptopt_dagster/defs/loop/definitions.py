"""The loop area's definitions: the iteration's assets, its job, and the sensors."""

import dagster as dg

from promptopt_dagster.defs.loop.assets import ITERATION_ASSETS
from promptopt_dagster.defs.loop.sensors import build_iteration_sensor, dead_cli_run_sensor
from promptopt_dagster.defs.names import ITERATION_JOB
from promptopt_dagster.defs.partitions import iteration_partitions

optimize_iteration = dg.define_asset_job(
    ITERATION_JOB,
    selection=ITERATION_ASSETS,
    partitions_def=iteration_partitions,
    executor_def=dg.in_process_executor,
    description="One iteration of one optimization.",
)


def definitions(report_jobs: list) -> dg.Definitions:
    """The area's assets, job and sensors, without resources (the code location adds them).

    The iteration sensor also launches the reporting area's jobs (the final report, the leaderboard):
    the code location passes them in, so this area imports no other."""
    return dg.Definitions(
        assets=ITERATION_ASSETS,
        jobs=[optimize_iteration],
        sensors=[build_iteration_sensor([optimize_iteration, *report_jobs]), dead_cli_run_sensor],
    )
