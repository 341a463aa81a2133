"""The built-in `evaluate` metric modules: agreement with reference implementations, behaviour, offline loading.

Every module is loaded the way the project loads it, `evaluate.load(<directory>)` through
`registry.load_metric`, and called through evaluate's public `compute()`. Where a reference
implementation exists (scikit-learn, rouge_score, sacrebleu) the aggregate and every per-row score
must agree with it to 1e-9 on a corpus chosen to be awkward: empty strings, unicode, punctuation
only, 2,000-word texts, multi-line answers, duplicates, whitespace only.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap

import pytest

from promptopt_dagster.scoring.normalize import normalize, to_label
from promptopt_dagster.scoring.registry import available_metrics, load_metric

TOL = 1e-9
SENTINEL = "\x00<no label>"  # the class of answers that name no label: outside every label set

NEW_MODULES = ["bleu", "chrf", "f1", "json_valid", "label_set", "numeric_match", "regex_match", "rouge"]


def _long_text(seed: int, words: int) -> str:
    rng = random.Random(seed)
    vocab = [
        "the",
        "cat",
        "cats",
        "running",
        "runs",
        "ran",
        "model",
        "models",
        "answer",
        "answering",
        "prompt",
        "optimisation",
        "quickly",
        "data",
        "a",
        "of",
        "is",
        "was",
        "generalization",
        "generalise",
        "42",
        "1,234",
    ]
    lines, line = [], []
    for _ in range(words):
        line.append(rng.choice(vocab))
        if rng.random() < 0.08:
            line[-1] += rng.choice([".", ",", "!", "?"])
        if rng.random() < 0.02:
            lines.append(" ".join(line))
            line = []
    lines.append(" ".join(line))
    return "\n".join(lines)


LONG_A = _long_text(1, 2100)
LONG_B = _long_text(2, 700)
# rouge_score's rougeL is quadratic in pure Python (1.4 s for two 2,000-word texts), so the
# long-against-long rows stay at 2,100 x 700 and 700 x 600 words to keep the reference fast.
LONG_B_EDITED = " ".join(w for i, w in enumerate(LONG_B.split(" ")) if i % 7)  # a seventh of the words dropped

# (prediction, reference): text-similarity corpus for rouge, bleu and chrf.
CORPUS = [
    ("The cat sat on the mat.", "The cat sat on the mat."),
    ("The cat sat on the mat.", "The cat sat on the mat."),  # exact duplicate row
    ("the cat is sitting on a mat", "The cat sat on the mat."),
    ("Cats are running quickly", "the cat runs quick"),  # stemming matters
    ("", "a reference nobody answered"),  # empty prediction
    ("an answer to nothing", ""),  # empty reference
    ("", ""),  # both empty
    ("   \t ", "some words"),  # whitespace-only prediction
    ("  ", "  "),  # whitespace-only both
    ("?!...", "..."),  # punctuation only
    ("!!!", "!!!"),
    ("Café crème brûlée, s'il vous plaît", "café creme brulee s'il vous plait"),  # accents
    ("我喜欢吃苹果", "我喜欢苹果"),  # CJK: rouge_score sees no tokens
    ("日本語のテキストです", "日本語のテキストです"),  # identical CJK
    ("great movie 😀👍", "great movie 😀"),  # emoji
    ("مرحبا بالعالم", "مرحبا يا عالم"),  # Arabic (RTL)
    ("שלום עולם", "שלום עולם"),  # Hebrew (RTL), identical
    ("Line one of the answer.\nLine two follows.\n\nLine four, after a blank.", "Line one of the answer.\nLine 2."),
    (LONG_A, LONG_B),  # 2,100 words against 700
    (LONG_A, "the cat"),  # long answer, short reference
    ("the cat", LONG_A),  # short answer, long reference
    (LONG_B_EDITED, LONG_B),  # long against long, mostly shared
    ("1,234 models answered 42 prompts", "42 prompts were answered by 1,234 models"),
    ("A B C D", "a b c d"),  # case
]
PREDICTIONS = [p for p, _ in CORPUS]
REFERENCES = [r for _, r in CORPUS]

# (prediction, reference): classification corpus for accuracy, f1 and label_set.
CLASSIFIED = [
    ("Positive.", "positive"),
    ("positive", "positive"),
    ("positive", "positive"),  # duplicate
    ("  NEGATIVE  ", "negative"),
    ("negative\nBecause the review is harsh.", "negative"),
    ("Positive, clearly", "negative"),
    ("positive sentiment", "neutral"),
    ("neutral", "neutral"),
    ("neg", "negative"),  # names no label
    ("The sentiment is positive", "positive"),  # names no label
    ("", "positive"),  # empty answer
    ("   \n\t", "neutral"),  # whitespace only
    ("?!", "negative"),  # punctuation only
    ("Très bien !", "très bien"),  # accents
    ("TRÈS BIEN", "positive"),
    ("好", "好"),  # CJK label
    ("好的", "好"),  # CJK: "好" followed by a letter is not the label
    ("😀", "positive"),  # emoji only
    ("positive " + LONG_A, "positive"),  # 2,000-word answer starting with the label
    (LONG_A, "negative"),
    ("positive", ""),  # empty reference
    ("", ""),  # both empty
]
C_PREDICTIONS = [p for p, _ in CLASSIFIED]
C_REFERENCES = [r for _, r in CLASSIFIED]


@pytest.fixture(scope="module")
def metric():
    return load_metric  # evaluate.load(<metrics dir>/<name>), cached per name


def test_every_module_is_available():
    assert set(NEW_MODULES) | {"accuracy", "exact_match"} <= set(available_metrics())


def _check_shape(name, out, n):
    assert isinstance(out[name], float) and 0.0 <= out[name] <= 1.0, out[name]
    assert len(out["scores"]) == n
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in out["scores"]), out["scores"]


# --- accuracy and f1 against scikit-learn -------------------------------------------------------------


def _mapped(predictions, labels):
    mapped = [to_label(p, labels) for p in predictions]
    return [SENTINEL if m is None else m for m in mapped]  # "" is a label when a reference is empty


@pytest.mark.parametrize("labels", [None, ["positive", "negative", "neutral"], ["POSITIVE", "Negative", "très bien"]])
def test_accuracy_agrees_with_sklearn(metric, labels):
    from sklearn.metrics import accuracy_score

    out = metric("accuracy").compute(
        predictions=C_PREDICTIONS, references=C_REFERENCES, **({"labels": labels} if labels else {})
    )
    label_set = labels or sorted({normalize(r) for r in C_REFERENCES})
    y_true = [normalize(r) for r in C_REFERENCES]
    y_pred = _mapped(C_PREDICTIONS, label_set)
    assert out["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=TOL)
    assert out["scores"] == [float(t == p) for t, p in zip(y_true, y_pred)]
    assert out["invalid_rate"] == pytest.approx(y_pred.count(SENTINEL) / len(y_pred), abs=TOL)


@pytest.mark.parametrize(
    "labels",
    [
        None,
        ["positive", "negative", "neutral"],  # "très bien" and "好" references fall outside the set
        ["POSITIVE", "Negative", "neutral", "très bien", "好", "mixed"],  # "mixed": no row has it, left out
        ["positive", "Positive", "negative"],  # duplicates after normalisation
    ],
)
def test_f1_agrees_with_sklearn(metric, labels):
    from sklearn.metrics import f1_score, precision_score, recall_score

    out = metric("f1").compute(
        predictions=C_PREDICTIONS, references=C_REFERENCES, **({"labels": labels} if labels else {})
    )
    _check_shape("f1", out, len(C_PREDICTIONS))
    y_true = [normalize(r) for r in C_REFERENCES]
    if labels:
        label_set = list(dict.fromkeys(normalize(label) for label in labels))
    else:
        label_set = sorted(set(y_true) - {""})  # an empty reference is no class
    y_pred = _mapped(C_PREDICTIONS, label_set)
    present = [label for label in label_set if label in y_true or label in y_pred]
    assert list(out["per_label"]) == present
    common = dict(labels=present, zero_division=0)
    assert out["f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", **common), abs=TOL)
    assert out["precision"] == pytest.approx(precision_score(y_true, y_pred, average="macro", **common), abs=TOL)
    assert out["recall"] == pytest.approx(recall_score(y_true, y_pred, average="macro", **common), abs=TOL)
    per_label = f1_score(y_true, y_pred, average=None, **common)
    for label, expected in zip(present, per_label):
        assert out["per_label"][label] == pytest.approx(expected, abs=TOL), label
    assert out["scores"] == [float(t == p) for t, p in zip(y_true, y_pred)]


def test_f1_per_row_is_correctness_and_matches_accuracy(metric):
    labels = ["positive", "negative", "neutral"]
    f1 = metric("f1").compute(predictions=C_PREDICTIONS, references=C_REFERENCES, labels=labels)
    acc = metric("accuracy").compute(predictions=C_PREDICTIONS, references=C_REFERENCES, labels=labels)
    assert f1["scores"] == acc["scores"]


def test_f1_small_cases(metric):
    f1 = metric("f1")
    # always answering the majority label: accuracy 2/3, but macro F1 punishes the ignored label
    out = f1.compute(predictions=["yes", "yes", "yes"], references=["yes", "yes", "no"])
    assert out["per_label"] == {"no": 0.0, "yes": pytest.approx(0.8)}
    assert out["f1"] == pytest.approx(0.4) and out["scores"] == [1.0, 1.0, 0.0]
    # an answer naming no label is a false negative for its true label only
    out = f1.compute(predictions=["maybe", "no"], references=["yes", "no"])
    assert out["per_label"] == {"no": 1.0, "yes": 0.0} and out["precision"] == 0.5 and out["recall"] == 0.5
    # a label of the set that no row has and no answer names says nothing about the prompt
    out = f1.compute(predictions=["yes", "no"], references=["yes", "no"], labels=["yes", "no", "maybe"])
    assert out["f1"] == 1.0 and set(out["per_label"]) == {"yes", "no"}
    # no label at all (every reference empty): 0.0, not an error
    out = f1.compute(predictions=["a", ""], references=["", ""])
    assert out == {"f1": 0.0, "scores": [0.0, 0.0], "per_label": {}, "precision": 0.0, "recall": 0.0}


# --- rouge against rouge_score -------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[False, True], ids=["no-stemmer", "stemmer"])
def rouge_reference(request):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=request.param)
    rows = [scorer.score(r, p) for p, r in CORPUS]  # rouge_score takes (target, prediction)
    return request.param, {t: [row[t].fmeasure for row in rows] for t in ("rouge1", "rouge2", "rougeL")}


@pytest.mark.parametrize("rouge_type", ["rouge1", "rouge2", "rougeL"])
def test_rouge_agrees_with_rouge_score(metric, rouge_reference, rouge_type):
    use_stemmer, expected = rouge_reference
    out = metric("rouge").compute(
        predictions=PREDICTIONS, references=REFERENCES, rouge_type=rouge_type, use_stemmer=use_stemmer
    )
    _check_shape("rouge", out, len(CORPUS))
    assert out["scores"] == pytest.approx(expected[rouge_type], abs=TOL)
    for t, per_row in expected.items():
        assert out[t] == pytest.approx(sum(per_row) / len(per_row), abs=TOL), t
    assert out["rouge"] == out[rouge_type]


def test_rouge_default_type_is_rouge_l_and_unicode_scores_zero(metric):
    rouge = metric("rouge")
    out = rouge.compute(
        predictions=["the cat sat", "日本語のテキストです", "", "Café"],
        references=["the cat sat", "日本語のテキストです", "", "cafe"],
    )
    assert out["scores"][:3] == [1.0, 0.0, 0.0]  # identical CJK text and two empty strings score 0 (no tokens)
    assert out["scores"][3] == 0.0  # "café" tokenises to "caf", not "cafe"
    assert out["rouge"] == out["rougeL"]
    assert out["no_token_rate"] == 0.25  # the CJK row; empty strings are not counted
    with pytest.raises(ValueError, match="rougeLsum"):
        rouge.compute(predictions=["a"], references=["a"], rouge_type="rougeLsum")


def test_rouge_lcs_agrees_with_rouge_score_table():
    """The bit-parallel LCS against rouge_score's dynamic-programming table, on many random pairs."""
    import importlib.util

    from rouge_score.rouge_scorer import _lcs_table

    from promptopt_dagster.scoring.registry import METRICS_DIR

    spec = importlib.util.spec_from_file_location("_rouge_module", METRICS_DIR / "rouge" / "rouge.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = random.Random(7)
    for _ in range(400):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 90))]
        b = [rng.choice("abcdef") for _ in range(rng.randint(0, 90))]
        expected = _lcs_table(a, b)[-1][-1] if a and b else 0
        assert module._lcs_length(a, b) == expected, (a, b)


