"""The project's persistent Dagster home, shared by `promptopt optimize` and `dagster dev`."""

from __future__ import annotations

import os
from pathlib import Path

# One run at a time: DuckDB allows a single writing process (dagster issues #16248, #18746).
# Run monitoring fails runs whose worker never started or never finished canceling. It cannot see a
# run whose process was SIGKILLed (the default run launcher has no health check): the
# dead_cli_run_sensor and the CLI's own start-up do that for CLI runs (defs/runs.py).
# The promptopt loggers (inference progress, optimizer candidates) are captured into the run logs.
DAGSTER_YAML = """\
# Written by promptopt (defs/home.py); delete this file to get the current default back.
telemetry:
  enabled: false
run_queue:
  max_concurrent_runs: 1
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  poll_interval_seconds: 30
python_logs:
  managed_python_loggers:
    - promptopt
  python_log_level: INFO
"""

# What earlier versions wrote; such a file is replaced, a file a person edited is left alone.
_EARLIER_YAML = ("""\
telemetry:
  enabled: false
run_queue:
  max_concurrent_runs: 1
python_logs:
  managed_python_loggers:
    - promptopt
  python_log_level: INFO
""",)


def ensure_dagster_home(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    if not config.exists() or config.read_text() in _EARLIER_YAML:
        config.write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(path)
    return path
