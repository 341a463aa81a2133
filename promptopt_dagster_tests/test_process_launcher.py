"""FreshProcessRunLauncher's reaper: what a finished run process cost, and its exit seen by the health check."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

from dagster._core.launcher.base import WorkerStatus

from promptopt_dagster.defs.process_launcher import CPU_TAG, PEAK_RSS_TAG, FreshProcessRunLauncher


class _Tags:
    """Stands in for the instance: the reaper only adds tags to the finished run."""

    def __init__(self) -> None:
        self.tags: dict[str, dict] = {}

    def add_run_tags(self, run_id: str, tags: dict) -> None:
        self.tags.setdefault(run_id, {}).update(tags)


def _launched(launcher: FreshProcessRunLauncher, run_id: str, code: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", code])
    launcher._children[run_id] = process
    return process


def test_the_reaper_records_cpu_seconds_and_peak_memory_and_the_health_check_sees_the_exit(tmp_path):
    instance, launcher = _Tags(), FreshProcessRunLauncher()
    launcher.register_instance(instance)
    busy = _launched(launcher, "busy", "x = bytearray(64 * 2**20); sum(i * i for i in range(3 * 10**6))")
    run = SimpleNamespace(run_id="busy", tags={})
    assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
    (tmp_path / "run").mkdir()
    launcher._reap("busy", busy, tmp_path / "run")
    tags = instance.tags["busy"]
    assert float(tags[CPU_TAG]) > 0.1  # three million squares are not free
    assert int(tags[PEAK_RSS_TAG]) >= 64  # the 64 MiB it held
    assert launcher.check_run_worker_health(run).status == WorkerStatus.SUCCESS
    assert not (tmp_path / "run").exists() and busy.returncode == 0

    failed = _launched(launcher, "failed", "raise SystemExit(3)")
    launcher._reap("failed", failed, tmp_path / "gone")
    health = launcher.check_run_worker_health(SimpleNamespace(run_id="failed", tags={}))
    assert health.status == WorkerStatus.FAILED and "exited with 3" in health.msg