# --- bleu and chrf against sacrebleu -------------------------------------------------------------------


@pytest.mark.parametrize(
    "options", [{}, {"lowercase": True}, {"tokenize": "char"}, {"tokenize": "intl"}, {"tokenize": "zh"}]
)
def test_bleu_agrees_with_sacrebleu(metric, options):
    import sacrebleu

    out = metric("bleu").compute(predictions=PREDICTIONS, references=REFERENCES, **options)
    _check_shape("bleu", out, len(CORPUS))
    corpus = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES], **options)
    assert out["bleu"] == pytest.approx(corpus.score / 100, abs=TOL)
    expected = [sacrebleu.sentence_bleu(p, [r], **options).score / 100 for p, r in CORPUS]
    assert out["scores"] == pytest.approx(expected, abs=TOL)
    assert out["brevity_penalty"] == pytest.approx(corpus.bp, abs=TOL)
    assert [out["precisions"][str(n)] for n in range(1, 5)] == pytest.approx(
        [p / 100 for p in corpus.precisions], abs=TOL
    )


def test_bleu_is_corpus_level_not_the_mean(metric):
    out = metric("bleu").compute(
        predictions=["the cat sat on the mat", "a dog"],
        references=["the cat sat on the mat", "a dog barked loudly at night"],
    )
    assert out["scores"][0] == 1.0
    assert out["bleu"] != pytest.approx(sum(out["scores"]) / 2, abs=1e-3)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"word_order": 2},
        {"lowercase": True},
        {"char_order": 4, "beta": 3},
        {"word_order": 2, "lowercase": True, "beta": 1},
    ],
)
def test_chrf_agrees_with_sacrebleu(metric, options):
    import sacrebleu
    from sacrebleu.metrics import CHRF

    out = metric("chrf").compute(predictions=PREDICTIONS, references=REFERENCES, **options)
    _check_shape("chrf", out, len(CORPUS))
    if "lowercase" not in options:  # the compat functions have no lowercase option
        assert out["chrf"] == pytest.approx(
            sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES], **options).score / 100, abs=TOL
        )
        expected = [sacrebleu.sentence_chrf(p, [r], **options).score / 100 for p, r in CORPUS]
    else:
        reference = CHRF(**options)
        assert out["chrf"] == pytest.approx(reference.corpus_score(PREDICTIONS, [REFERENCES]).score / 100, abs=TOL)
        expected = [CHRF(**options).sentence_score(p, [r]).score / 100 for p, r in CORPUS]
    assert out["scores"] == pytest.approx(expected, abs=TOL)


