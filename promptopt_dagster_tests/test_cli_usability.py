"""What a new user meets on the command line: flag errors, failed checks, progress, Ctrl-C, dead runs, long rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from promptopt_dagster.app.quality import predictions_gate
from promptopt_dagster.app.settings import PROJECT_ROOT, get_settings
from promptopt_dagster.core.errors import ContextWindowError
from promptopt_dagster.core.prompts import PromptVersion
from promptopt_dagster.llm.cache import ResponseCache
from promptopt_dagster.llm.factory import build_client
from promptopt_dagster.llm.fake import FakeLLM
from promptopt_dagster.llm.inference import build_requests, check_context, predict
from promptopt_dagster.llm.model_settings import ModelSettings
from promptopt_dagster_tests.fake_llm_servers import FakeLLMServer, FaultPlan
from promptopt_dagster_tests.test_cli import _promptopt, _small_project, _tables


@pytest.fixture
def project(tmp_path):
    return _small_project(tmp_path / "project")


# --- flags -------------------------------------------------------------------------------------------------

# Bad flags and files: the table in test_bad_inputs.py.


@pytest.mark.parametrize("optimizer", ["gepa", "reflective", "metaprompt"])
def test_an_optimizer_that_writes_prompts_refuses_the_embedded_model_up_front(project, optimizer):
    done = _promptopt(project, "optimize", "--dataset", "sst2", "--optimizer", optimizer, backend="local")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert f"optimizer '{optimizer}' needs a model that can write prompts" in done.stderr
    assert "optimizer_model" in done.stderr and "--optimizer fewshot" in done.stderr
    assert not (project / "state" / "warehouse.duckdb").exists()


def test_an_unknown_target_metric_blames_the_flag_not_the_manifest(project):
    done = _promptopt(project, "optimize", "--dataset", "sst2", "--target-metric", "bogus")
    assert done.returncode == 2
    assert "--target-metric 'bogus'" in done.stderr and "accuracy" in done.stderr
    assert "manifest.yaml, dataset" not in done.stderr


def test_every_flag_has_help_and_shows_its_default(project):
    text = _promptopt(project, "optimize", "--help").stdout
    for flag in (
        "--dataset",
        "--max-iterations",
        "--eval-size",
        "--test-size",
        "--optimizer",
        "--target-score",
        "--target-metric",
        "--patience",
        "--seed",
        "--max-requests",
        "--max-tokens",
        "--max-cost-usd",
        "--max-failed-fraction",
        "--report-json",
        "--json",
        "--verbose",
    ):
        assert flag in text
    for shown in ("(default: 200)", "(default: 5)", "(default: 2)", "(default: 0.02)", "(default: fewshot)"):
        assert shown in text
    ui = _promptopt(project, "ui", "--help").stdout
    assert "--port" in ui and "(default: 3000)" in ui and "--host" in ui


# --- output: progress once, a short summary, the JSON on request -----------------------------------------------


def test_progress_is_printed_once_and_the_run_ends_with_a_short_summary(project):
    done = _promptopt(
        project, "optimize", "--dataset", "sst2", "--max-iterations", "1", "--eval-size", "0", "--test-size", "0"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    both = done.stdout + done.stderr
    assert both.count("baseline_predictions sst2 g1-i0: 14/14 rows") == 1  # 6 of the 20 dev rows select
    assert both.count("test best sst2: 20/20 rows") == 1
    summary = done.stdout.strip().splitlines()
    assert len(summary) <= 6 and "held-out test rows (95% interval)" in summary[0]
    assert "stopped: max_iterations" in done.stdout
    assert summary[0].count(" [") == 2  # an interval beside each test score
    assert "{" not in done.stdout  # no JSON dump
    best = project / "state" / "best_prompts" / "sst2.json"
    assert str(best) in done.stdout and PromptVersion.model_validate_json(best.read_text()).output_prompt
    assert "llama_kv_cache" not in both

    as_json = _promptopt(
        project,
        "optimize",
        "--dataset",
        "sst2",
        "--max-iterations",
        "1",
        "--eval-size",
        "0",
        "--test-size",
        "0",
        "--json",
    )
    report = json.loads(as_json.stdout)
    assert report["this_run"]["llm_calls"] == 0 and report["this_run"]["cache_hits"] > 0  # the rerun hit the cache


def test_leaderboard_is_a_read_that_starts_no_run(project):
    before = _promptopt(project, "leaderboard", "sst2")
    assert before.returncode == 0 and "no optimization of sst2 has a final report yet" in before.stdout
    done = _promptopt(
        project,
        "optimize",
        "--dataset",
        "sst2",
        "--max-iterations",
        "1",
        "--eval-size",
        "0",
        "--test-size",
        "0",
        "--json",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = _runs(project)
    shown = _promptopt(project, "leaderboard", "sst2", "--json")
    assert shown.returncode == 0, shown.stderr[-3000:]
    rows = json.loads(shown.stdout)
    assert [(r["optimization"], r["rank"]) for r in rows] == [("sst2", 1)]
    assert rows[0]["best_test_score"] == json.loads(done.stdout)["best_test_score"]
    assert _runs(project) == runs  # no run launched, none recorded


# --- failures in the user's terms ----------------------------------------------------------------------------


def _openai_env(project: Path, srv: FakeLLMServer) -> dict:
    return {
        "PROMPTOPT_TASK__BACKEND": "openai",
        "PROMPTOPT_TASK__BASE_URL": srv.openai_base_url,
        "OPENAI_API_KEY": "sk-test",
        "PROMPTOPT_TASK__MAX_ATTEMPTS": "1",
    }


def _run(project: Path, env_extra: dict, *args: str, **kw) -> subprocess.Popen:
    env = {
        **os.environ,
        "PROMPTOPT_DATA_DIR": str(project / "data"),
        "PROMPTOPT_PROMPTS_DIR": str(project / "prompts"),
        "PROMPTOPT_STATE_DIR": str(project / "state"),
        "PROMPTOPT_OPTIMIZER__BACKEND": "fake",
        **env_extra,
    }
    env.pop("DAGSTER_HOME", None)
    return subprocess.Popen(
        [sys.executable, "-m", "promptopt_dagster.cli", "optimize", "--dataset", "sst2", *args],
        env=env,
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _runs(project: Path) -> list[tuple[str, dg.DagsterRunStatus]]:
    from dagster._core.instance.ref import InstanceRef

    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(project / "state" / "dagster_home"))) as instance:
        return [(r.job_name, r.status) for r in instance.get_runs()]


def test_a_failed_blocking_check_shows_its_own_message(project):
    with FakeLLMServer("openai", faults=FaultPlan(rate=1.0, kinds=("400",), fail_attempts=9)) as srv:
        proc = _run(project, _openai_env(project, srv), "--max-iterations", "1", "--eval-size", "0")
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-3000:]
    error = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(error) == 1
    assert "quality check all_rows_answered on baseline_predictions failed: 14 rows failed (100.0% > 2.0%)" in error[0]
    assert "Traceback" not in err and "blocking asset check" not in err and "ERROR" not in err
    assert len(err.splitlines()) <= 6, err


def test_ctrl_c_prints_one_line_and_marks_the_run_canceled(project):
    """Ctrl-C as a terminal sends it: SIGINT to the whole foreground process group, helper processes included
    (Dagster's compute-log tail watchers used to print a KeyboardInterrupt traceback each)."""
    with FakeLLMServer("openai", answer=lambda r: "positive", latency_s=0.5) as srv:
        env = {**_openai_env(project, srv), "PROMPTOPT_TASK__MAX_IN_FLIGHT": "1"}
        proc = _run(project, env, "--max-iterations", "1", "--eval-size", "0", process_group=0)
        deadline = time.time() + 120
        while not srv.requests and time.time() < deadline:  # wait until the iteration is calling the model
            time.sleep(0.2)
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("interrupted: run ") and "optimize_iteration" in lines[-1] and "canceled" in lines[-1]
    assert len(lines) <= 4, err
    statuses = {job: status for job, status in _runs(project)}
    assert statuses == {
        "prepare_dataset": dg.DagsterRunStatus.SUCCESS,
        "start_optimization": dg.DagsterRunStatus.SUCCESS,
        "optimize_iteration": dg.DagsterRunStatus.CANCELED,
    }


def _prompt_of(request) -> str:
    return json.dumps((request.body or {}).get("messages"), sort_keys=True)


def test_a_killed_run_keeps_every_answer_it_received_and_its_rerun_sends_only_the_rest(project):
    """SIGKILL mid-inference: nothing stays STARTED, and no answer that had arrived is asked again."""
    with FakeLLMServer("openai", answer=lambda r: "positive", latency_s=0.2) as srv:
        env = {**_openai_env(project, srv), "PROMPTOPT_TASK__MAX_IN_FLIGHT": "1"}
        args = ("--max-iterations", "1", "--eval-size", "0", "--test-size", "0")
        proc = _run(project, env, *args)
        deadline = time.time() + 120
        while sum(r.status == 200 for r in list(srv.requests)) < 5 and time.time() < deadline:
            time.sleep(0.05)
        answered = {_prompt_of(r) for r in list(srv.requests) if r.status == 200}
        time.sleep(0.3)  # time enough to commit one answer; not for a batch written every 64 answers or 2 s
        proc.kill()
        proc.communicate(timeout=60)
        sent_before = len(srv.requests)
        again = _run(project, {**env, "PROMPTOPT_TASK__MAX_IN_FLIGHT": "16"}, *args)
        out, err = again.communicate(timeout=300)
        resent = {_prompt_of(r) for r in srv.requests[sent_before:] if r.body}
    assert again.returncode == 0, err[-3000:]
    assert len(answered) >= 5 and resent and not answered & resent
    assert "failed: its process" in err
    runs = _runs(project)
    assert ("optimize_iteration", dg.DagsterRunStatus.FAILURE) in runs
    assert not [r for r in runs if r[1] in (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING)]


# --- rows that do not fit the model ----------------------------------------------------------------------------


class _SmallWindow(FakeLLM):
    """A fake with a 50-token window that counts words as tokens: enough to test the guard's logic."""

    def context_window(self) -> int | None:
        return 50

    def count_tokens(self, texts):
        return [len(t.split()) for t in texts]


def test_rows_longer_than_the_context_are_refused_before_any_call():
    client = _SmallWindow()
    rows = pd.DataFrame(
        {"row_id": [0, 1, 2], "user_input": ["short", "word " * 60, "fine too"], "ground_truth_output": ["a", "b", "c"]}
    )
    prompt = PromptVersion(system_prompt="Label it.", output_prompt="Text: {user_input}\nLabel:")
    with pytest.raises(ContextWindowError) as err:
        predict(client, prompt, rows, max_tokens=4, where="toy/dev.csv")
    message = str(err.value)
    assert "toy/dev.csv" in message and "data row(s) 2 (" in message and "50 tokens" in message
    assert client.requests == []  # nothing was sent
    assert len(predict(client, prompt, rows.drop(index=1), max_tokens=4)) == 2


def test_an_empty_evaluation_set_is_its_own_gate_failure():
    empty = pd.DataFrame({"row_id": pd.Series([], dtype="int64"), "error": pd.Series([], dtype="object")})
    result = predictions_gate(empty, [], 0.02)
    assert not result.passed and "no evaluation rows" in result.message and "failed" not in result.message


@pytest.mark.slow
def test_real_model_refuses_an_over_long_row_before_any_call(project):
    dev = pd.read_csv(project / "data" / "sst2" / "dev.csv", dtype=str, keep_default_na=False)
    dev.loc[7, "user_input"] = "a remarkably long and winding review " * 900  # about 6,000 tokens
    dev.to_csv(project / "data" / "sst2" / "dev.csv", index=False)
    done = _promptopt(project, "optimize", "--dataset", "sst2", "--eval-size", "0", backend="local")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "dev.csv" in done.stderr and "data row(s) 8 (" in done.stderr and "4096 tokens" in done.stderr
    assert "PROMPTOPT_TASK__CONTEXT_TOKENS" in done.stderr  # the way out, for the embedded model
    assert len([line for line in done.stderr.splitlines() if line.startswith("error: ")]) == 1
    assert "Traceback" not in done.stderr
    assert not (project / "state" / "warehouse.duckdb").exists() or _tables(project) == {}
    assert len(ResponseCache(project / "state" / "llm_cache.sqlite")) == 0  # no answer was asked for


def test_the_embedded_model_takes_the_row_once_its_context_setting_is_raised(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROMPTOPT_TASK__CONTEXT_TOKENS", "8192")
    get_settings.cache_clear()
    try:
        settings = get_settings()
    finally:
        get_settings.cache_clear()
    rows = pd.DataFrame({"row_id": [7], "user_input": ["a remarkably long and winding review " * 900]})
    prompt = PromptVersion.load(PROJECT_ROOT / "prompts" / "sst2.json")
    for task in (ModelSettings(), settings.task):  # the default window, then the one the environment asks for
        client = build_client(task, settings.model_dir, 1, None)
        requests = build_requests(client, prompt, rows, 4)
        assert client.context_window() == task.context_tokens
        if task.context_tokens == 4096:
            with pytest.raises(ContextWindowError, match=r"data row\(s\) 8 \(\d{4} tokens\)"):
                check_context(client, requests, [7], prompt, "dev.csv")
        else:
            check_context(client, requests, [7], prompt, "dev.csv")  # fits: no error
    assert settings.task.context_tokens == 8192


@pytest.mark.parametrize(
    "raised, expected",
    [
        (
            dg.Failure(description="Dataset 'toy' has no rows.\n  Run prepare_dataset first."),
            "Dataset 'toy' has no rows. Run prepare_dataset first.",
        ),
        (ValueError("a bad value"), "a bad value"),
    ],
)
def test_a_failed_step_is_explained_without_dagster_class_names(raised, expected):
    from promptopt_dagster.cli.runs import step_failure_text

    @dg.op
    def fails():
        raise raised

    @dg.job
    def broken():
        fails()

    result = broken.execute_in_process(raise_on_error=False)
    text = step_failure_text(result)
    assert text == expected and "dagster" not in text and "Error:" not in text
