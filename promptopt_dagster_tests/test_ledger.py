"""The usage ledger: every paid model call belongs to the optimization that made it, whatever became of its run.

Issue 22, defect 4: spend was summed from what assets materialized, so a canceled or killed run's calls
were lost, a rerun from the cache looked free, and an optimization that found another's answers in the
cache won the leaderboard's cheaper-first tie. Here the fake OpenAI server's count of answered requests
is what was paid, and the figures reported must equal it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from promptopt_dagster.llm import ledger
from promptopt_dagster.llm.base import LLMRequest
from promptopt_dagster.llm.cache import CachedClient, ResponseCache
from promptopt_dagster.llm.fake import FakeLLM
from promptopt_dagster_tests.fake_llm_servers import FakeLLMServer
from promptopt_dagster_tests.test_cli import _small_project


def _req(text: str) -> LLMRequest:
    return LLMRequest(prompt=f"Review: {text}\nSentiment:", max_tokens=4)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    """Where the cache and the ledger live: the SQLite file of one machine, or a Postgres database (a URL)
    of the shared deployment, on a real server (conftest.postgres_server)."""
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return tmp_path / "llm_cache.sqlite"


def _ledger_rows(location: Path | str) -> list[dict]:
    if isinstance(location, str):
        import psycopg2
        import psycopg2.extras

        with psycopg2.connect(location) as con, con.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute("select * from llm_ledger order by id")
            return [dict(r) for r in cur.fetchall()]
    with sqlite3.connect(location) as con:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute("select * from llm_ledger order by id")]


# --- the ledger itself ------------------------------------------------------------------------------------------


def test_a_paid_answer_is_recorded_once_and_a_cached_rerun_pays_nothing(store):
    path = store
    client = CachedClient(FakeLLM(responder=lambda r: "positive"), ResponseCache(path))
    client.attribution = ledger.Attribution("sst2", 1, 0, "run-1", "task")
    requests = [_req("good"), _req("bad"), _req("good")]  # the third is the first again: sent once
    client.generate(requests)
    rows = _ledger_rows(path)
    assert len(rows) == 2 and len(ResponseCache(path)) == 2
    assert {
        (
            r["optimization"],
            r["generation"],
            r["iteration"],
            r["run_id"],
            r["role"],
            r["backend"],
            r["requests"],
            r["error"],
        )
        for r in rows
    } == {("sst2", 1, 0, "run-1", "task", "fake", 1, 0)}
    assert {r["cache_key"] for r in rows} == {k for (k,) in ResponseCache(path)._execute("select key from llm_cache")}

    again = CachedClient(FakeLLM(responder=lambda r: "positive"), ResponseCache(path))
    again.attribution = ledger.Attribution("other", 1, 0, "run-2", "task")
    again.generate(requests)  # every answer from the cache
    assert len(_ledger_rows(path)) == 2
    assert ledger.spend(path, "sst2", 1).llm_calls == 2 and ledger.spend(path, "other").llm_calls == 0
    assert ledger.spend(path, run_id="run-1").requests == 2


def test_the_ledger_row_and_the_cached_answer_are_one_transaction(store, monkeypatch):
    path = store
    client = CachedClient(FakeLLM(responder=lambda r: "positive"), ResponseCache(path))

    def broken(con, rows):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(ledger, "record", broken)
    with pytest.raises(sqlite3.OperationalError):
        client.generate([_req("good")])
    assert len(ResponseCache(path)) == 0  # not cached without its ledger row: a rerun asks (and records) it again
    monkeypatch.undo()
    client.generate([_req("good")])
    assert len(ResponseCache(path)) == 1 and len(_ledger_rows(path)) == 1


def test_a_failed_call_that_was_sent_is_paid_and_not_cached(store):
    path = store

    def flaky(request):
        if "bad" in request.prompt:
            raise RuntimeError("503 after retries")
        return "positive"

    class Retrying(FakeLLM):
        def _generate(self, requests):
            out = super()._generate(requests)
            for r in out:
                r.attempts = 3 if r.error else 1
            return out

    client = CachedClient(Retrying(responder=flaky), ResponseCache(path))
    client.generate([_req("good"), _req("bad")])
    paid = ledger.spend(path)
    assert (paid.llm_calls, paid.requests, paid.errors) == (2, 4, 1)
    assert len(ResponseCache(path)) == 1
    client.generate([_req("good"), _req("bad")])  # the failed row is asked again, and paid again
    assert ledger.spend(path).requests == 7


def test_calls_without_tags_are_recorded_with_no_optimization(store):
    path = store
    CachedClient(FakeLLM(), ResponseCache(path)).generate([_req("fine")])
    assert [r["optimization"] for r in _ledger_rows(path)] == [None]


def _write_many(path: str, name: str, n: int) -> None:
    client = CachedClient(FakeLLM(responder=lambda r: "positive"), ResponseCache(path))
    client.attribution = ledger.Attribution(name, 1, 0, f"run-{name}", "task")
    for i in range(n):  # one answer per call: as many commits as answers, interleaved with the other process
        client.generate([_req(f"{name} row {i}")])


def test_two_processes_record_side_by_side(store):
    path = store
    ResponseCache(path)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(path), name, 60)) for name in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert ledger.spend(path, "a").llm_calls == 60 and ledger.spend(path, "b").llm_calls == 60
    assert len(ResponseCache(path)) == 120 and len(_ledger_rows(path)) == 120


def test_the_budget_counts_what_a_killed_run_paid(store):
    from promptopt_dagster.core.decisions import Budget, LoopState, Spend, StopPolicy, decide
    from promptopt_dagster.defs.loop.assets import with_paid

    path = store
    killed = CachedClient(FakeLLM(responder=lambda r: "positive"), ResponseCache(path))
    killed.attribution = ledger.Attribution("sst2", 1, 0, "killed-run", "task")
    killed.generate([_req(f"row {i}") for i in range(7)])  # paid, then the run died before its assets were stored
    this = Spend(requests=3, llm_calls=3, cache_hits=7, metric_calls=10)  # its rerun: 3 new calls, 7 from the cache
    rerun = CachedClient(FakeLLM(responder=lambda r: "positive"), ResponseCache(path))
    rerun.attribution = ledger.Attribution("sst2", 1, 0, "rerun", "task")
    rerun.generate([_req(f"row {i}") for i in range(10)])
    spent = with_paid(this, Spend(), str(path), "sst2", 1)
    assert (spent.requests, spent.llm_calls, spent.cache_hits, spent.metric_calls) == (10, 3, 7, 10)
    policy = StopPolicy(target_score=1.0, patience=5, max_iterations=5, budget=Budget(max_requests=8))
    assert decide(0, 0.5, 0.6, LoopState(), policy, spent).stop_reason == "budget"
    assert decide(0, 0.5, 0.6, LoopState(), policy, this).stop_reason is None  # what the assets alone saw


# --- through the CLI, against the fake OpenAI server -------------------------------------------------------------


class HeldServer:
    """The fake OpenAI server answering "positive", except the `hold`-th request, which it holds until the
    test releases it and then fails: the client that sent it is gone by then, so nobody paid for it."""

    def __init__(self, hold: int | None = None):
        self.hold, self.count, self.lock = hold, 0, threading.Lock()
        self.arrived, self.release = threading.Event(), threading.Event()
        self.srv = FakeLLMServer("openai", answer=self._answer, latency_s=0.05)

    def _answer(self, req) -> str:
        with self.lock:
            self.count += 1
            held = self.count == self.hold
        if held:
            self.arrived.set()
            self.release.wait(120)
            raise RuntimeError("held until its client was gone")
        return "positive"

    def paid(self) -> int:
        """Requests the server answered: what a provider bills."""
        return sum(r.status == 200 and r.path.endswith("/chat/completions") for r in list(self.srv.requests))

    def __enter__(self):
        self.srv.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.srv.stop()


def _env(project: Path, srv: FakeLLMServer, **extra) -> dict:
    env = {
        **os.environ,
        "PROMPTOPT_DATA_DIR": str(project / "data"),
        "PROMPTOPT_PROMPTS_DIR": str(project / "prompts"),
        "PROMPTOPT_STATE_DIR": str(project / "state"),
        "PROMPTOPT_OPTIMIZER__BACKEND": "fake",
        "PROMPTOPT_TASK__BACKEND": "openai",
        "PROMPTOPT_TASK__BASE_URL": srv.openai_base_url,
        "OPENAI_API_KEY": "sk-test",
        "PROMPTOPT_TASK__MAX_ATTEMPTS": "1",
        "PROMPTOPT_TASK__MAX_IN_FLIGHT": "1",
        "PROMPTOPT_TASK__INPUT_PRICE_PER_MTOK": "1.0",
        "PROMPTOPT_TASK__OUTPUT_PRICE_PER_MTOK": "4.0",
        **extra,
    }
    env.pop("DAGSTER_HOME", None)
    return env


ARGS = ("--max-iterations", "1", "--eval-size", "0", "--test-size", "0")


def _optimize(project: Path, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "promptopt_dagster.cli", "optimize", *args],
        env=env,
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _interrupt_at_the_held_request(project: Path, held: HeldServer, sig: int) -> None:
    """Start an optimization, stop it with `sig` while the server holds a request, then let the server fail it."""
    proc = _optimize(project, _env(project, held.srv), "--dataset", "sst2", *ARGS)
    deadline = time.time() + 240
    while not held.arrived.wait(0.5) and proc.poll() is None and time.time() < deadline:
        pass
    if not held.arrived.is_set():
        proc.kill()
        pytest.fail(f"the run never reached the held request: {proc.communicate()[1][-3000:]}")
    time.sleep(1.0)  # the answer before the held one is committed by now
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    held.release.set()  # the server fails the held request on a closed connection: nobody paid for it
    time.sleep(0.3)


def _rerun_to_the_end(project: Path, held: HeldServer) -> tuple[dict, str]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "promptopt_dagster.cli",
            "optimize",
            "--dataset",
            "sst2",
            *ARGS,
            "--report-json",
            str(project / "report.json"),
        ],
        env=_env(project, held.srv),
        cwd=project,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((project / "report.json").read_text()), done.stdout


def _runs(project: Path) -> dict[str, dg.DagsterRunStatus]:
    from dagster._core.instance.ref import InstanceRef

    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(project / "state" / "dagster_home"))) as instance:
        return {r.run_id: (r.job_name, r.status) for r in instance.get_runs()}


def _check_paid_equals_the_server(project: Path, held: HeldServer, report: dict, summary: str, killed: str) -> None:
    whole = next(line for line in summary.splitlines() if "whole optimization:" in line)
    print(f"\n[{killed}] fake server answered {held.paid()}; the summary says: {whole.split('; ')[-1]}")
    assert f"whole optimization: {held.paid():,} paid calls, {held.paid():,} requests" in whole
    paid = report["paid"]["total"]
    assert paid["requests"] == paid["llm_calls"] == held.paid()
    assert paid["cost_usd"] > 0
    # the leaderboard's cost is what was paid
    board = report_board(project)
    row = board[board["optimization"] == "sst2"].iloc[0]
    assert (int(row["llm_calls"]), int(row["requests"])) == (held.paid(), held.paid())
    assert abs(float(row["cost_usd"]) - paid["cost_usd"]) < 1e-9


def report_board(project: Path):
    import duckdb

    with duckdb.connect(str(project / "state" / "warehouse.duckdb"), read_only=True) as con:
        return con.execute("select * from promptopt.leaderboard").fetchdf()


def test_a_sigkilled_run_s_calls_count_after_its_rerun(tmp_path):
    project = _small_project(tmp_path / "project")
    with HeldServer(hold=8) as held:
        _interrupt_at_the_held_request(project, held, signal.SIGKILL)
        paid_before_the_kill = held.paid()
        assert paid_before_the_kill == 7
        report, summary = _rerun_to_the_end(project, held)
        _check_paid_equals_the_server(project, held, report, summary, "SIGKILL")
    killed = [
        run_id
        for run_id, (job, status) in _runs(project).items()
        if job == "optimize_iteration" and status == dg.DagsterRunStatus.FAILURE
    ]
    assert len(killed) == 1  # marked failed by the rerun; its calls are its own in the ledger
    assert ledger.spend(project / "state" / "llm_cache.sqlite", "sst2", run_id=killed[0]).llm_calls == 7


def test_a_canceled_run_s_calls_count_in_status_and_in_the_report(tmp_path, monkeypatch):
    """Ctrl-C marks the run canceled (as `promptopt cancel` does under `dagster dev`); its paid calls stay its own."""
    from promptopt_dagster.cli import jobs as cli_jobs
    from promptopt_dagster.defs.webserver_client import RunView

    project = _small_project(tmp_path / "project")
    cache = project / "state" / "llm_cache.sqlite"
    with HeldServer(hold=6) as held:
        _interrupt_at_the_held_request(project, held, signal.SIGINT)
        canceled = [
            run_id
            for run_id, (job, status) in _runs(project).items()
            if job == "optimize_iteration" and status == dg.DagsterRunStatus.CANCELED
        ]
        assert len(canceled) == 1 and held.paid() == 5

        # `promptopt status sst2` while the optimization stands canceled: the canceled run paid 5 calls
        class Server:  # the webserver's view of the runs, as `status` reads it
            url = "http://webserver"

            def runs(self, tags=None, limit=200, run_ids=None):
                from promptopt_dagster.defs.names import OPTIMIZATION_TAG

                runs = list(_runs(project).items())  # newest first
                return [
                    RunView(
                        run_id=run_id,
                        job=job,
                        status=status.value,
                        created=len(runs) - i,
                        tags={
                            OPTIMIZATION_TAG: "sst2",
                            "promptopt/dataset": "sst2",
                            **({"dagster/partition": "sst2|g1-i0"} if job == "optimize_iteration" else {}),
                        },
                        ended=None,
                    )
                    for i, (run_id, (job, status)) in enumerate(runs)
                ]

            def error_of(self, run_id):
                return None

        monkeypatch.setattr(cli_jobs, "_ledger_path", lambda: cache, raising=False)
        view = cli_jobs.optimization_view(Server(), "sst2")
        assert view["state"] == "canceled" and view["generation"] == "1"
        assert view["spend"]["llm_calls"] == view["spend"]["requests"] == held.paid() == 5
        run = next(r for r in view["runs"] if r["run_id"] == canceled[0])
        assert run["status"] == "CANCELED" and run["paid"]["llm_calls"] == 5
        assert any("CANCELED" in line and "this run paid 5 calls" in line for line in view["_lines"])

        report, summary = _rerun_to_the_end(project, held)
        _check_paid_equals_the_server(project, held, report, summary, "canceled")
    assert ledger.spend(cache, "sst2", run_id=canceled[0]).llm_calls == 5


def test_an_optimization_answered_from_another_s_cache_pays_nothing_and_does_not_win_the_tie(tmp_path):
    project = _small_project(tmp_path / "project")
    same = {"dataset": "sst2", "stop": {"max_iterations": 1}, "eval_size": 0, "test_size": 0}
    (project / "data" / "optimizations.yaml").write_text(
        yaml.safe_dump({"optimizations": {"a_paid": same, "b_cached": same}})
    )
    with HeldServer() as held:
        reports = {}
        for name in ("a_paid", "b_cached"):
            before = held.paid()
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "promptopt_dagster.cli",
                    "optimize",
                    "--optimization",
                    name,
                    "--report-json",
                    str(project / f"{name}.json"),
                ],
                env=_env(project, held.srv),
                cwd=project,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert done.returncode == 0, done.stderr[-3000:]
            reports[name] = json.loads((project / f"{name}.json").read_text())
            reports[name]["_sent"] = held.paid() - before
    a, b = reports["a_paid"], reports["b_cached"]
    assert a["_sent"] > 0 and b["_sent"] == 0  # b asked nothing the cache did not have
    assert a["best_test_score"] == b["best_test_score"]
    board = report_board(project).set_index("optimization")
    # the same work: the tie is not b's for having found a's answers in the cache (b sorts after a by name)
    assert (board.loc["a_paid", "rank"], board.loc["b_cached", "rank"]) == (1, 2)
    assert board.loc["a_paid", "answers"] == board.loc["b_cached", "answers"]
    assert board.loc["b_cached", "cost_usd"] == 0.0 and board.loc["a_paid", "cost_usd"] > 0  # what each paid
    assert board.loc["a_paid", "llm_calls"] == a["_sent"] and board.loc["b_cached", "llm_calls"] == 0
    assert a["paid"]["total"]["llm_calls"] == a["_sent"] and b["paid"]["total"]["llm_calls"] == 0


def test_status_of_an_unknown_name_says_it_is_neither_an_optimization_nor_a_run(monkeypatch):
    """Issue 22, defect 10 (beside the spend in `status`): `status nosuch` said "no run with id"."""
    import argparse

    from promptopt_dagster.cli import jobs as cli_jobs
    from promptopt_dagster.core.errors import PromptOptError

    class Server:
        url = "http://webserver"

        def runs(self, **kw):
            return []

    monkeypatch.setattr(cli_jobs, "_server", lambda args: Server())
    with pytest.raises(
        PromptOptError, match="'nosuch' is neither an optimization in .* nor a run id; known optimizations: .*sst2"
    ):
        cli_jobs.status(argparse.Namespace(target="nosuch", json=False, url=None))