def test_bleu_and_chrf_of_identical_text_is_one_and_of_empty_is_zero(metric):
    for name in ("bleu", "chrf"):
        out = metric(name).compute(
            predictions=["the cat sat on the mat", "", "x"], references=["the cat sat on the mat", "", ""]
        )
        assert out["scores"] == [1.0, 0.0, 0.0], name  # capped at 1.0; empty scores 0 even against empty


# --- numeric_match -------------------------------------------------------------------------------------

NUMERIC_CASES = [
    ("The answer is 42.", "42", 1.0),
    ("42", "42.0", 1.0),
    ("So the total is 12.", "12", 1.0),  # full stop is not a decimal point
    ("It costs $12 in all", "12", 1.0),
    ("It costs $12.50.", "12.5", 1.0),
    ("3.50", "3.5", 1.0),
    (".5 of it", "0.5", 1.0),
    ("$1,234 total", "1,234", 1.0),
    ("1,234", "1234", 1.0),
    ("1,000,000 people", "1000000", 1.0),
    ("1,234,567.89", "1234567.89", 1.0),
    ("1,23", "23", 1.0),  # not a thousands group: two numbers
    ("1, 2, 3", "3", 1.0),
    ("-3", "-3", 1.0),
    ("The temperature fell to -3 degrees", "-3", 1.0),
    ("It is \u22123 outside", "-3", 1.0),  # Unicode minus
    ("She lost -$12 today", "-12", 1.0),
    ("Balance: $-12", "-12", 1.0),
    ("The change was -2.5", "-2.5", 1.0),
    ("-3", "3", 0.0),  # the sign matters
    ("5-3", "3", 1.0),  # a hyphen after a digit is not a sign
    ("5-3", "-3", 0.0),
    ("COVID-19", "19", 1.0),
    ("50%", "50", 1.0),
    ("a 50% discount", "50%", 1.0),
    ("First 10, then 20, finally 30", "30", 1.0),  # the last number counts
    ("30, not 10", "30", 0.0),
    ("Step 1: 3 * 4 = 12\nStep 2: 12 + 2 = 14\n#### 14", "14", 1.0),  # multi-line working
    ("x = 7\nSo the answer is **7**.", "7", 1.0),
    ("1/2", "0.5", 0.0),  # fractions are not supported: no number
    ("1/2", "2", 0.0),
    ("1 / 2", "2", 0.0),
    ("It is 24/7 and costs 5", "5", 1.0),  # a fraction before the last number is skipped
    ("$12.50/hour", "12.5", 1.0),  # a slash not followed by a digit is no fraction
    ("0.1 + 0.2 = 0.30000000000000004", "0.3", 1.0),  # within the default tolerance
    ("12.0000001", "12", 1.0),
    ("12.00001", "12", 0.0),
    ("123456789012345678901", "123456789012345678901", 1.0),  # exact decimals, no float rounding
    ("123456789012345678900", "123456789012345678901", 0.0),
    ("no digits here", "5", 0.0),
    ("", "0", 0.0),
    ("   ", "0", 0.0),
    ("四十二", "42", 0.0),  # spelled out: no number
    ("答えは４２です", "42", 1.0),  # full-width digits are digits
    ("Café costs 3 euros 😀", "3", 1.0),
    (LONG_A + " so 99.", "99", 1.0),
]


