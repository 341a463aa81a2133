"""The project's persistent Dagster home, shared by `promptopt optimize` and `dagster dev`."""

from __future__ import annotations

import os
from pathlib import Path

# One run at a time: DuckDB allows a single writing process (dagster issues #16248, #18746).
# The promptopt loggers (inference progress, optimizer candidates) are captured into the run logs.
DAGSTER_YAML = """\
telemetry:
  enabled: false
run_queue:
  max_concurrent_runs: 1
python_logs:
  managed_python_loggers:
    - promptopt
  python_log_level: INFO
"""


def ensure_dagster_home(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(path)
    return path
