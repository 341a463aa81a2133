"""The code location: `dagster dev -w workspace.yaml` and `promptopt` both load these Definitions.

They merge the four areas' definitions (defs/datasets, defs/loop, defs/reporting, defs/promotion) with
the resources. Jobs: one run = one dataset's rows, one optimization's start, one iteration, one final
report, or one dataset's leaderboard (or a person's promotion).

Steps of a run execute in its one process, one after another: each step writes the warehouse and
the next reads it. Runs themselves go side by side (the run queue limit in the Dagster home's
dagster.yaml); their writes are short DuckDB transactions that wait for one another.
"""

import dagster as dg

from promptopt_dagster.defs.datasets import definitions as datasets
from promptopt_dagster.defs.loop import definitions as loop
from promptopt_dagster.defs.promotion import definitions as promotion
from promptopt_dagster.defs.reporting import definitions as reporting
from promptopt_dagster.defs.resources import default_resources
from promptopt_dagster.defs.state_store import WarehouseStateStore


def build_definitions(resources: dict | None = None) -> dg.Definitions:
    """Tests pass their own resources (temporary warehouse, fake model); everything else is shared.
    The state store lives in the warehouse unless a resource set brings its own."""
    resources = dict(resources if resources is not None else default_resources())
    if "state_store" not in resources and "warehouse" in resources:
        resources["state_store"] = WarehouseStateStore(warehouse=resources["warehouse"])
    return dg.Definitions.merge(
        datasets.definitions(),
        # the iteration sensor launches the final report and the leaderboard after the last iteration
        loop.definitions(report_jobs=[reporting.final_report_job, reporting.leaderboard_job]),
        reporting.definitions(),
        promotion.definitions(),
        dg.Definitions(resources=resources, executor=dg.in_process_executor),
    )


defs = build_definitions()