def test_numeric_match_formats(metric):
    predictions = [p for p, _, _ in NUMERIC_CASES]
    references = [r for _, r, _ in NUMERIC_CASES]
    out = metric("numeric_match").compute(predictions=predictions, references=references)
    _check_shape("numeric_match", out, len(NUMERIC_CASES))
    wrong = [
        (p[:60], r, expected, got) for (p, r, expected), got in zip(NUMERIC_CASES, out["scores"]) if got != expected
    ]
    assert not wrong, wrong
    assert out["numeric_match"] == pytest.approx(sum(e for _, _, e in NUMERIC_CASES) / len(NUMERIC_CASES), abs=TOL)


def test_numeric_match_no_number_rate_and_tolerance(metric):
    nm = metric("numeric_match")
    out = nm.compute(predictions=["about 12", "none", "", "1/2"], references=["12", "1", "2", "0.5"])
    assert out["scores"] == [1.0, 0.0, 0.0, 0.0] and out["no_number_rate"] == 0.75 and out["numeric_match"] == 0.25
    assert nm.compute(predictions=["12.4", "12.6"], references=["12", "12"], tolerance=0.5)["scores"] == [1.0, 0.0]
    assert nm.compute(predictions=["12.0", "12.000001"], references=["12", "12"], tolerance=0)["scores"] == [1.0, 0.0]
    assert nm.compute(predictions=["12.4"], references=["12"], tolerance="0.5")["scores"] == [1.0]  # YAML: a string
    for bad in (-1, "abc", float("nan"), None, True):
        with pytest.raises(ValueError, match="tolerance"):
            nm.compute(predictions=["1"], references=["1"], tolerance=bad)


