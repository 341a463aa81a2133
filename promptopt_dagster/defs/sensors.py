"""The iteration sensor: each new best_prompt materialization triggers the next run of its dataset.

It keeps a cursor on the event log, so every finished iteration is acted on exactly once, and its
run keys include the triggering event, so a rerun of an old iteration can start a fresh chain.
The next run reuses the previous run's resource config: one optimization keeps one configuration.
"""


import dagster as dg

from promptopt_dagster.defs.assets import best_prompt
from promptopt_dagster.defs.loop import DRIVER_TAG, next_step, stop_reason_of
from promptopt_dagster.defs.partitions import iteration_dimension, parse_key
from promptopt_dagster.defs.runs import PID_TAG, describe, fail_dead_cli_runs


def build_iteration_sensor(jobs: list) -> dg.SensorDefinition:
    @dg.sensor(name="iteration_sensor", jobs=jobs, minimum_interval_seconds=10,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Adds the next iteration partition and runs it until the loop decides to stop, "
                           "then runs the final report on the held-out test split.")
    def iteration_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        after = int(context.cursor) if context.cursor else None
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=best_prompt.key, after_storage_id=after), limit=100, ascending=True
        ).records
        new_iterations: list[str] = []
        requests: list[dg.RunRequest] = []
        cursor = after
        for record in records:
            cursor = record.storage_id
            run = context.instance.get_run_by_id(record.run_id)
            if run is None or run.tags.get(DRIVER_TAG) == "cli" or record.partition_key is None:
                continue
            dataset, iteration = parse_key(record.partition_key)
            step = next_step(dataset, iteration, stop_reason_of(record.asset_materialization))
            if step.iteration is not None:
                key = str(step.iteration)
                if key not in new_iterations and not context.instance.has_dynamic_partition(
                        iteration_dimension.name, key):
                    new_iterations.append(key)
            context.log.info(f"{record.partition_key} finished: next {step.job_name} {step.partition_key}")
            requests.append(dg.RunRequest(
                job_name=step.job_name, partition_key=step.partition_key,
                run_key=f"{step.job_name}:{step.partition_key}:after-{record.storage_id}",
                run_config={"resources": run.run_config.get("resources", {})} if run.run_config else {},
                tags={DRIVER_TAG: "sensor"},
            ))
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[iteration_dimension.build_add_request(new_iterations)] if new_iterations else [],
            cursor=str(cursor) if cursor is not None else None,
        )

    return iteration_sensor


@dg.sensor(name="dead_cli_run_sensor", minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Marks runs of a `promptopt optimize` process that was killed (SIGKILL, crash) as failed, "
                       "so they stop holding the one-run-at-a-time queue. Dagster's run monitoring cannot see "
                       "them: those runs execute in the CLI's own process, not in a launched worker.")
def dead_cli_run_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    dead = fail_dead_cli_runs(context.instance)
    for run in dead:
        context.log.warning(f"marked {describe(run)} failed: its process {run.tags[PID_TAG]} is gone")
    return dg.SkipReason(f"marked {len(dead)} dead CLI run(s) failed" if dead else "no dead CLI runs")
