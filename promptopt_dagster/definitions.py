"""The code location: `dagster dev -w workspace.yaml` and `promptopt` both load these Definitions."""

import dagster as dg

from promptopt_dagster.defs.assets import ITERATION_ASSETS, dataset_splits, final_report
from promptopt_dagster.defs.jobs import final_report_job, optimize_iteration, prepare_dataset
from promptopt_dagster.defs.resources import default_resources
from promptopt_dagster.defs.sensors import build_iteration_sensor, dead_cli_run_sensor


def build_definitions(resources: dict | None = None) -> dg.Definitions:
    """Tests pass their own resources (temporary warehouse, fake model); everything else is shared."""
    return dg.Definitions(
        assets=[dataset_splits, *ITERATION_ASSETS, final_report],
        jobs=[prepare_dataset, optimize_iteration, final_report_job],
        sensors=[build_iteration_sensor([optimize_iteration, final_report_job]), dead_cli_run_sensor],
        resources=resources if resources is not None else default_resources(),
        executor=dg.in_process_executor,
    )


defs = build_definitions()