@pytest.mark.parametrize("bad", ["abc", "", "12 apples", "1/2", "twelve"])
def test_numeric_match_bad_reference_names_the_row(metric, bad):
    with pytest.raises(ValueError) as info:
        metric("numeric_match").compute(predictions=["1", "2", "3"], references=["1", bad, "3"])
    assert "row index 1" in str(info.value) and repr(bad) in str(info.value)


def test_numeric_match_reference_notations(metric):
    out = metric("numeric_match").compute(
        predictions=["1234"] * 4 + ["-2.5", "50"], references=["1,234", " 1234 ", "$1,234", "1234.0", "-2.5", "50%"]
    )
    assert out["scores"] == [1.0] * 6


# --- regex_match ---------------------------------------------------------------------------------------


def test_regex_match_search_and_fullmatch(metric):
    rm = metric("regex_match")
    predictions = ["B", " B \n", "The answer is B", "b", "", "BB"]
    refs = ["ignored"] * len(predictions)
    assert rm.compute(predictions=predictions, references=refs, pattern="[A-D]")["scores"] == [1, 1, 1, 0, 0, 1]
    out = rm.compute(predictions=predictions, references=refs, pattern="[A-D]", mode="fullmatch")
    assert out["scores"] == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0] and out["regex_match"] == pytest.approx(2 / 6, abs=TOL)
    assert rm.compute(predictions=predictions, references=refs, pattern="[a-d]", mode="fullmatch", flags="i")[
        "scores"
    ] == [1, 1, 0, 1, 0, 0]


