"""Jobs: one run = one dataset, one iteration, or one final report.

Steps of a run execute in its one process, one after another: each step writes the warehouse and
the next reads it. Runs themselves go side by side (the run queue limit in the Dagster home's
dagster.yaml); their writes are short DuckDB transactions that wait for one another.
"""

import dagster as dg

from promptopt_dagster.defs.assets import ITERATION_ASSETS, dataset_splits, final_report
from promptopt_dagster.defs.loop import DATASET_JOB, ITERATION_JOB, REPORT_JOB
from promptopt_dagster.defs.partitions import dataset_partitions, iteration_partitions

prepare_dataset = dg.define_asset_job(DATASET_JOB, selection=[dataset_splits], partitions_def=dataset_partitions,
                                      executor_def=dg.in_process_executor,
                                      description="Load and validate one dataset's splits into the warehouse.")
optimize_iteration = dg.define_asset_job(ITERATION_JOB, selection=ITERATION_ASSETS, partitions_def=iteration_partitions,
                                         executor_def=dg.in_process_executor,
                                         description="One optimization iteration of one dataset.")
final_report_job = dg.define_asset_job(REPORT_JOB, selection=[final_report], partitions_def=dataset_partitions,
                                       executor_def=dg.in_process_executor,
                                       description="Score the best and the initial prompt on the held-out test split.")
