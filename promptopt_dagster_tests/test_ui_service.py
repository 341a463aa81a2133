"""`promptopt ui` as a service: one settings source for every process it starts, and SIGTERM stops them all."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from promptopt_dagster.app.settings import PROJECT_ROOT
from promptopt_dagster_tests.dagster_dev_helpers import (
    alive,
    descendants,
    free_port,
    graphql,
    stop_ui,
    wait_for_webserver,
)

PARTITIONS = """query { assetNodeOrError(assetKey: {path: ["dataset_splits"]}) {
  ... on AssetNode { partitionKeys } } }"""


def _user_folder(tmp_path: Path) -> Path:
    """A folder of the user's own, outside the repository: one dataset, and a .env with relative paths."""
    home = tmp_path / "myproject"
    (home / "data" / "reviews").mkdir(parents=True)
    for split in ("train", "dev", "test"):
        shutil.copy(PROJECT_ROOT / "data" / "sst2" / f"{split}.csv", home / "data" / "reviews" / f"{split}.csv")
    (home / "data" / "manifest.yaml").write_text(
        "datasets:\n  my_reviews:\n    files: {train: reviews/train.csv, dev: reviews/dev.csv, test: reviews/test.csv}\n"
        "    labels: [positive, negative]\n    initial_prompt: sst2.json\n"
    )
    shutil.copytree(PROJECT_ROOT / "prompts", home / "prompts", ignore=shutil.ignore_patterns("promoted"))
    (home / ".env").write_text(
        "PROMPTOPT_STATE_DIR=state\nPROMPTOPT_DATA_DIR=data\nPROMPTOPT_PROMPTS_DIR=prompts\n"
        "PROMPTOPT_TASK__BACKEND=fake\n"
    )
    return home


def _start(home: Path, port: int, log_path: Path) -> subprocess.Popen:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PROMPTOPT_") and k not in ("DAGSTER_HOME", "VIRTUAL_ENV")
    }
    env["PATH"] = "/usr/bin:/bin"
    with open(log_path, "w") as log:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "promptopt"), "ui", "--port", str(port)],
            cwd=home,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # as `promptopt ui &` in a script starts it: SIGINT ignored, which dagster dev must not inherit
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )


@pytest.mark.slow
def test_dotenv_reaches_every_process_and_sigterm_stops_them_all(tmp_path):
    home, port, log_path = _user_folder(tmp_path), free_port(), tmp_path / "ui.log"
    repo_state = PROJECT_ROOT / ".promptopt"
    repo_state_before = repo_state.exists()
    proc = _start(home, port, log_path)
    try:
        wait_for_webserver(port, proc, log_path)
        # the code location (started by dagster dev in the repository) read the user's .env: its datasets, its state
        reply = graphql(port, PARTITIONS, {})
        assert reply["data"]["assetNodeOrError"]["partitionKeys"] == ["my_reviews"], reply
        assert (home / "state" / "dagster_home" / "dagster.yaml").exists()
        assert repo_state.exists() == repo_state_before, "the UI created .promptopt/ in the repository"

        tree = descendants(proc.pid)
        assert len(tree) >= 3, tree  # dagster dev, its webserver, daemon and code server
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)  # what systemd, Docker and Kubernetes send to stop a service
        proc.wait(timeout=20)
        while any(alive(pid) for pid in tree) and time.monotonic() - started < 10:
            time.sleep(0.2)
        left = [pid for pid in tree if alive(pid)]
        assert not left, f"still running {time.monotonic() - started:.1f}s after SIGTERM: {left}"
        assert time.monotonic() - started < 10
        assert proc.returncode == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None or any(alive(pid) for pid in descendants(proc.pid)):
            stop_ui(proc)
    assert "stopped (SIGTERM)" in log_path.read_text()


def _command_lines(pids: list[int]) -> dict[int, str]:
    """What each process is, for a failure message: its command line from /proc (empty if it is gone)."""
    lines = {}
    for pid in pids:
        try:
            lines[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
        except OSError:
            lines[pid] = ""
    return lines


@pytest.mark.slow
def test_sigkill_of_the_ui_leaves_no_dagster_process_behind(tmp_path):
    """SIGKILL runs no handler: the kernel interrupts dagster dev instead (PR_SET_PDEATHSIG), and it stops its
    webserver, daemon and code server as on Ctrl-C."""
    home, port, log_path = _user_folder(tmp_path), free_port(), tmp_path / "ui.log"
    proc = _start(home, port, log_path)
    try:
        wait_for_webserver(port, proc, log_path)
        tree = descendants(proc.pid)
        assert len(tree) >= 3, tree
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)
        # dagster dev's clean shutdown (webserver, daemon threads, code server) took over 30 s once on a
        # loaded 2-core CI machine; a process that was leaked stays forever, so a longer wait still shows one.
        while any(alive(pid) for pid in tree) and time.monotonic() - started < 90:
            time.sleep(0.2)
        left = [pid for pid in tree if alive(pid)]
        assert not left, f"left running after {time.monotonic() - started:.1f}s: {_command_lines(left)}"
    finally:
        for pid in descendants(proc.pid) + (tree if "tree" in locals() else []):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
