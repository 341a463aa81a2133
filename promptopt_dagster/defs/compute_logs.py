"""Dagster's local compute-log capture, with its helper processes out of the terminal's reach.

Dagster mirrors a step's stdout and stderr to files with a `tail -F` per stream plus a small Python
watcher that kills the tail if the run dies (`dagster._core.execution.compute_logs`). Those four
processes share the terminal's process group, so Ctrl-C on `promptopt optimize` reached the watchers
too, and each printed a `watch_orphans.py ... KeyboardInterrupt` traceback above our one-line
message. Here they start in a process group of their own: the terminal's Ctrl-C reaches only the
run, which stops them itself (as Dagster does), and the watcher still kills its tail if the run is
SIGKILLed. Everything else, where logs are kept and how the UI reads them, is Dagster's
`LocalComputeLogManager`; the generated dagster.yaml (defs/home.py) names this class.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Generator, Sequence
from contextlib import ExitStack, contextmanager

from dagster._core.execution.compute_logs import _clean_up_subprocess, _fileno, redirect_to_file
from dagster._core.execution.scripts import watch_orphans
from dagster._core.storage.compute_log_manager import CapturedLogContext, ComputeIOType
from dagster._core.storage.local_compute_log_manager import IO_TYPE_EXTENSION, LocalComputeLogManager
from dagster._utils import ensure_file, touch_file


class DetachedTailComputeLogManager(LocalComputeLogManager):
    """LocalComputeLogManager whose mirroring processes ignore the terminal's Ctrl-C (own process group)."""

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> DetachedTailComputeLogManager:
        return cls(inst_data=inst_data, **config_value)

    @contextmanager
    def capture_logs(self, log_key: Sequence[str]) -> Generator[CapturedLogContext, None, None]:
        if os.name == "nt":  # no process groups there; Dagster's own way
            with super().capture_logs(log_key) as captured:
                yield captured
            return
        with ExitStack() as stack:
            for stream, io_type in ((sys.stdout, ComputeIOType.STDOUT), (sys.stderr, ComputeIOType.STDERR)):
                stack.enter_context(_mirror(stream, self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[io_type])))
            yield CapturedLogContext(log_key)
        touch_file(self.complete_artifact_path(log_key))  # as Dagster's: the capture is complete


@contextmanager
def _mirror(stream, path: str):
    """dagster's mirror_stream_to_file, with tail and watcher started as a new process group."""
    ensure_file(path)
    out = stream if _fileno(stream) else None
    tail = watcher = None
    try:
        tail = subprocess.Popen(["tail", "-F", "-c", "+0", path], stdout=out, process_group=0)
        watcher = subprocess.Popen(
            [sys.executable, os.path.abspath(watch_orphans.__file__), str(os.getpid()), str(tail.pid)], process_group=0
        )
        with redirect_to_file(stream, path):
            yield
    finally:
        time.sleep(float(os.getenv("DAGSTER_COMPUTE_LOG_TAIL_WAIT_AFTER_FINISH", "0")))  # as Dagster's, see #23336
        for process in (tail, watcher):
            if process is not None:
                _clean_up_subprocess(process)
