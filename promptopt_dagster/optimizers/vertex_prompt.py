"""`vertex`: Google's Vertex AI Prompt Optimizer suggests the system instruction; our loop scores it.

Teams on Vertex AI already trust Google's optimizer; this puts it inside the same select/confirm
discipline as every other optimizer instead of beside it. Each iteration sends the current system
prompt once: zero-shot (guidelines only), or few-shot with the worst-scored select rows as
examples (what the task model saw, what it answered, what was wanted). The suggestion replaces the
system prompt; the output template and the demos stay the parent's (the demo search owns demos).

The reply is untrusted text: it must be one JSON object with exactly one new instruction, not
truncated, not oversized, without {placeholders}, and it must not copy a long span of a row it
was shown (an injected row must not reach the prompt). Anything else is a rejection with its reason.
The data-driven VAPO job, which runs Google's whole search on Vertex, is not driven from here; the
docs/optimizers.md says how to launch it.
"""

from __future__ import annotations

import json
import logging
from typing import Literal

import pandas as pd
from pydantic import Field

from promptopt_dagster.core.prompts import PLACEHOLDER, system_prompt_problem
from promptopt_dagster.core.text_spans import verbatim_span_rows
from promptopt_dagster.llm.base import LLMClient
from promptopt_dagster.llm.vertex_prompt_optimizer import BACKEND, MODES, optimize_request
from promptopt_dagster.optimizers.base import Evaluator, Optimizer, OptimizerContext, OptimizerOptions, Proposal
from promptopt_dagster.optimizers.capabilities import Capabilities
from promptopt_dagster.optimizers.parsing import MAX_VALUE_CHARS
from promptopt_dagster.optimizers.reflective import _text
from promptopt_dagster.optimizers.registry import register

log = logging.getLogger("promptopt.optimizer")

#: where each mode's reply holds the new instruction (agentplatform's ParsedResponse / ParsedResponseFewShot)
NEW_INSTRUCTION = {"zero_shot": "suggested_prompt", "few_shot": "new_system_instructions"}
KNOWN_KEYS = {
    "optimization_type",
    "applicable_guidelines",
    "original_prompt",
    "suggested_prompt",
    "suggested_modifications",
    "original_system_instructions",
    "new_system_instructions",
}


def parse_suggestion(text: str, mode: str) -> tuple[str | None, dict, str | None]:
    """(new instruction, the reply's other fields, None) or (None, {}, why the reply cannot be used)."""
    body = (text or "").strip()
    if body.startswith("```"):  # the service fences its JSON; both fences must be there
        lines = body.split("\n")
        if len(lines) < 3 or not lines[-1].strip().startswith("```"):
            return None, {}, "truncated reply: the fenced JSON block is not closed"
        body = "\n".join(lines[1:-1])
    body = body.strip()
    if body.startswith("json"):
        body = body[4:].strip()
    if not body:
        return None, {}, "empty reply"
    try:
        obj = json.loads(body)
    except ValueError as exc:
        return None, {}, f"truncated or malformed JSON ({exc.msg} at character {exc.pos})"
    if not isinstance(obj, dict):
        return None, {}, f"the reply is a JSON {type(obj).__name__}, not an object"
    unknown = sorted(set(obj) - KNOWN_KEYS)
    if unknown:
        return None, {}, f"unexpected keys {', '.join(unknown)} in the reply"
    key = NEW_INSTRUCTION[mode]
    new = obj.get(key)
    if not isinstance(new, str) or not new.strip():
        return None, {}, f"no new instruction: {key} is missing or empty"
    if len(new) > MAX_VALUE_CHARS:
        return None, {}, f"{key} is {len(new)} characters; the limit is {MAX_VALUE_CHARS}"
    return new.strip(), {k: v for k, v in obj.items() if k != key}, None


class VertexOptions(OptimizerOptions):
    mode: Literal[MODES] = Field(  # Literal[("a", "b")] is Literal["a", "b"]
        "few_shot", description="zero_shot: guidelines only; few_shot: with the worst-scored select rows as examples"
    )
    examples: int = Field(8, ge=1, description="worst-scored select rows sent as examples (few_shot)")


@register
class VertexOptimizer(Optimizer):
    name = "vertex"
    capabilities = Capabilities(writes_prompts=True, service=BACKEND)
    Options = VertexOptions
    options: VertexOptions

    def example_rows(self, scored_rows: pd.DataFrame) -> pd.DataFrame:
        """The worst-scored select rows, lowest first, ties by row_id (same scores, same examples)."""
        return scored_rows.sort_values(["score", "row_id"], kind="stable").head(self.options.examples)

    def _propose(self, inp: OptimizerContext, evaluate: Evaluator, writer: LLMClient | None) -> Proposal:
        mode, scored = self.options.mode, inp.baseline.scored_rows
        rows = self.example_rows(scored) if mode == "few_shot" else scored.head(0)
        if mode == "few_shot" and rows.empty:
            return Proposal.refusal("no scored select rows to give as examples", inp)
        examples = [
            {
                "prompt": _text(inp.prompt.output_prompt.replace(PLACEHOLDER, str(r["user_input"]))),
                "model_response": _text(r.get("prediction")),
                "target_response": _text(r.get("ground_truth_output")),
            }
            for _, r in rows.iterrows()
        ]
        response = writer.generate([optimize_request(inp.prompt.system_prompt, examples)])[0]
        if response.error is not None:
            log.warning("vertex: prompt optimizer error: %s", response.error)
            return Proposal(
                prompt=None,
                rejected_reason=f"Vertex AI Prompt Optimizer error: {response.error}",
                raw_output=response.text or None,
            )
        new, extra, problem = parse_suggestion(response.text, mode)
        if problem is None:
            problem = system_prompt_problem(new)
        if problem is None:
            copied = verbatim_span_rows(new, [str(v) for v in rows["user_input"]]) if not rows.empty else []
            if copied:
                problem = (
                    f"the suggestion copies 40+ characters verbatim from {len(copied)} example row(s) it was "
                    "shown (a row's text must not become the instruction)"
                )
        if problem is None and new == inp.prompt.system_prompt:
            problem = "the suggestion is the current system prompt unchanged"
        if problem is not None:
            log.warning("vertex: suggestion rejected: %s", problem)
            return Proposal(prompt=None, rejected_reason=problem, raw_output=response.text)
        child = inp.prompt.child(
            system_prompt=new,
            metadata={
                "optimizer": self.name,
                "mode": mode,
                "examples": len(examples),
                **({"optimization_type": str(extra["optimization_type"])} if extra.get("optimization_type") else {}),
            },
        )
        log.info("vertex: %s suggestion v%d from %d example rows", mode, child.version, len(examples))
        return Proposal(prompt=child, raw_output=response.text)