def test_regex_match_flags(metric):
    rm = metric("regex_match")
    text = ["Line one\nSECOND line"]
    assert rm.compute(predictions=text, references=[""], pattern="one.second", flags="is")["scores"] == [1.0]
    assert rm.compute(predictions=text, references=[""], pattern="one.second", flags="i")["scores"] == [0.0]
    assert rm.compute(predictions=text, references=[""], pattern="^SECOND", flags="m")["scores"] == [1.0]
    assert rm.compute(predictions=text, references=[""], pattern="^SECOND")["scores"] == [0.0]
    assert rm.compute(predictions=["naïve 日本"], references=[""], pattern=r"^\w+ \w+$")["scores"] == [1.0]
    assert rm.compute(predictions=["naïve"], references=[""], pattern=r"^\w+$", flags="a")["scores"] == [0.0]
    with pytest.raises(ValueError, match="'q'"):
        rm.compute(predictions=["a"], references=[""], pattern="a", flags="iq")


def test_regex_match_errors(metric):
    rm = metric("regex_match")
    with pytest.raises(ValueError) as info:
        rm.compute(predictions=["a"], references=["a"])
    assert "pattern" in str(info.value) and "options" in str(info.value) and "manifest.yaml" in str(info.value)
    with pytest.raises(ValueError) as info:
        rm.compute(predictions=["a"], references=["a"], pattern="([unclosed")
    assert "([unclosed" in str(info.value)
    with pytest.raises(ValueError, match="mode"):
        rm.compute(predictions=["a"], references=["a"], pattern="a", mode="match")


# --- json_valid ----------------------------------------------------------------------------------------

JSON_CASES = [
    # prediction, valid JSON, an object, has keys "answer" and "confidence"
    ('{"answer": "B", "confidence": 0.9}', 1, 1, 1),
    ('  {"answer": "B"}  \n', 1, 1, 0),
    ('```json\n{"answer": "B", "confidence": 1}\n```', 1, 1, 1),
    ("```JSON\n[1, 2]\n```", 1, 0, 0),
    ('```\n{"answer": 1, "confidence": 2}\n```\n', 1, 1, 1),
    ('```json {"answer": 1, "confidence": 2} ```', 1, 1, 1),  # fence on one line
    ('Here you go:\n```json\n{"answer": "B"}\n```', 0, 0, 0),  # prose around the fence
    ("[1, 2, 3]", 1, 0, 0),
    ('"just a string"', 1, 0, 0),
    ("42", 1, 0, 0),
    ("null", 1, 0, 0),
    ('{"answer": NaN, "confidence": 1}', 0, 0, 0),  # NaN is not JSON
    ("Infinity", 0, 0, 0),
    ("{'answer': 'B'}", 0, 0, 0),  # Python, not JSON
    ('{"answer": "B",}', 0, 0, 0),  # trailing comma
    ('{"answer": "日本語 😀", "confidence": 0.5}', 1, 1, 1),
    ('{"nested": {"answer": 1, "confidence": 2}}', 1, 1, 0),  # keys must be top-level
    ("", 0, 0, 0),
    ("   ", 0, 0, 0),
    ("```json\n```", 0, 0, 0),
    ("[" * 100000 + "]" * 100000, 0, 0, 0),  # too deep for the parser: invalid, not a crash
]


