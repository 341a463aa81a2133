"""`promptopt ui`: `dagster dev` on this project's Dagster home, as a well-behaved service process.

Two things a plain `exec dagster dev` got wrong, and why this module exists:

- **One settings source.** `dagster dev` starts a webserver, a daemon and a code server, and the code
  server runs in the repository (workspace.yaml's working directory), where a `.env` in the folder the
  user started from is not read. So the settings are resolved here, once, in the user's folder
  (environment first, then `.env`, as pydantic-settings does), and handed to every child process as
  environment variables, relative paths made absolute. Every process then sees the same data,
  prompts and state directories.
- **Signals.** Under systemd, Docker or Kubernetes a service is stopped with SIGTERM, and `dagster dev`
  ignores it (its children keep running). This process stays the parent: it starts `dagster dev` in a
  process group of its own and turns SIGTERM, SIGINT and SIGHUP into what Ctrl-C does to that group
  (dagster dev's own clean shutdown), then kills whatever is left after `STOP_GRACE_S`. If this
  process is SIGKILLed, the kernel sends dagster dev that SIGINT itself (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from promptopt_dagster.app.settings import PROJECT_ROOT, Settings, dotenv_settings, get_settings
from promptopt_dagster.cli.overrides import number
from promptopt_dagster.cli.parser import HelpFormatter
from promptopt_dagster.defs.home import ensure_dagster_home

#: seconds the webserver, daemon and code server get to stop after the first signal, before SIGKILL
STOP_GRACE_S = 6.0
_PATH_SETTINGS = ("data_dir", "prompts_dir", "state_dir", "model_dir")


def add_commands(sub) -> None:
    """The `ui` subcommand, on the `promptopt` parser's subparsers."""
    ui = sub.add_parser(
        "ui",
        help="start the Dagster UI and daemon on this project's Dagster home",
        description="Start `dagster dev` (web UI, daemon, sensors) on this project's Dagster home, "
        "with the interpreter and packages this command runs with, and the settings of "
        "the folder it is started from (environment, then .env). SIGTERM, SIGINT "
        "(Ctrl-C) and SIGHUP stop every process it started.",
        formatter_class=HelpFormatter,
    )
    ui.add_argument("--port", type=number(int, ge=1), default=3000, help="port of the web UI")
    ui.add_argument("--host", default="127.0.0.1", help="address the web UI listens on (0.0.0.0: every interface)")


def child_environment(settings: Settings) -> dict[str, str]:
    """This process's environment plus every PROMPTOPT_* setting of `.env`, with the directory settings
    absolute, so a child started in another folder resolves the same settings."""
    env = {**dotenv_settings(Path.cwd() / ".env"), **os.environ}  # the environment wins over .env, as in Settings
    for name in _PATH_SETTINGS:
        key = f"PROMPTOPT_{name.upper()}"
        if not env.get(key, "").startswith("gs://"):  # a gs:// directory is mirrored by each process itself
            env[key] = str(getattr(settings, name))  # absolute (Settings resolves them in the starting folder)
    return env


def ui(args: argparse.Namespace) -> int:
    """Run `dagster dev` from this interpreter's environment (no PATH lookup) until it ends or a signal
    stops it; the exit code is dagster dev's, or 128 + the signal."""
    settings = get_settings()
    ensure_dagster_home(settings.dagster_home)  # sets DAGSTER_HOME, which child_environment passes on
    env = child_environment(settings)
    argv = [
        sys.executable,
        "-m",
        "dagster",
        "dev",
        "-w",
        str(PROJECT_ROOT / "workspace.yaml"),
        "--port",
        str(args.port),
        "--host",
        args.host,
    ]
    print(
        f"Dagster UI on http://{args.host}:{args.port} (Dagster home {env['DAGSTER_HOME']}, data "
        f"{settings.data_dir}); Ctrl-C or SIGTERM stops it.",
        flush=True,
    )
    child = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=env, process_group=0, preexec_fn=_interrupt_when_orphaned)
    received: list[int] = []

    def stop(signum, _frame) -> None:
        if not received:
            _signal_group(child.pid, signal.SIGINT)  # what Ctrl-C does to dagster dev: its clean shutdown
        received.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    while child.poll() is None and not received:
        time.sleep(0.2)
    if received:
        deadline = time.monotonic() + STOP_GRACE_S
        while child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        _signal_group(child.pid, signal.SIGKILL)  # whatever is left of the group (the code server, a run)
        child.wait()
        print(f"promptopt ui: stopped ({signal.Signals(received[0]).name}).", file=sys.stderr, flush=True)
        return 128 + received[0]
    _signal_group(child.pid, signal.SIGKILL)  # dagster dev ended by itself: leave no orphan behind
    return child.returncode


def _interrupt_when_orphaned() -> None:
    """In the child, before exec: if this process is killed outright (SIGKILL leaves no handler to run), the
    kernel sends dagster dev SIGINT, its own clean shutdown, so no webserver or daemon is left behind. Linux
    only (prctl); elsewhere a SIGKILL of `promptopt ui` leaves `dagster dev` to be stopped by hand.

    SIGINT is set back to its default first: a process started in the background by a shell without job
    control (`cmd &` in a script, as CI and service wrappers do) inherits SIGINT ignored, exec keeps it
    ignored, and dagster dev would then ignore both this signal and the SIGINT `stop` sends it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGINT), 0, 0, 0)


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass
