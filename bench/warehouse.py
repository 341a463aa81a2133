"""Which warehouse can many machines write at once? The loop's table traffic on each candidate store.

Runs that share no disk need tables that many processes write and read at the same time. Each
candidate gets the same traffic: W writer processes, one optimization each, write I iterations of a
predictions-like table (one partition per optimization and iteration, 200 rows of about 150
characters of input plus answers and scores), each partition replacing what was there (as the IO
manager does) after reading the previous iteration's partition (as the next iteration's assets do),
and then rewrite their first partition (a retried run). Then one process reads every optimization's
rows grouped (the leaderboard's kind of query). Each store runs the traffic with the writers one
after another (concurrency 1) and all at once (concurrency W), and prints the wall times, the
speedup, the mean seconds of a partition write and read, the aggregate read, and whether every
partition holds its 200 rows exactly once.

Stores:
  duckdb     one DuckDB file (today's local default; processes take turns on its lock) - the reference
  postgres   Postgres tables, one transaction per partition (delete + insert)
  parquet    one Parquet object per partition in GCS (here the gcp-storage-emulator), read back with DuckDB
  ducklake   DuckLake: a Postgres catalog and Parquet data files. Its extension exists only for duckdb 1.4.4,
             so this store runs only in an environment with duckdb==1.4.4 and duckdb-ext-ducklake (and
             duckdb-ext-postgres) installed; its data files are on local disk here (the extension's GCS
             access needs httpfs and the real service).

    .venv/bin/python bench/warehouse.py [--stores duckdb,postgres,parquet] [--writers 6] [--iterations 5]

Postgres comes from Debian's `postgresql` (a throwaway cluster, as the tests make one); the GCS
emulator runs in this process's threads, so the parquet store's latencies are the emulator's, an upper
bound on GCS's per-request overhead within one region only in order of magnitude.
"""

from __future__ import annotations

import argparse
import glob
import io
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

ROWS = 200
TABLE = "predictions"


def partition(optimization: str, iteration: int) -> pd.DataFrame:
    text = "an unremarkable film whose actors do what they can with a script that gives them little " * 2
    return pd.DataFrame(
        {
            "optimization": optimization,
            "iteration": iteration,
            "row_id": range(ROWS),
            "user_input": [f"{i}: {text[: 120 + i % 60]}" for i in range(ROWS)],
            "prediction": ["positive" if i % 3 else "negative" for i in range(ROWS)],
            "ground_truth_output": ["positive" if i % 2 else "negative" for i in range(ROWS)],
            "score": [float(i % 2 == i % 3 > 0) for i in range(ROWS)],
            "latency_s": [0.05 + i / 1e4 for i in range(ROWS)],
            "prompt_tokens": [300 + i for i in range(ROWS)],
        }
    )


# --- stores: write(frame, optimization, iteration), read(optimization, iteration), aggregate() ---------------


class DuckDBFile:
    def __init__(self, target: str) -> None:
        self.path = target

    def _con(self):
        import duckdb

        delay = 0.02
        while True:
            try:
                return duckdb.connect(self.path)
            except duckdb.IOException as exc:  # another process holds the file: wait, as the IO manager does
                if "lock" not in str(exc).lower():
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def write(self, frame, optimization, iteration):
        con = self._con()
        try:
            con.register("frame", frame)
            con.execute(f"create table if not exists {TABLE} as select * from frame limit 0")
            con.execute("begin")
            con.execute(f"delete from {TABLE} where optimization = ? and iteration = ?", [optimization, iteration])
            con.execute(f"insert into {TABLE} select * from frame")
            con.execute("commit")
        finally:
            con.close()

    def read(self, optimization, iteration):
        con = self._con()
        try:
            return con.execute(
                f"select * from {TABLE} where optimization = ? and iteration = ?", [optimization, iteration]
            ).fetchdf()
        finally:
            con.close()

    def aggregate(self):
        con = self._con()
        try:
            return con.execute(
                f"select optimization, iteration, count(*) n, avg(score) score from {TABLE} group by 1, 2"
            ).fetchdf()
        finally:
            con.close()


