"""The `promptopt` command as a user runs it: a subprocess with its own data, prompts and state dirs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from promptopt_dagster.app.settings import PROJECT_ROOT

SMALL_ROWS = {"train": 40, "dev": 20, "test": 20}


def _small_project(root: Path) -> Path:
    """A copy of the sst2 entry with few rows, so a fake-model optimize takes seconds."""
    data, prompts = root / "data", root / "prompts"
    (data / "sst2").mkdir(parents=True)
    prompts.mkdir()
    for split, n in SMALL_ROWS.items():
        frame = pd.read_csv(PROJECT_ROOT / "data" / "sst2" / f"{split}.csv", dtype=str, keep_default_na=False)
        frame.head(n).to_csv(data / "sst2" / f"{split}.csv", index=False)
    manifest = (PROJECT_ROOT / "data" / "manifest.yaml").read_text().split("  sms_spam:")[0]
    (data / "manifest.yaml").write_text(manifest)
    shutil.copy(PROJECT_ROOT / "prompts" / "sst2.json", prompts / "sst2.json")
    return root


def _promptopt(root: Path, *args: str, backend: str = "fake", timeout: int = 600) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PROMPTOPT_DATA_DIR": str(root / "data"),
        "PROMPTOPT_PROMPTS_DIR": str(root / "prompts"),
        "PROMPTOPT_STATE_DIR": str(root / "state"),
        "PROMPTOPT_TASK__BACKEND": backend,
        "PROMPTOPT_OPTIMIZER__BACKEND": backend,
    }
    env.pop("DAGSTER_HOME", None)
    return subprocess.run(
        [sys.executable, "-m", "promptopt_dagster.cli", *args],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _tables(root: Path) -> dict[str, pd.DataFrame]:
    with duckdb.connect(str(root / "state" / "warehouse.duckdb"), read_only=True) as con:
        names = [
            r[0]
            for r in con.execute(
                "select table_name from information_schema.tables where table_schema = 'promptopt' order by 1"
            ).fetchall()
        ]
        return {n: con.execute(f"select * from promptopt.{n}").fetchdf() for n in names}


@pytest.fixture(scope="module")
def optimized(tmp_path_factory):
    """One fake-model optimization whose stored results the error tests must leave untouched."""
    root = _small_project(tmp_path_factory.mktemp("cli"))
    done = _promptopt(
        root,
        "optimize",
        "--dataset",
        "sst2",
        "--max-iterations",
        "1",
        "--eval-size",
        "0",
        "--test-size",
        "0",
        "--report-json",
        str(root / "report.json"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def test_optimize_writes_the_report_and_records_runs(optimized):
    report = json.loads((optimized / "report.json").read_text())
    for key in (
        "dataset",
        "iterations",
        "stop_reason",
        "initial_dev_score",
        "best_dev_score",
        "initial_test_score",
        "best_test_score",
        "llm_calls",
        "cache_hits",
        "best_prompt",
    ):
        assert key in report
    assert report["iterations"] == 1 and report["stop_reason"] == "max_iterations"
    assert report["test_size"] == SMALL_ROWS["test"]
    # The runs live in the project's Dagster home, where `dagster dev` will find them.
    assert (optimized / "state" / "dagster_home" / "dagster.yaml").exists()
    assert any((optimized / "state" / "dagster_home").rglob("*.db"))


def test_leaderboard_ranks_every_optimization_of_the_dataset(optimized, tmp_path):
    root = tmp_path / "project"
    shutil.copytree(optimized, root)
    (root / "data" / "optimizations.yaml").write_text(
        "optimizations:\n  sst2_b: {dataset: sst2, seed: 1, eval_size: 0, test_size: 0, stop: {max_iterations: 1}}\n"
    )
    done = _promptopt(root, "optimize", "--optimization", "sst2_b")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "leaderboard of sst2: rank " in done.stdout and " of 2 (`promptopt leaderboard sst2`)" in done.stdout
    shown = _promptopt(root, "leaderboard", "sst2", "--json")
    assert shown.returncode == 0, shown.stderr[-3000:]
    rows = json.loads(shown.stdout)
    reports = {
        r["optimization"]: json.loads(r["report_json"]) for r in _tables(root)["final_report"].to_dict("records")
    }
    assert sorted(r["optimization"] for r in rows) == ["sst2", "sst2_b"] and [r["rank"] for r in rows] == [1, 2]
    for row in rows:
        assert row["best_test_score"] == reports[row["optimization"]]["best_test_score"] and row["current"]
    text = _promptopt(root, "leaderboard", "sst2").stdout
    assert "sst2_b" in text and "held-out test rows" in text

    # Editing sst2_b's entry starts its generation 2; generation 1's report stays as it was, on the board too.
    first = _tables(root)["final_report"].query("optimization == 'sst2_b'")["report_json"].tolist()
    (root / "data" / "optimizations.yaml").write_text(
        "optimizations:\n  sst2_b: {dataset: sst2, seed: 2, eval_size: 0, test_size: 0, stop: {max_iterations: 1}}\n"
    )
    again = _promptopt(root, "optimize", "--optimization", "sst2_b")
    assert again.returncode == 0 and "[sst2_b] generation 2" in again.stderr, again.stderr[-3000:]
    reports = _tables(root)["final_report"].query("optimization == 'sst2_b'").sort_values("generation")
    assert reports["generation"].tolist() == [1, 2] and reports["report_json"].tolist()[0] == first[0]
    rows = json.loads(_promptopt(root, "leaderboard", "sst2", "--json").stdout)
    assert sorted((r["optimization"], r["generation"], r["current"]) for r in rows) == [
        ("sst2", 1, True),
        ("sst2_b", 1, False),
        ("sst2_b", 2, True),
    ]
    unknown = _promptopt(root, "leaderboard", "imdb")
    assert unknown.returncode == 2 and "imdb" in unknown.stderr


@pytest.mark.slow
def test_real_model_optimizes_and_a_rerun_is_served_from_cache(tmp_path):
    """The embedded Gemma 3 270M through the whole loop on 20 dev rows, then the same command again."""
    root = _small_project(tmp_path)
    args = [
        "optimize",
        "--dataset",
        "sst2",
        "--max-iterations",
        "1",
        "--eval-size",
        "20",
        "--test-size",
        "20",
        "--spare-size",
        "20",
        "--report-json",
        str(root / "report.json"),
    ]
    first = _promptopt(root, *args, backend="local")
    assert first.returncode == 0, first.stderr[-3000:]
    # llama.cpp's own notes (printed at ERROR level by llama-cpp-python) go to a log file, not the terminal.
    assert "llama_kv_cache" not in first.stderr + first.stdout
    assert "llama_kv_cache" in (root / "state" / "llama.log").read_text()
    report = json.loads((root / "report.json").read_text())
    assert report["llm_calls"] > 0
    # One-line instruction versus the optimizer's demos: the small base model needs the demos.
    assert report["best_dev_score"] > report["initial_dev_score"]
    preds = _tables(root)["baseline_predictions"]
    # 6 of the 20 dev rows are select rows (a third of a small dev split); the other 14 confirm
    assert len(preds) == 14 and preds["error"].isna().all() and (preds["prediction"].str.strip() != "").any()

    second = _promptopt(root, *args, backend="local")
    assert second.returncode == 0, second.stderr[-3000:]
    rerun = json.loads((root / "report.json").read_text())
    assert rerun["llm_calls"] == 0
    assert rerun["cache_hits"] == report["llm_calls"] + report["cache_hits"]
    assert rerun["best_test_score"] == report["best_test_score"]
