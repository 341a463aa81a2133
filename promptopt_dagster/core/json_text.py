"""Finding JSON objects in model replies, which wrap them in prose, fences or several attempts.

Shared by the optimizer's proposal parser and the LLM judge, which both must not let JSON quoted
inside a row's text pass for the model's own object.
"""

from __future__ import annotations

import json

_decoder = json.JSONDecoder()


def top_level_objects(text: str) -> tuple[list[dict], bool]:
    """Every JSON object that starts at a `{` outside an earlier object, and whether any `{` failed.

    Skipping past a decoded object means JSON text inside one of its string values is never seen
    as a second object.
    """
    objects: list[dict] = []
    failed = False
    pos = text.find("{")
    while pos != -1:
        try:
            obj, end = _decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            failed = True
            pos = text.find("{", pos + 1)
            continue
        objects.append(obj)
        pos = text.find("{", end)
    return objects, failed
