"""Postgres CPU per new connection: 500 connect-select-close cycles against 500 selects and inserts on one
connection, the postmaster's reaped CPU read as bench/backfill.py reads it.

    .venv/bin/python bench/adhoc/connection_cost.py
"""
import sys, time, os
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from promptopt_dagster_tests.postgres_server import PostgresServer
import psycopg2, backfill
pg = PostgresServer().start()
try:
    url = pg.database()
    con = psycopg2.connect(url); con.autocommit = True
    cur = con.cursor(); cur.execute("create table t (k text primary key, v text)")
    n = 500
    for label, fn in [("connect+select+close", lambda i: (lambda c: (c.cursor().execute("select 1"), c.close()))(psycopg2.connect(url))),
                      ("select on one connection", lambda i: cur.execute("select 1")),
                      ("insert on one connection", lambda i: cur.execute("insert into t values (%s, 'x')", (str(i),)))]:
        b0, c0 = backfill.service_cpu_s().get("Postgres", 0), time.process_time()
        t0 = time.perf_counter()
        for i in range(n): fn(i)
        t = time.perf_counter() - t0
        b1, c1 = backfill.service_cpu_s().get("Postgres", 0), time.process_time()
        print(f"{label}: {n} in {t:.2f}s; Postgres CPU {1000*(b1-b0)/n:.2f} ms each, client CPU {1000*(c1-c0)/n:.2f} ms each")
finally:
    pg.stop()