@pytest.mark.parametrize(
    "options, column",
    [
        ({}, 1),
        ({"require_object": True}, 2),
        ({"required_keys": ["answer", "confidence"]}, 3),
        ({"require_object": True, "required_keys": ["answer", "confidence"]}, 3),
    ],
)
def test_json_valid(metric, options, column):
    predictions = [case[0] for case in JSON_CASES]
    out = metric("json_valid").compute(predictions=predictions, references=[""] * len(predictions), **options)
    _check_shape("json_valid", out, len(JSON_CASES))
    expected = [float(case[column]) for case in JSON_CASES]
    wrong = [(case[0][:50], e, g) for case, e, g in zip(JSON_CASES, expected, out["scores"]) if e != g]
    assert not wrong, wrong
    assert out["parse_rate"] == pytest.approx(sum(case[1] for case in JSON_CASES) / len(JSON_CASES), abs=TOL)


def test_json_valid_without_fence_stripping(metric):
    out = metric("json_valid").compute(
        predictions=['```json\n{"a": 1}\n```', '{"a": 1}'], references=["", ""], strip_code_fence=False
    )
    assert out["scores"] == [0.0, 1.0]


# --- label_set -----------------------------------------------------------------------------------------


def test_label_set(metric):
    ls = metric("label_set")
    labels = ["Positive", "negative", "très bien", "好"]
    predictions = [
        "positive",
        " POSITIVE. ",
        '"Negative!"',
        "negative\nbecause...",
        "Positive, because it is good",
        "The answer is positive",
        "neutral",
        "",
        "   ",
        "Très Bien",
        "好",
        "好的",
        "pos",
        "?!",
    ]
    expected = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    out = ls.compute(predictions=predictions, references=["x"] * len(predictions), labels=labels)
    assert out["scores"] == expected and out["label_set"] == pytest.approx(sum(expected) / len(expected), abs=TOL)
    # stricter than accuracy, which maps "Positive, because..." to a label
    acc = metric("accuracy").compute(predictions=predictions, references=["positive"] * len(predictions), labels=labels)
    assert acc["scores"][4] == 1.0 and out["scores"][4] == 0.0
    # default label set: the distinct references; an empty reference adds no empty label
    out = ls.compute(predictions=["yes", "No.", "maybe", ""], references=["yes", "no", "", "no"])
    assert out["scores"] == [1.0, 1.0, 0.0, 0.0]


# --- the public API on the whole awkward corpus --------------------------------------------------------


@pytest.mark.parametrize(
    "name, options",
    [
        ("accuracy", {}),
        ("exact_match", {}),
        ("f1", {}),
        ("label_set", {}),
        ("rouge", {}),
        ("bleu", {}),
        ("chrf", {}),
        ("regex_match", {"pattern": r"\w"}),
        ("json_valid", {}),
    ],
)
def test_every_module_takes_the_awkward_corpus(metric, name, options):
    out = metric(name).compute(predictions=PREDICTIONS, references=REFERENCES, **options)
    _check_shape(name, out, len(PREDICTIONS))
    for key, value in out.items():
        if key != "scores":
            assert isinstance(value, (float, dict)), (key, value)
            if isinstance(value, dict):
                assert all(isinstance(v, float) for v in value.values()), (key, value)


def test_numeric_match_on_the_awkward_corpus(metric):
    out = metric("numeric_match").compute(predictions=PREDICTIONS, references=["42"] * len(PREDICTIONS))
    _check_shape("numeric_match", out, len(PREDICTIONS))
    assert 0.0 < out["no_number_rate"] < 1.0


@pytest.mark.parametrize(
    "name, options",
    [
        ("f1", {"labels": ["positive", "negative"]}),
        ("label_set", {}),
        ("rouge", {"use_stemmer": True}),
        ("bleu", {}),
        ("chrf", {"word_order": 2}),
        ("regex_match", {"pattern": "^[a-z]", "flags": "i"}),
        ("json_valid", {}),
        ("numeric_match", {}),
    ],
)
def test_compute_and_direct_compute_agree(metric, name, options):
    """The registry calls `_compute` directly (no Arrow staging); it must give what `compute()` gives."""
    predictions, references = (
        (PREDICTIONS, ["42"] * len(PREDICTIONS))
        if name == "numeric_match"
        else (C_PREDICTIONS, C_REFERENCES)
        if name in ("f1", "label_set")
        else (PREDICTIONS, REFERENCES)
    )
    module = metric(name)
    public = module.compute(predictions=predictions, references=references, **options)
    direct = module._compute(predictions=list(predictions), references=list(references), **options)
    assert public == direct


