"""What the commands that run jobs in this process share: the code location on the project's Dagster home, one
run of a job tagged as the CLI's, and a failed step explained in one line."""

from __future__ import annotations

import re

from promptopt_dagster.app.settings import get_settings
from promptopt_dagster.defs.home import ensure_dagster_home
from promptopt_dagster.defs.names import DRIVER_TAG


def definitions_here():
    """The code location's Definitions, with the project's Dagster home set up first, so a command's runs
    are recorded where `promptopt ui` shows them."""
    ensure_dagster_home(get_settings().dagster_home)
    # start-up (~1 s: dagster, duckdb, every asset), and the Dagster home must be set up before it loads
    from promptopt_dagster.definitions import defs

    return defs


def run_here(job_name: str, partition_key: str, tags: dict, ops: dict | None = None):
    """One run of a job in this process (leaderboard, promotion), tagged as the CLI's; a failure comes back in
    the result, for the command to explain in its own words."""
    import dagster as dg  # start-up: dagster takes ~0.5 s to import; `promptopt --help` must not wait for it

    run_config = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}, **({"ops": ops} if ops else {})}
    return (
        definitions_here()
        .resolve_job_def(job_name)
        .execute_in_process(
            partition_key=partition_key,
            instance=dg.DagsterInstance.get(),
            raise_on_error=False,
            tags={DRIVER_TAG: "cli", **tags},
            run_config=run_config,
        )
    )


def step_failure_text(result) -> str:
    """Why a run's step failed, as one line in the user's terms: a dg.Failure's own description, else the innermost
    error's message without its class (never `dagster._core.definitions.events.Failure: ...`)."""
    for event in result.all_events:
        if not event.is_step_failure:
            continue
        data = event.step_failure_data
        if data.user_failure_data is not None and data.user_failure_data.description:
            return " ".join(data.user_failure_data.description.split())
        error = data.error
        while error is not None and error.cause is not None:
            error = error.cause
        if error is not None:
            message = re.sub(rf"^(?:[\w.]+\.)?{re.escape(error.cls_name or '')}: ", "", error.message.strip())
            return " ".join(message.split())
    return "the run failed; open it in the Dagster UI for details"
