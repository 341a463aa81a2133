"""A run launcher that starts each run as a container would: its own process, in an empty directory.

The cluster deployment's promise is that a run needs nothing a run before it left on a disk. On
Kubernetes the K8sRunLauncher proves it every time (each run is a new pod). On one machine this
launcher makes the same conditions: each run is `dagster api execute_run` (what a run pod executes)
started in a new, empty working directory with an empty HOME and an empty PROMPTOPT_STATE_DIR, the
environment otherwise the deployment's. The generated dagster.yaml of the cluster deployment uses it
(defs/home.py), so `promptopt ui` with PROMPTOPT_DEPLOYMENT=cluster is a small cluster on one machine.

Unlike the default launcher (whose runs are children of the code server, which Dagster cannot
health-check), it reports each run's process to run monitoring: a run whose process died without
finishing (killed by the OOM killer, SIGKILL, a lost node) is marked failed by the daemon, and the
optimization's sensor or a retry carries it on.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import dagster._check as check
from dagster._core.launcher.base import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import ConfigurableClass, ConfigurableClassData

PID_TAG = "promptopt/run_pid"
WORKDIR_TAG = "promptopt/run_workdir"
CPU_TAG = "promptopt/run_cpu_s"  # the run process's CPU seconds (user + system), set when it exits
PEAK_RSS_TAG = "promptopt/run_peak_rss_mb"  # its peak resident memory


class FreshProcessRunLauncher(RunLauncher, ConfigurableClass):
    """Each run in its own process with an empty working directory, HOME and state directory."""

    def __init__(self, inst_data: ConfigurableClassData | None = None, keep_workdirs: bool = False) -> None:
        self._inst_data = inst_data
        self._keep = keep_workdirs
        self._children: dict[str, subprocess.Popen] = {}
        self._exits: dict[str, int] = {}  # exit codes of the runs the reaper has waited for
        self._lock = threading.Lock()
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict:
        from dagster import Field

        return {
            "keep_workdirs": Field(
                bool, is_required=False, default_value=False, description="keep each run's directory (debugging)"
            )
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: dict) -> FreshProcessRunLauncher:
        return cls(inst_data=inst_data, **config_value)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        origin = check.not_none(run.job_code_origin, "a run without a code origin cannot be launched in a process")
        args = ExecuteRunArgs(
            job_origin=origin, run_id=run.run_id, instance_ref=self._instance.get_ref(), set_exit_code_on_failure=True
        ).get_command_args()
        # the code location's interpreter runs dagster's CLI (its entry point may be a bare `dagster` not on PATH)
        command = [origin.executable_path or sys.executable, "-m", "dagster", *args[args.index("api") :]]
        root = Path(tempfile.mkdtemp(prefix=f"promptopt-run-{run.run_id[:8]}-"))
        for part in ("cwd", "home", "state"):
            (root / part).mkdir()
        env = {**os.environ, "HOME": str(root / "home"), "PROMPTOPT_STATE_DIR": str(root / "state")}
        env.pop("DAGSTER_HOME", None)  # the run gets its instance from the arguments, as a pod does
        process = subprocess.Popen(
            command,
            cwd=root / "cwd",
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C of the daemon's terminal is not the run's
        )
        with self._lock:
            self._children[run.run_id] = process
        self._instance.add_run_tags(run.run_id, {PID_TAG: str(process.pid), WORKDIR_TAG: str(root)})
        threading.Thread(target=self._reap, args=(run.run_id, process, root), daemon=True).start()

    def _reap(self, run_id: str, process: subprocess.Popen, root: Path) -> None:
        """Wait for the run's process (no zombie is left), record what it cost, and remove its directory, as a
        pod's goes with it.

        The CPU seconds and peak memory tags are what a pod's resource requests are sized from, and what
        bench/backfill.py divides by the cores to say how far concurrency can go on a machine. `wait4`
        rather than Popen.wait because only it returns the child's resource usage; the exit code is then
        kept here for the health check, which must not wait for the process a second time."""
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except ChildProcessError:  # reaped elsewhere: nothing to record
            code, usage = process.wait(), None
        else:
            code = process.returncode = os.waitstatus_to_exitcode(status)
        with self._lock:
            self._exits[run_id] = code
        if usage is not None:
            cost = {CPU_TAG: f"{usage.ru_utime + usage.ru_stime:.2f}", PEAK_RSS_TAG: str(usage.ru_maxrss // 1024)}
            try:
                self._instance.add_run_tags(run_id, cost)
            except Exception:  # noqa: BLE001 - the storage went away with the daemon: the run is done all the same
                pass
        if not self._keep:
            shutil.rmtree(root, ignore_errors=True)

    def _pid(self, run: DagsterRun | None) -> int | None:
        value = run.tags.get(PID_TAG) if run else None
        return int(value) if value else None

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        pid = self._pid(run)
        if run is None or pid is None or run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        try:
            os.kill(pid, signal.SIGTERM)  # the run's process stops its steps and marks the run canceled
        except ProcessLookupError:
            return False
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        """RUNNING while the run's process lives; FAILED when it is gone and the run never finished."""
        with self._lock:
            process, code = self._children.get(run.run_id), self._exits.get(run.run_id)
        if process is not None:
            if code is None:
                return CheckRunHealthResult(WorkerStatus.RUNNING)
            return CheckRunHealthResult(
                WorkerStatus.SUCCESS if code == 0 else WorkerStatus.FAILED, f"the run's process exited with {code}"
            )
        pid = self._pid(run)  # launched by another daemon process: the process table says
        if pid is None:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "no process recorded for the run")
        return CheckRunHealthResult(
            WorkerStatus.RUNNING if _alive(pid) else WorkerStatus.FAILED,
            "" if _alive(pid) else f"the run's process {pid} is gone",
        )


def _alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie (exited, not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