def test_registry_hands_the_dataset_labels_to_f1_and_label_set():
    from promptopt_dagster.scoring import score

    predictions, references = ["yes", "No.", "maybe", "yes"], ["yes", "no", "no", "no"]
    f1 = score("f1", predictions, references, labels=["yes", "no", "maybe"])
    assert f1.value == pytest.approx((2 / 3 + 1 / 2 + 0) / 3, abs=TOL) and set(f1.details["per_label"]) == {
        "yes",
        "no",
        "maybe",
    }
    assert f1.per_row == [1.0, 1.0, 0.0, 0.0]
    assert score("label_set", predictions, references, labels=["yes", "no"]).per_row == [1.0, 1.0, 0.0, 1.0]


@pytest.mark.parametrize("name", NEW_MODULES)
def test_empty_input(metric, name):
    options = {"pattern": "a"} if name == "regex_match" else {}
    out = metric(name).compute(predictions=[], references=[], **options)
    assert out[name] == 0.0 and out["scores"] == []


# --- offline loading -----------------------------------------------------------------------------------

OFFLINE_SCRIPT = textwrap.dedent(
    r"""
    import ipaddress, socket, sys

    assert "evaluate" not in sys.modules
    LOCAL = {"localhost", "127.0.0.1", "::1"}
    attempts = []

    def _is_local(host):
        if isinstance(host, bytes):
            host = host.decode()
        if host is None or host in LOCAL:
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def _refuse(what):
        attempts.append(what)
        raise OSError(f"network disabled by test: {what}")

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_create_connection, real_getaddrinfo = socket.create_connection, socket.getaddrinfo

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
            _refuse(f"connect {address!r}")
        return real_connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
            _refuse(f"connect_ex {address!r}")
        return real_connect_ex(self, address)

    def create_connection(address, *args, **kwargs):
        if not _is_local(address[0]):
            _refuse(f"create_connection {address!r}")
        return real_create_connection(address, *args, **kwargs)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_local(host):
            _refuse(f"getaddrinfo {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    socket.create_connection, socket.getaddrinfo = create_connection, getaddrinfo

    # the guard works
    for probe in (lambda: socket.socket().connect(("93.184.216.34", 80)),
                  lambda: socket.create_connection(("huggingface.co", 443), timeout=1),
                  lambda: socket.getaddrinfo("huggingface.co", 443)):
        try:
            probe()
        except OSError as exc:
            assert "network disabled by test" in str(exc), exc
        else:
            raise AssertionError("the network guard let a connection through")
    socket.getaddrinfo("localhost", 80)  # loopback stays allowed
    attempts.clear()
    print("GUARD-OK", flush=True)

    import evaluate
    from promptopt_dagster.scoring.registry import METRICS_DIR, available_metrics

    options = {"regex_match": {"pattern": "a"}}
    references = {"numeric_match": ["1", "2"]}
    for name in available_metrics():
        module = evaluate.load(str(METRICS_DIR / name))
        out = module.compute(predictions=["a 1", "b"], references=references.get(name, ["a 1", "c"]),
                             **options.get(name, {}))
        assert len(out["scores"]) == 2 and 0.0 <= out[name] <= 1.0, (name, out)
        print("LOADED", name, flush=True)
    assert not attempts, attempts
    print("OFFLINE-OK", flush=True)
    """
)


def test_every_module_loads_and_computes_without_network(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"}
    }
    cache = tmp_path / "hf"
    env.update(
        HF_HOME=str(cache),
        HF_EVALUATE_CACHE=str(cache / "evaluate"),
        HF_DATASETS_CACHE=str(cache / "datasets"),
        HF_METRICS_CACHE=str(cache / "metrics"),
        HF_MODULES_CACHE=str(cache / "modules"),
        XDG_CACHE_HOME=str(tmp_path / "xdg"),
    )
    proc = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    assert lines[0] == "GUARD-OK"
    assert [line.split()[1] for line in lines if line.startswith("LOADED ")] == available_metrics()
    assert set(NEW_MODULES) <= set(available_metrics())
    assert lines[-1] == "OFFLINE-OK"
    assert (cache / "modules").exists()  # evaluate really used the empty cache given to it
