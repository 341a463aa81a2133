"""Names the areas share: job names, the asset group of the loop, the artifact IO manager's key and run tags.

An area refers to another area's jobs and assets by these names (or by asset key), never by importing
it. This module imports nothing, so the CLI can read a tag's name without importing Dagster.
"""

ITERATION_JOB = "optimize_iteration"
REPORT_JOB = "final_report_job"
LEADERBOARD_JOB = "leaderboard_job"
DATASET_JOB = "prepare_dataset"
START_JOB = "start_optimization"
PROMOTE_JOB = "promote_prompt"  # only ever launched by a person: never in a sensor
#: the asset group of an optimization's iterations, its final report and its dataset's leaderboard
LOOP = "prompt_optimization"
#: the IO manager of the tables people open: DuckDB plus a readable JSON copy where the deployment keeps artifacts
ARTIFACTS = "artifact_io_manager"
DRIVER_TAG = "promptopt/driver"  # "cli" runs are driven by the CLI itself; the sensor leaves them alone
OPTIMIZATION_TAG = "promptopt/optimization"
#: Dagster's own tag naming a run's partition (public in its UI and GraphQL; its constant is private to Dagster)
PARTITION_TAG = "dagster/partition"
SUBMISSION_TAG = "promptopt/submission"  # one `promptopt submit`: its start run and every run the sensor chains to it
