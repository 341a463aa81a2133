"""User scorers through `promptopt optimize`, as a team adds one: a module of their own on PYTHONPATH."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from promptopt_dagster_tests.test_cli import _promptopt, _small_project, _tables

TEAM_SCORERS = textwrap.dedent('''
    """The team's own scorer; it logs each call so the test can see the run used it."""
    import json, os

    def first_word(predictions, references):
        with open(os.environ["TEAM_SCORER_LOG"], "a") as log:
            log.write(json.dumps(len(predictions)) + "\\n")
        return [float(bool(p.split()) and p.split()[0].strip(".,!").lower() == r.lower())
                for p, r in zip(predictions, references)]
''')


def _team_project(root: Path, user_scorers: str, sst2_scoring: str) -> Path:
    _small_project(root)
    (root / "team_scorers.py").write_text(TEAM_SCORERS)
    manifest = (root / "data" / "manifest.yaml").read_text()
    assert "    target_metric: accuracy\n" in manifest
    manifest = manifest.replace("    target_metric: accuracy\n", textwrap.indent(sst2_scoring, "    "))
    (root / "data" / "manifest.yaml").write_text(f"scorers:\n  {user_scorers}\n{manifest}")
    return root


def _run(root: Path, *args: str, backend: str):
    os.environ["TEAM_SCORER_LOG"] = str(root / "scorer_calls.log")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    try:
        return _promptopt(root, *args, backend=backend)
    finally:
        os.environ.pop("TEAM_SCORER_LOG")
        os.environ["PYTHONPATH"] = os.environ["PYTHONPATH"].split(os.pathsep, 1)[1]


def test_a_user_scorer_that_shadows_a_builtin_stops_the_cli_with_both_named(tmp_path):
    root = _team_project(tmp_path, "accuracy: team_scorers:first_word", "target_metric: accuracy\n")
    done = _run(root, "optimize", "--dataset", "sst2", backend="fake")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "'accuracy'" in done.stderr and "team_scorers:first_word" in done.stderr
    assert "built-in" in done.stderr and "metrics/accuracy" in done.stderr and "rename" in done.stderr
    assert not (root / "state" / "warehouse.duckdb").exists()  # stopped before any run wrote anything


@pytest.mark.slow
def test_the_real_model_is_optimized_on_a_user_scorer_by_dotted_path(tmp_path):
    root = _team_project(
        tmp_path,
        "team_first_word: team_scorers:first_word",
        textwrap.dedent("""\
        scorers:
          - {name: accuracy, weight: 1}
          - {name: team_first_word, weight: 1}
        target_metric: team_first_word
    """),
    )
    done = _run(
        root,
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
        backend="local",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        "team_first_word (weight 1); optimizing team_first_word" in done.stderr
    )  # status lines go to stderr, the summary to stdout
    calls = [json.loads(line) for line in (root / "scorer_calls.log").read_text().splitlines()]
    # baseline and refined on the 14 confirm rows (6 of the 20 dev rows select), test initial and best on 20;
    # the candidates, scored on select rows, add more
    assert calls.count(14) >= 2 and calls.count(20) >= 2
    report = json.loads((root / "report.json").read_text())
    assert report["metric"] == "team_first_word"
    assert set(report["test_scores"]["best"]) == {"accuracy", "team_first_word", "aggregate"}
    assert report["best_test_score"] == report["test_scores"]["best"]["team_first_word"]

    tables = _tables(root)
    metrics, preds = tables["baseline_metrics"], tables["baseline_predictions"].sort_values("row_id")
    mine = metrics[metrics["scorer"] == "team_first_word"].sort_values("row_id")
    expected = [
        float(bool(p.split()) and p.split()[0].strip(".,!").lower() == r.lower())
        for p, r in zip(preds["prediction"].fillna(""), preds["ground_truth_output"])
    ]
    assert mine["score"].tolist() == expected and mine["is_target"].all()
    compare = tables["comparison_report"].iloc[0]
    assert compare["metric"] == "team_first_word"
    assert compare["baseline_score"] == pytest.approx(sum(expected) / len(expected))
