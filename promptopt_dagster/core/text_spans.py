"""Text compared case- and whitespace-insensitively: how leakage of a row into a prompt is found.

The leakage gate (app/quality.py) and the optimizers that write instructions (gepa, vertex) use the
same comparison, so an instruction the optimizer keeps is one the gate lets through.
"""

from __future__ import annotations


def squash(text: str) -> str:
    return " ".join(text.casefold().split())


def verbatim_span_rows(text: str, inputs: list[str], min_span: int = 40) -> list[int]:
    """Positions of the inputs that share a span of `min_span` characters with `text` (case and
    whitespace aside): an instruction that carries a row's text verbatim leaks it, or obeys it."""
    squashed = squash(text)
    windows = {squashed[i : i + min_span] for i in range(max(0, len(squashed) - min_span + 1))}
    found = []
    for position, row in enumerate(inputs):
        row = squash(str(row))
        if len(row) >= min_span and any(row[i : i + min_span] in windows for i in range(len(row) - min_span + 1)):
            found.append(position)
    return found
