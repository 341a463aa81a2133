"""Answer normalisation shared by the metric modules: models pad, capitalise and keep talking.

Scoring a million rows must take seconds, and LLM answers repeat a lot (a classifier says
"positive" thousands of times), so the `*_many` forms normalise each distinct text once: a hash
factorisation in C (pandas) finds the distinct values and numpy spreads the results back.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

import numpy as np
import pandas as pd

_EDGE = string.punctuation + string.whitespace + "“”‘’«»"
_LINE_BREAK = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")  # what str.splitlines splits on


def normalize(text: str | None, first_line: bool = True, ignore_case: bool = True, strip: bool = True) -> str:
    text = text or ""
    if first_line and _LINE_BREAK.search(text):  # the search skips splitlines' list for one-line answers
        text = next((line for line in text.splitlines() if line and not line.isspace()), "")
    if strip:
        text = text.strip(_EDGE)
    if ignore_case:
        text = text.casefold()
    return text


def to_label(text: str | None, labels: list[str]) -> str | None:
    """The label the answer starts with ("Positive." -> positive), or None when it names none."""
    return _label_matcher(labels)(text)


def _label_matcher(labels: Sequence[str]):
    ordered = sorted({normalize(l) for l in labels}, key=len, reverse=True)  # "very good" before "very"

    def match(text: str | None) -> str | None:
        norm = normalize(text)
        for label in ordered:
            if norm == label or (norm.startswith(label) and not norm[len(label)].isalnum()):
                return label
        return None

    return match


def map_distinct(func, texts: Sequence[str | None]) -> np.ndarray:
    """`func` applied to every text, calling it once per distinct value; an object array."""
    values = np.asarray(["" if t is None else t for t in texts], dtype=object)
    if len(values) == 0:
        return values
    codes, uniques = pd.factorize(values)
    return np.asarray([func(u) for u in uniques], dtype=object)[codes]


def normalize_many(
    texts: Sequence[str | None], first_line: bool = True, ignore_case: bool = True, strip: bool = True
) -> np.ndarray:
    return map_distinct(lambda t: normalize(t, first_line, ignore_case, strip), texts)


def to_label_many(texts: Sequence[str | None], labels: Sequence[str]) -> np.ndarray:
    """Mapped labels as an object array; None where an answer names no label."""
    return map_distinct(_label_matcher(labels), texts)
