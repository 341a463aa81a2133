"""Drive a real `dagster dev` (`promptopt ui`) from tests and benchmarks: start it, backfill, wait."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg

from promptopt_dagster.app.settings import PROJECT_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(state: Path, port: int, log_path: Path, extra_env: dict | None = None) -> tuple[subprocess.Popen, dict]:
    """`promptopt ui` as a user starts it from a fresh clone: the venv's script, the venv NOT on PATH."""
    env = {
        **os.environ,
        "PROMPTOPT_STATE_DIR": str(state),
        "PROMPTOPT_TASK__BACKEND": "fake",
        "PROMPTOPT_OPTIMIZER__BACKEND": "fake",
        "PATH": "/usr/bin:/bin",
        **(extra_env or {}),
    }
    env.pop("DAGSTER_HOME", None)
    env.pop("VIRTUAL_ENV", None)
    log = open(log_path, "w")
    # Its own session, as a service manager starts it; stop_ui() stops it as one does (SIGTERM).
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "promptopt"), "ui", "--port", str(port)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    return proc, {**env, "DAGSTER_HOME": str(state / "dagster_home"), "PATH": os.environ["PATH"]}


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`, from /proc (a process in another process group included)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_ui(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM to `promptopt ui`'s process group, as systemd or Kubernetes stops a service; anything still
    running after `timeout_s` is SIGKILLed so no test leaves a webserver behind."""
    tree = descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout_s)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    for pid in [proc.pid, *tree]:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    proc.wait(timeout=30)


def wait_for_webserver(port: int, proc: subprocess.Popen, log_path: Path, timeout_s: float = 180) -> dict:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        assert proc.poll() is None, f"promptopt ui exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as reply:
                return json.loads(reply.read())
        except OSError:
            time.sleep(1)
    raise AssertionError(f"no webserver on port {port}:\n{log_path.read_text()[-3000:]}")


def open_instance(env: dict):
    from dagster._core.instance.ref import InstanceRef

    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(env["DAGSTER_HOME"]))


def graphql(port: int, query: str, variables: dict) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        method="POST",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        return json.loads(reply.read())


BACKFILL = """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message }
  ... on PartitionSetNotFoundError { message } ... on InvalidSubsetError { message } } }"""


def backfill(port: int, job: str, partitions: list[str], run_config: dict | None = None) -> str:
    """A job backfill as the UI's 'Launch backfill' dialog sends it."""
    selector = {
        "partitionSetName": f"{job}_partition_set",
        "repositorySelector": {
            "repositoryName": "__repository__",
            "repositoryLocationName": "promptopt_dagster.definitions",
        },
    }
    params = {"selector": selector, "partitionNames": partitions}
    if run_config:
        params["runConfigData"] = run_config
    reply = graphql(port, BACKFILL, {"params": params})
    result = reply["data"]["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", reply
    return result["backfillId"]


def wait_for(env: dict, done, timeout_s: float, what: str):
    """Poll the instance every 2 s until `done(runs)`, with one instance for the whole wait: making one reads
    the storage's tables anew and, on Postgres, opens new connections, work a benchmark would count."""
    deadline = time.time() + timeout_s
    with open_instance(env) as instance:
        while time.time() < deadline:
            runs = list(instance.get_runs())
            found = done(runs)
            if found:
                return runs
            failed = [
                (r.job_name, r.tags.get("dagster/partition"))
                for r in runs
                if r.status == dg.DagsterRunStatus.FAILURE and r.tags.get("promptopt/driver") != "cli"
            ]
            assert not failed, f"runs failed while waiting for {what}: {failed}\n{_failures(env, runs)}"
            time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}: {[(r.job_name, r.status.value) for r in runs]}")


def _failures(env: dict, runs: list) -> str:
    """What the failed runs' logs say: their failure events' messages and errors (the end of each)."""
    out = []
    with open_instance(env) as instance:
        for run in runs:
            if run.status != dg.DagsterRunStatus.FAILURE:
                continue
            for record in instance.all_logs(run.run_id):
                event = record.dagster_event
                if event is not None and event.is_failure:
                    error = event.step_failure_data.error.to_string() if event.is_step_failure else ""
                    out.append(f"{run.job_name}: {event.message} {error}"[-2000:])
                elif record.level >= 40:
                    out.append(f"{run.job_name}: {record.user_message}"[-2000:])
    return "\n".join(out)