class Postgres:
    def __init__(self, target: str) -> None:
        import psycopg2

        self.con = psycopg2.connect(target)

    def write(self, frame, optimization, iteration):
        from psycopg2.extras import execute_values

        with self.con, self.con.cursor() as cur:  # one transaction
            cur.execute(
                f"create table if not exists {TABLE} (optimization text, iteration bigint, row_id bigint, "
                "user_input text, prediction text, ground_truth_output text, score double precision, "
                "latency_s double precision, prompt_tokens bigint)"
            )
            cur.execute(f"delete from {TABLE} where optimization = %s and iteration = %s", (optimization, iteration))
            execute_values(
                cur, f"insert into {TABLE} values %s", list(frame.itertuples(index=False, name=None)), page_size=500
            )

    def read(self, optimization, iteration):
        with self.con, self.con.cursor() as cur:
            cur.execute(f"select * from {TABLE} where optimization = %s and iteration = %s", (optimization, iteration))
            return pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])

    def aggregate(self):
        with self.con, self.con.cursor() as cur:
            cur.execute(f"select optimization, iteration, count(*) n, avg(score) score from {TABLE} group by 1, 2")
            return pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])


class ParquetGCS:
    def __init__(self, target: str) -> None:
        from google.cloud import storage

        self.bucket = storage.Client(project="bench").bucket(target)

    def _name(self, optimization, iteration):
        return f"{TABLE}/optimization={optimization}/iteration={iteration}.parquet"

    def write(self, frame, optimization, iteration):
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        self.bucket.blob(self._name(optimization, iteration)).upload_from_string(buffer.getvalue())

    def read(self, optimization, iteration):
        data = self.bucket.blob(self._name(optimization, iteration)).download_as_bytes()
        return pd.read_parquet(io.BytesIO(data))

    def aggregate(self):
        import duckdb

        frames = [pd.read_parquet(io.BytesIO(b.download_as_bytes())) for b in self.bucket.list_blobs(prefix=TABLE)]
        every = pd.concat(frames, ignore_index=True)  # noqa: F841 (read by the query below)
        return duckdb.sql(
            "select optimization, iteration, count(*) n, avg(score) score from every group by 1, 2"
        ).fetchdf()


class DuckLake:
    def __init__(self, target: str) -> None:
        import duckdb

        catalog, data = target.split("|")
        directory = glob.glob(str(Path(sys.prefix) / "lib/python3*/site-packages/duckdb_ext/extensions"))
        self.con = duckdb.connect(config={"extension_directory": directory[0], "autoinstall_known_extensions": False})
        self.con.execute("load ducklake")
        self.con.execute("load postgres")
        self.con.execute(f"attach 'ducklake:postgres:{catalog}' as lake (data_path '{data}')")
        self.con.execute("use lake")

    def _retry(self, work):
        import duckdb

        delay = 0.02
        for _ in range(200):  # DuckLake commits optimistically: a conflicting commit is retried
            try:
                return work()
            except duckdb.TransactionException:
                try:
                    self.con.execute("rollback")
                except duckdb.Error:
                    pass
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        raise RuntimeError("ducklake: too many conflicts")

    def write(self, frame, optimization, iteration):
        self.con.register("frame", frame)

        def work():
            self.con.execute(f"create table if not exists {TABLE} as select * from frame limit 0")
            self.con.execute("begin")
            self.con.execute(f"delete from {TABLE} where optimization = ? and iteration = ?", [optimization, iteration])
            self.con.execute(f"insert into {TABLE} select * from frame")
            self.con.execute("commit")

        self._retry(work)

    def read(self, optimization, iteration):
        return self._retry(
            lambda: self.con.execute(
                f"select * from {TABLE} where optimization = ? and iteration = ?", [optimization, iteration]
            ).fetchdf()
        )

    def aggregate(self):
        return self.con.execute(
            f"select optimization, iteration, count(*) n, avg(score) score from {TABLE} group by 1, 2"
        ).fetchdf()


STORES = {"duckdb": DuckDBFile, "postgres": Postgres, "parquet": ParquetGCS, "ducklake": DuckLake}


