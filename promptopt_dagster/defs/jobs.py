"""Jobs: one run = one dataset's rows, one optimization's start, one iteration, one final report, or one
dataset's leaderboard.

Steps of a run execute in its one process, one after another: each step writes the warehouse and
the next reads it. Runs themselves go side by side (the run queue limit in the Dagster home's
dagster.yaml); their writes are short DuckDB transactions that wait for one another.
"""

import dagster as dg

from promptopt_dagster.defs.dataset_assets import dataset_splits, optimization
from promptopt_dagster.defs.iteration_assets import ITERATION_ASSETS
from promptopt_dagster.defs.loop import DATASET_JOB, ITERATION_JOB, LEADERBOARD_JOB, PROMOTE_JOB, REPORT_JOB, START_JOB
from promptopt_dagster.defs.migration_assets import migration_references
from promptopt_dagster.defs.partitions import dataset_partitions, iteration_partitions, optimization_partitions
from promptopt_dagster.defs.promotion_assets import promoted_prompt, promotion_audit
from promptopt_dagster.defs.report_assets import final_report, leaderboard

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
optimize_iteration = dg.define_asset_job(
    ITERATION_JOB,
    selection=ITERATION_ASSETS,
    partitions_def=iteration_partitions,
    executor_def=dg.in_process_executor,
    description="One iteration of one optimization.",
)
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
promote_prompt = dg.define_asset_job(
    PROMOTE_JOB,
    selection=[promotion_audit, promoted_prompt],
    partitions_def=dataset_partitions,
    executor_def=dg.in_process_executor,
    description="A person's request to serve an optimization's best prompt (or to roll "
    "back): gated, audited, then written where applications read it. No "
    "sensor or schedule runs it.",
)
