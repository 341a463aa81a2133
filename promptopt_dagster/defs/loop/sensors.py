"""The iteration sensor: a started optimization runs iteration 0, each finished iteration runs the next,
and each final report updates its dataset's leaderboard (one run for the reports that arrive while an
earlier one waits in the queue).

It keeps a cursor on the event log, so every start and every finished iteration is acted on exactly
once, and its run keys include the triggering event, so a rerun of an old iteration can start a
fresh chain. Settings travel with the optimization's generation (the `optimization` asset), not
with run config, so a backfill over optimizations needs no config at all.
"""

import dagster as dg

from promptopt_dagster.app.optimizations import OptimizationSpec
from promptopt_dagster.defs.loop.chain import chain_tags, next_step, optimization_tags, stop_reason_of
from promptopt_dagster.defs.names import DRIVER_TAG, ITERATION_JOB, LEADERBOARD_JOB, PARTITION_TAG
from promptopt_dagster.defs.partitions import DATASET_OF, iteration_dimension, iteration_key, iteration_name, parse_key
from promptopt_dagster.defs.runs import PID_TAG, describe, fail_dead_cli_runs

WATCHED = (dg.AssetKey("best_prompt"), dg.AssetKey("optimization_settings"), dg.AssetKey("final_report"))


def _generation(record) -> int:
    value = record.asset_materialization.metadata.get("generation")
    return int(getattr(value, "value", value))


def _fingerprint(record) -> str:
    value = record.asset_materialization.metadata["fingerprint"]
    return str(getattr(value, "value", value))


def _spec(record) -> OptimizationSpec:
    value = record.asset_materialization.metadata["settings"]
    return OptimizationSpec.model_validate(getattr(value, "data", value))


def _board_waiting(instance: dg.DagsterInstance, dataset: str) -> bool:
    """Whether a leaderboard run of this dataset is queued and has not started: it reads every final report
    when it runs, so a report written before then needs no run of its own. A backfill of fifty
    optimizations of one dataset then refreshes its board a few times, not fifty; a run already started
    may have read the reports before this one, so it does not count."""
    waiting = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED]
    return bool(
        instance.get_run_ids(
            dg.RunsFilter(job_name=LEADERBOARD_JOB, statuses=waiting, tags={PARTITION_TAG: dataset}), limit=1
        )
    )


def build_iteration_sensor(jobs: list) -> dg.SensorDefinition:
    """Every 5 s, the daemon's shortest sensor loop: each wait is paid once per iteration of every
    optimization. A tick is a few indexed event-log reads, cheap next to an iteration."""

    @dg.sensor(
        name="iteration_sensor",
        jobs=jobs,
        minimum_interval_seconds=5,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Runs iteration 0 of a started optimization, then each next iteration until the loop "
        "decides to stop, then the final report on the held-out test split, then the "
        "dataset's leaderboard.",
    )
    def iteration_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        cursors = dict(part.split("=", 1) for part in (context.cursor or "").split(",") if "=" in part)
        new_iterations: list[str] = []
        requests: list[dg.RunRequest] = []
        boards: set[str] = set()  # datasets whose leaderboard this tick already requests
        for key in WATCHED:
            after = int(cursors[key.path[-1]]) if key.path[-1] in cursors else None
            records = context.instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, after_storage_id=after), limit=100, ascending=True
            ).records
            for record in records:
                cursors[key.path[-1]] = str(record.storage_id)
                run = context.instance.get_run_by_id(record.run_id)
                if run is None or run.tags.get(DRIVER_TAG) == "cli" or record.partition_key is None:
                    continue
                tags = {**chain_tags(run.tags), DRIVER_TAG: "sensor"}
                if key.path[-1] == "final_report":  # the dataset's board, not part of the optimization's chain
                    job, partition, step = LEADERBOARD_JOB, DATASET_OF[record.partition_key], None
                    tags = {DRIVER_TAG: "sensor", "promptopt/dataset": partition}
                    if partition in boards or _board_waiting(context.instance, partition):
                        context.log.info(
                            f"final_report {record.partition_key}: the {partition} leaderboard run already "
                            "waiting will read it"
                        )
                        continue
                    boards.add(partition)
                elif key.path[-1] == "optimization_settings":
                    name, generation, step = record.partition_key, _generation(record), 0
                    job, partition = ITERATION_JOB, iteration_key(name, generation, 0)
                    tags.update(optimization_tags(_spec(record), _fingerprint(record), generation))
                else:
                    name, generation, iteration = parse_key(record.partition_key)
                    found = next_step(name, generation, iteration, stop_reason_of(record.asset_materialization))
                    job, partition, step = found.job_name, found.partition_key, found.iteration
                if step is not None:
                    wanted = iteration_name(generation, step)
                    if wanted not in new_iterations and not context.instance.has_dynamic_partition(
                        iteration_dimension.name, wanted
                    ):
                        new_iterations.append(wanted)
                context.log.info(f"{key.path[-1]} {record.partition_key}: next {job} {partition}")
                requests.append(
                    dg.RunRequest(
                        job_name=job,
                        partition_key=partition,
                        run_key=f"{job}:{partition}:after-{record.storage_id}",
                        tags=tags,
                    )
                )
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[iteration_dimension.build_add_request(new_iterations)]
            if new_iterations
            else [],
            cursor=",".join(f"{k}={v}" for k, v in sorted(cursors.items())) or None,
        )

    return iteration_sensor


@dg.sensor(
    name="dead_cli_run_sensor",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks runs of a `promptopt optimize` process that was killed (SIGKILL, crash) as failed, "
    "so they stop holding the one-run-at-a-time queue. Dagster's run monitoring cannot see "
    "them: those runs execute in the CLI's own process, not in a launched worker.",
)
def dead_cli_run_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    dead = fail_dead_cli_runs(context.instance)
    for run in dead:
        context.log.warning(f"marked {describe(run)} failed: its process {run.tags[PID_TAG]} is gone")
    return dg.SkipReason(f"marked {len(dead)} dead CLI run(s) failed" if dead else "no dead CLI runs")
