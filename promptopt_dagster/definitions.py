"""The code location: `dagster dev -w workspace.yaml` and `promptopt` both load these Definitions."""

import dagster as dg

from promptopt_dagster.defs.dataset_assets import dataset_splits, optimization
from promptopt_dagster.defs.iteration_assets import ITERATION_ASSETS
from promptopt_dagster.defs.jobs import (
    final_report_job,
    leaderboard_job,
    optimize_iteration,
    prepare_dataset,
    promote_prompt,
    start_optimization,
)
from promptopt_dagster.defs.migration_assets import migration_references
from promptopt_dagster.defs.promotion_assets import promoted_prompt, promotion_audit
from promptopt_dagster.defs.report_assets import final_report, leaderboard
from promptopt_dagster.defs.resources import default_resources
from promptopt_dagster.defs.sensors import build_iteration_sensor, dead_cli_run_sensor
from promptopt_dagster.defs.state_store import WarehouseStateStore
from promptopt_dagster.defs.unscored_prompts import unscored_prompt


def build_definitions(resources: dict | None = None) -> dg.Definitions:
    """Tests pass their own resources (temporary warehouse, fake model); everything else is shared.
    The state store lives in the warehouse unless a resource set brings its own."""
    resources = dict(resources if resources is not None else default_resources())
    if "state_store" not in resources and "warehouse" in resources:
        resources["state_store"] = WarehouseStateStore(warehouse=resources["warehouse"])
    return dg.Definitions(
        assets=[
            dataset_splits,
            migration_references,
            optimization,
            *ITERATION_ASSETS,
            final_report,
            leaderboard,
            unscored_prompt,
            promotion_audit,
            promoted_prompt,
        ],
        jobs=[
            prepare_dataset,
            start_optimization,
            optimize_iteration,
            final_report_job,
            leaderboard_job,
            promote_prompt,
        ],
        sensors=[build_iteration_sensor([optimize_iteration, final_report_job, leaderboard_job]), dead_cli_run_sensor],
        resources=resources,
        executor=dg.in_process_executor,
    )


defs = build_definitions()
