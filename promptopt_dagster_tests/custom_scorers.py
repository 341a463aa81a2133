"""User scorers as a team would write them, registered by dotted path in tests (never built in)."""

from __future__ import annotations

import datasets
import evaluate

CALLS: list[int] = []  # rows scored per call, so a test can prove the optimize run used this scorer


def first_word_match(predictions, references):
    """1.0 when the answer's first word (lower-cased, punctuation trimmed) is the reference."""
    CALLS.append(len(predictions))
    out = []
    for p, r in zip(predictions, references):
        words = p.split()
        out.append(float(bool(words) and words[0].strip(".,!").lower() == r.strip().lower()))
    return out


def brevity(predictions, references, max_words: int = 3):
    """A dict-returning scorer with an option: 1.0 for answers of at most max_words words."""
    scores = [float(len(p.split()) <= max_words) for p in predictions]
    return {"brevity": sum(scores) / len(scores), "scores": scores, "max_words": max_words}


def wrong_length(predictions, references):
    return [1.0]


class ContainsReference(evaluate.Metric):
    """An evaluate module defined in user code, registered by dotted path to the class."""

    def _info(self):
        return evaluate.MetricInfo(
            description="reference appears in the answer",
            citation="",
            inputs_description="",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        scores = [float(r.lower() in p.lower()) for p, r in zip(predictions, references)]
        return {"contains_reference": sum(scores) / len(scores), "scores": scores}
