"""A throwaway Postgres cluster for tests: Debian's server binaries, a data dir in /tmp, 127.0.0.1 only.

No service is installed or left running: `initdb` makes a cluster in a fresh directory, `pg_ctl`
starts it on a free port (its socket in the same directory), and `stop` ends it, by the postmaster's
process id when `pg_ctl stop` does not. Postgres refuses to run as root, so under root (a CI
container) the cluster belongs to Debian's `postgres` user and its commands run through `runuser`.
Authentication is `trust` on 127.0.0.1: the URL carries no password, as the shared deployment's
must not (a password is read from PGPASSWORD or ~/.pgpass there).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

USER = "promptopt"


def _binaries() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if versions:
        return Path(versions[-1]).parent
    raise RuntimeError("no Postgres server binaries: install Debian's `postgresql` (.ci/run does)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One cluster; `database()` gives each test its own database on it."""

    def __init__(self) -> None:
        self.bin = _binaries()
        self.root = Path(tempfile.mkdtemp(prefix="promptopt-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.pid: int | None = None
        self._databases = 0
        self._as: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chmod(self.root, 0o755)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> PostgresServer:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", USER, "-A", "trust", "-E", "UTF8", "--no-sync")
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c max_connections=200"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start"
        )
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new, empty database's URL."""
        import psycopg2

        self._databases += 1
        name = f"test_{self._databases}"
        con = psycopg2.connect(self.url())
        con.autocommit = True
        try:
            con.cursor().execute(f"create database {name}")
        finally:
            con.close()
        return self.url(name)

    def stop(self) -> None:
        if self.pid is not None:
            try:
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except (subprocess.SubprocessError, OSError):
                pass
            deadline = time.monotonic() + 10
            while _alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(self.pid):
                os.kill(self.pid, signal.SIGKILL)
            self.pid = None
        shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
