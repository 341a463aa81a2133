"""Scorers: exact_match and accuracy through scoring.score(), and loading them with no network."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from promptopt_dagster.app.settings import PROJECT_ROOT
from promptopt_dagster.core.errors import ScorerError
from promptopt_dagster.scoring import available_metrics, score
from promptopt_dagster.scoring.normalize import normalize, to_label

VENV_PYTHON = PROJECT_ROOT / ".venv" / "bin" / "python"
if not VENV_PYTHON.exists():
    VENV_PYTHON = sys.executable


def test_available_metrics():
    assert {"accuracy", "exact_match"} <= set(available_metrics())


def test_unknown_metric_names_the_fix():
    with pytest.raises(ScorerError) as info:
        score("bleurt", ["a"], ["a"])
    assert "bleurt" in str(info.value) and "accuracy" in str(info.value) and "manifest.yaml" in str(info.value)


# --- exact_match -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        ("Paris", "Paris", 1.0),
        ("  Paris \t", "Paris", 1.0),  # trim
        ("PARIS", "paris", 1.0),  # case
        ("Paris\nThe capital of France is Paris.", "Paris", 1.0),  # first line
        ("\n\n  Paris\nmore", "Paris", 1.0),  # first non-empty line
        ("Paris.", "Paris", 1.0),  # surrounding punctuation
        ('"Paris!"', "paris", 1.0),
        ("“Paris”", "Paris", 1.0),
        ("(Paris)", "Paris", 1.0),
        ("Pa-ris", "Paris", 0.0),  # inner punctuation matters
        ("Paris, France", "Paris", 0.0),
        ("The answer is Paris", "Paris", 0.0),
        ("London", "Paris", 0.0),
        ("", "Paris", 0.0),
    ],
)
def test_exact_match_normalisation(prediction, reference, expected):
    result = score("exact_match", [prediction], [reference])
    assert result.metric == "exact_match"
    assert result.per_row == [expected]
    assert result.value == expected


def test_exact_match_aggregate_and_per_row():
    result = score("exact_match", ["a", "B.", None, "c\nd", "x"], ["a", "b", "c", "c", "y"])
    assert result.per_row == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert result.value == pytest.approx(3 / 5)
    assert len(result.per_row) == 5
    assert result.details == {}


def test_exact_match_options_can_be_turned_off():
    assert score("exact_match", ["Paris"], ["paris"], ignore_case=False).per_row == [0.0]
    assert score("exact_match", ["Paris."], ["Paris"], strip=False).per_row == [0.0]
    assert score("exact_match", ["Paris\nx"], ["Paris"], first_line=False).per_row == [0.0]


def test_none_prediction_scores_zero():
    result = score("exact_match", [None, None], ["a", "b"])
    assert result.per_row == [0.0, 0.0] and result.value == 0.0
    result = score("accuracy", [None, "positive"], ["positive", "positive"], labels=["positive", "negative"])
    assert result.per_row == [0.0, 1.0]
    assert result.details["invalid_rate"] == 0.5


def test_empty_input_and_length_mismatch():
    empty = score("accuracy", [], [], labels=["a"])
    assert empty.value == 0.0 and empty.per_row == []
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        score("exact_match", ["a", "b"], ["a"])


# --- accuracy ----------------------------------------------------------------------------------

LABELS = ["positive", "negative"]


@pytest.mark.parametrize(
    "prediction, expected_label",
    [
        ("Positive.", "positive"),
        ("positive", "positive"),
        ("  NEGATIVE  ", "negative"),
        ("negative\nBecause the review is harsh.", "negative"),
        ("Positive, clearly", "positive"),
        ("positive sentiment", "positive"),
        ("neg", None),
        ("pos", None),
        ("positively", None),
        ("The sentiment is positive", None),
        ("neutral", None),
        ("", None),
        (None, None),
    ],
)
def test_to_label(prediction, expected_label):
    assert to_label(prediction, LABELS) == expected_label


def test_to_label_prefers_longest_label():
    assert to_label("not spam", ["spam", "not spam"]) == "not spam"
    assert to_label("spam!", ["spam", "not spam"]) == "spam"


def test_accuracy_maps_answers_to_labels():
    predictions = ["Positive.", "neg", "negative", "NEGATIVE!", None, "positive\nwhy: ..."]
    references = ["positive", "negative", "negative", "positive", "negative", "positive"]
    result = score("accuracy", predictions, references, labels=LABELS)
    assert result.metric == "accuracy"
    assert result.per_row == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert len(result.per_row) == len(predictions)
    assert result.value == pytest.approx(3 / 6)
    # "neg" and None name no label; "NEGATIVE!" names the wrong one but a valid one.
    assert result.details["invalid_rate"] == pytest.approx(2 / 6)


def test_accuracy_labels_default_to_references():
    result = score("accuracy", ["Spam.", "ham", "hamster", "spam"], ["spam", "ham", "ham", "Ham"])
    assert result.per_row == [1.0, 1.0, 0.0, 0.0]
    assert result.details["invalid_rate"] == pytest.approx(1 / 4)


def test_accuracy_label_set_restricts_answers():
    # "neutral" equals no reference, but with an explicit label set including it, it is a valid (wrong) answer.
    with_neutral = score("accuracy", ["neutral"], ["positive"], labels=["positive", "negative", "neutral"])
    assert with_neutral.per_row == [0.0] and with_neutral.details["invalid_rate"] == 0.0
    without = score("accuracy", ["neutral"], ["positive"], labels=LABELS)
    assert without.per_row == [0.0] and without.details["invalid_rate"] == 1.0


def test_accuracy_case_of_labels_and_references_does_not_matter():
    result = score("accuracy", ["positive", "Negative"], ["Positive", "NEGATIVE"], labels=["POSITIVE", "Negative"])
    assert result.per_row == [1.0, 1.0] and result.value == 1.0 and result.details["invalid_rate"] == 0.0


def test_labels_ignored_for_exact_match():
    # exact_match does not take a label set; passing the dataset's labels must not break it.
    result = score("exact_match", ["positive"], ["positive"], labels=LABELS)
    assert result.value == 1.0


def test_normalize_directly():
    assert normalize("  Hello, World!  \nsecond") == "hello, world"
    assert normalize(None) == ""
    assert normalize("\n \n") == ""
    assert normalize("A.", first_line=False, ignore_case=False, strip=False) == "A."


# --- offline loading ---------------------------------------------------------------------------

OFFLINE_SCRIPT = textwrap.dedent(
    """
    import os, socket, sys

    assert "evaluate" not in sys.modules and "datasets" not in sys.modules
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args)[:200])
        raise OSError("network access attempted in an offline test")

    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.create_connection = refuse

    from promptopt_dagster.scoring.registry import METRICS_DIR, load_metric

    acc = load_metric("accuracy").compute(predictions=["Positive.", "neg"], references=["positive", "negative"],
                                          labels=["positive", "negative"])
    assert acc["accuracy"] == 0.5 and acc["scores"] == [1.0, 0.0] and acc["invalid_rate"] == 0.5, acc
    em = load_metric("exact_match").compute(predictions=["Paris.", "Rome"], references=["paris", "Oslo"])
    assert em["exact_match"] == 0.5 and em["scores"] == [1.0, 0.0], em
    assert "evaluate" in sys.modules
    assert not attempts, attempts
    print("OFFLINE-OK")
    """
)


def test_metrics_load_without_network(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"}
    }
    proc = subprocess.run(
        [str(VENV_PYTHON), "-c", OFFLINE_SCRIPT], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.stdout.strip().endswith("OFFLINE-OK")
