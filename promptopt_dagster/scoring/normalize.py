"""Answer normalisation shared by the metric modules: models pad, capitalise and keep talking."""

from __future__ import annotations

import string

_EDGE = string.punctuation + string.whitespace + "“”‘’«»"


def normalize(text: str | None, first_line: bool = True, ignore_case: bool = True, strip: bool = True) -> str:
    text = text or ""
    if first_line:
        lines = [line for line in text.splitlines() if line.strip()]
        text = lines[0] if lines else ""
    if strip:
        text = text.strip(_EDGE)
    if ignore_case:
        text = text.casefold()
    return text


def to_label(text: str | None, labels: list[str]) -> str | None:
    """The label the answer starts with ("Positive." -> positive), or None when it names none."""
    norm = normalize(text)
    for label in sorted((normalize(l) for l in labels), key=len, reverse=True):
        if norm == label or (norm.startswith(label) and not norm[len(label)].isalnum()):
            return label
    return None
