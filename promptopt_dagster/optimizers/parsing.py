"""Reading the optimizer LLM's proposed prompt out of its free-text reply, defensively.

The reply is untrusted model output that may echo dataset rows, so a bad reply becomes a rejection
with a reason a person can act on, never an exception and never a silently repaired prompt: a
prompt that is only half right would be evaluated and could be accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

from promptopt_dagster.core.json_text import top_level_objects
from promptopt_dagster.core.prompts import prompt_problem

KEYS = ("system_prompt", "output_prompt")
MAX_VALUE_CHARS = 4000


@dataclass(frozen=True)
class ParsedProposal:
    system_prompt: str | None = None
    output_prompt: str | None = None
    rejected_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.rejected_reason is None and self.system_prompt is not None and self.output_prompt is not None


def _reject(reason: str) -> ParsedProposal:
    return ParsedProposal(rejected_reason=reason)


def parse_prompt_proposal(text: str, finish_reason: str | None = None) -> ParsedProposal:
    """The proposed system_prompt and output_prompt, or why the reply cannot be used."""
    if finish_reason == "length":
        return _reject("reply was truncated: it hit the max_tokens limit before finishing")
    objects, failed = top_level_objects(text or "")
    candidates: list[dict] = []
    for obj in objects:
        if any(k in obj for k in KEYS) and obj not in candidates:
            candidates.append(obj)
    if not candidates:
        if failed:
            return _reject("truncated or malformed JSON: no complete object with system_prompt and output_prompt")
        if objects:
            found = ", ".join(sorted({k for o in objects for k in o})) or "none"
            return _reject(f"no JSON object with keys system_prompt and output_prompt (keys found: {found})")
        return _reject("no JSON object found in the reply")
    if len(candidates) > 1:
        return _reject(
            f"ambiguous: {len(candidates)} different JSON objects with system_prompt/output_prompt "
            "keys (the reply may echo JSON from the data)"
        )

    obj = candidates[0]
    extra = sorted(set(obj) - set(KEYS))
    if extra:
        return _reject(f"unexpected keys {', '.join(extra)}: only system_prompt and output_prompt are allowed")
    missing = [k for k in KEYS if k not in obj]
    if missing:
        return _reject(f"missing key {', '.join(missing)}")
    for key in KEYS:
        value = obj[key]
        if not isinstance(value, str):
            return _reject(f"{key} must be a string, got {type(value).__name__}")
        if len(value) > MAX_VALUE_CHARS:
            return _reject(f"{key} is {len(value)} characters; the limit is {MAX_VALUE_CHARS}")
    problem = prompt_problem(obj["system_prompt"], obj["output_prompt"])
    if problem:
        return _reject(problem)
    return ParsedProposal(system_prompt=obj["system_prompt"], output_prompt=obj["output_prompt"])
