"""The project's persistent Dagster home, shared by `promptopt optimize` and `dagster dev`."""

from __future__ import annotations

import json
import os
from pathlib import Path

from promptopt_dagster.app.settings import get_settings
from promptopt_dagster.llm.store_location import sqlalchemy_url

# Runs go side by side (PROMPTOPT_MAX_CONCURRENT_RUNS, default 3): every warehouse write is a short
# DuckDB transaction that waits for the file lock, and the response cache is SQLite in WAL mode.
# Run monitoring fails runs whose worker never started or never finished canceling. It cannot see a
# run whose process was SIGKILLed (the default run launcher has no health check): the
# dead_cli_run_sensor and the CLI's own start-up do that for CLI runs (defs/runs.py).
# The queue is checked every second (Dagster's default is 5 s), and queued runs are launched on threads,
# so a run the sensor chains starts at once: an optimization is a chain of short runs, and each second
# of launch latency is paid once per iteration (bench/backfill.py measures it).
# The promptopt loggers (inference progress, optimizer candidates) are captured into the run logs.
# Step stdout/stderr are kept where Dagster keeps them by default (<home>/storage), by a subclass of its
# LocalComputeLogManager whose tail processes a terminal's Ctrl-C does not reach (defs/compute_logs.py).
HEADER = "# Written by promptopt (defs/home.py) from its settings; delete this line to keep your own edits.\n"
BODY = """\
telemetry:
  enabled: false
run_queue:
  max_concurrent_runs: {max_concurrent_runs}
  dequeue_interval_seconds: 1
  dequeue_use_threads: true
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  poll_interval_seconds: 30
python_logs:
  managed_python_loggers:
    - promptopt
  python_log_level: INFO
compute_logs:
  module: promptopt_dagster.defs.compute_logs
  class: DetachedTailComputeLogManager
  config:
    base_dir: {storage_dir}
"""
DAGSTER_YAML = HEADER + BODY

# What earlier versions wrote; such a file is replaced, a file a person edited is left alone.
_EARLIER_YAML = (
    """\
telemetry:
  enabled: false
run_queue:
  max_concurrent_runs: 1
python_logs:
  managed_python_loggers:
    - promptopt
  python_log_level: INFO
""",
    "# Written by promptopt (defs/home.py); delete this file to get the current default back.\n"
    + BODY.split("compute_logs:")[0].format(max_concurrent_runs=1),
)


# The cluster deployment keeps Dagster's runs, event logs and schedules in its Postgres database (dagster-postgres,
# its connections kept open: defs/postgres_storage.py), so a run on any machine, the daemon and the webserver see
# one instance. The URL holds no password: libpq reads
# PGPASSWORD. (On Kubernetes, Dagster's Helm chart writes the instance instead; docs/deploy.md.)
# Each run starts as a pod would, in its own process and empty directories (defs/process_launcher.py), which run
# monitoring can health-check: a run whose process died is marked failed, and the daemon retries it (from the
# failed step, twice at most) only then, never after an asset's own failure. The retry pays for nothing the dead
# run was answered: each answer was committed to the shared response cache as it arrived.
POSTGRES_STORAGE = """\
storage:
  custom:
    module: promptopt_dagster.defs.postgres_storage
    class: PooledPostgresStorage
    config:
      postgres_url: {url}
run_launcher:
  module: promptopt_dagster.defs.process_launcher
  class: FreshProcessRunLauncher
run_retries:
  enabled: true
  max_retries: 2
  retry_on_asset_or_op_failure: false
"""


def ensure_dagster_home(path: Path, max_concurrent_runs: int | None = None) -> Path:
    """The home with a dagster.yaml that follows the settings, unless a person took the file over."""
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    settings = get_settings()
    limit = max_concurrent_runs or settings.max_concurrent_runs
    if not config.exists() or config.read_text() in _EARLIER_YAML or config.read_text().startswith(HEADER):
        text = DAGSTER_YAML.format(max_concurrent_runs=limit, storage_dir=json.dumps(str(path / "storage")))
        if settings.deployment == "cluster":
            text += POSTGRES_STORAGE.format(url=json.dumps(sqlalchemy_url(settings.warehouse_url)))
        config.write_text(text)
    os.environ["DAGSTER_HOME"] = str(path)
    return path