def writer(store: str, target: str, optimization: str, iterations: int, env: dict, out) -> None:
    """One optimization's traffic: read the previous partition, write this one; then rewrite the first."""
    os.environ.update(env)
    s = STORES[store](target)
    writes, reads = [], []
    for iteration in [*range(iterations), 0]:
        if iteration > 0:
            started = time.perf_counter()
            got = s.read(optimization, iteration - 1)
            reads.append(time.perf_counter() - started)
            assert len(got) == ROWS, (store, optimization, iteration, len(got))
        started = time.perf_counter()
        s.write(partition(optimization, iteration), optimization, iteration)
        writes.append(time.perf_counter() - started)
    out.put((writes, reads))


def traffic(store: str, target: str, writers: int, iterations: int, concurrent: bool, env: dict, tag: str) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    names = [f"{tag}-opt{i}" for i in range(writers)]
    started = time.perf_counter()
    procs = []
    for name in names:
        p = ctx.Process(target=writer, args=(store, target, name, iterations, env, queue))
        p.start()
        procs.append(p)
        if not concurrent:
            p.join()
    for p in procs:
        p.join()
    wall = time.perf_counter() - started
    if any(p.exitcode for p in procs):
        raise SystemExit(f"{store}: a writer failed")
    writes, reads = [], []
    for _ in procs:
        w, r = queue.get()
        writes += w
        reads += r
    os.environ.update(env)
    started = time.perf_counter()
    rows = STORES[store](target).aggregate()
    aggregate_s = time.perf_counter() - started
    mine = rows[rows["optimization"].isin(names)]
    exact = len(mine) == writers * iterations and bool((mine["n"] == ROWS).all())
    return {
        "wall": wall,
        "write": statistics.mean(writes),
        "read": statistics.mean(reads),
        "aggregate": aggregate_s,
        "exact": exact,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--stores", default="duckdb,postgres,parquet", help=f"comma-separated, of: {', '.join(STORES)}")
    ap.add_argument("--writers", type=int, default=6, help="optimizations written at once")
    ap.add_argument("--iterations", type=int, default=5, help="partitions per optimization (then one rewrite)")
    args = ap.parse_args()
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    unknown = [s for s in stores if s not in STORES]
    if unknown:
        ap.error(f"unknown store(s) {', '.join(unknown)}; choose from {', '.join(STORES)}")

    from promptopt_dagster_tests.postgres_server import PostgresServer

    server = PostgresServer().start() if {"postgres", "ducklake"} & set(stores) else None
    emulator = None
    work = Path(tempfile.mkdtemp(prefix="warehouse-bench-"))
    try:
        print(
            f"{args.writers} writers x {args.iterations} partitions of {ROWS} rows (+1 rewrite each); "
            f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}"
        )
        print(
            f"{'store':<9} {'wall c=1':>9} {'wall c=' + str(args.writers):>9} {'speedup':>8} "
            f"{'write s':>8} {'read s':>7} {'aggregate s':>12} {'exact':>6}"
        )
        for store in stores:
            env: dict = {}
            if store == "duckdb":
                target = str(work / "warehouse.duckdb")
            elif store == "postgres":
                target = server.database()
            elif store == "parquet":
                from gcp_storage_emulator.server import create_server

                from promptopt_dagster_tests.postgres_server import _free_port

                port = _free_port()
                emulator = create_server("127.0.0.1", port, in_memory=True, default_bucket="bench")
                emulator.start()
                env = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}"}
                target = "bench"
            else:
                (work / "lake").mkdir()
                catalog = server.database().rsplit("/", 1)[1]
                target = f"dbname={catalog} host=127.0.0.1 port={server.port} user=promptopt|{work / 'lake'}/"
            one = traffic(store, target, args.writers, args.iterations, False, env, "seq")
            many = traffic(store, target, args.writers, args.iterations, True, env, "par")
            print(
                f"{store:<9} {one['wall']:>8.1f}s {many['wall']:>8.1f}s {one['wall'] / many['wall']:>7.2f}x "
                f"{many['write']:>8.3f} {many['read']:>7.3f} {many['aggregate']:>12.3f} "
                f"{'yes' if one['exact'] and many['exact'] else 'NO':>6}",
                flush=True,
            )
    finally:
        if emulator is not None:
            emulator.stop()
        if server is not None:
            server.stop()
    print(
        "wall: the traffic's seconds (process start included); write/read: mean seconds of one partition at "
        "concurrency W; aggregate: one grouped read of every row; exact: every partition holds its rows once"
    )


if __name__ == "__main__":
    main()
