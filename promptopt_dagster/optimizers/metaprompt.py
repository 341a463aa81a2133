"""Zero-shot MetaPrompt: the optimizer model improves a prompt from guidelines alone, shown no rows.

As MLflow's MetaPromptOptimizer with an empty train set: a team with a task and no labeled data yet
still gets a clearer prompt (what to do, what to answer, in which form), and `promptopt rewrite`
stores it as an unscored prompt version, marked so wherever it is shown. With a dataset, the
`metaprompt` optimizer makes the same one-pass rewrite of the current best prompt and the loop scores
and accepts or rejects it like any other candidate. The reply is parsed as strictly as the reflective
optimizer's (parsing.py): a malformed, truncated or oversized reply is a rejection with its reason.
"""

from __future__ import annotations

import json
import logging

from pydantic import Field

from promptopt_dagster.core.prompts import PLACEHOLDER, PromptVersion
from promptopt_dagster.llm.base import LLMClient, LLMRequest
from promptopt_dagster.optimizers.base import Evaluator, Optimizer, OptimizerContext, OptimizerOptions, Proposal
from promptopt_dagster.optimizers.capabilities import Capabilities
from promptopt_dagster.optimizers.parsing import parse_prompt_proposal
from promptopt_dagster.optimizers.reflective import PROPOSAL_SCHEMA
from promptopt_dagster.optimizers.registry import register

log = logging.getLogger("promptopt.optimizer")

SYSTEM = (
    "You are an expert prompt engineer. You rewrite a prompt so that a smaller language model follows it "
    "reliably. Reply with only a JSON object and nothing else."
)

GUIDELINES = (
    "State the task in the first sentence, plainly, in the second person.",
    "Say exactly what the answer must be and in which form; when there is a fixed set of answers, list them and "
    "ask for one of them only, with nothing else.",
    "Keep every fact and constraint of the current prompt; add none that it does not imply.",
    f"Keep {PLACEHOLDER} in the output prompt exactly once, where the input goes; the answer follows the output "
    "prompt. Use no other {placeholders} anywhere.",
    "Be brief: no examples, no preamble, no explanation of your changes.",
)


class MetaPromptOptions(OptimizerOptions):
    guidelines: str = Field("", description="a guideline of yours, after the built-in ones")
    max_tokens: int = Field(1024, ge=1, description="the optimizer model's reply limit")


@register
class MetaPromptOptimizer(Optimizer):
    name = "metaprompt"
    capabilities = Capabilities(writes_prompts=True)
    Options = MetaPromptOptions
    options: MetaPromptOptions

    def build_request(
        self, prompt: PromptVersion, labels: list[str], label_descriptions: dict[str, str], description: str, mode: str
    ) -> LLMRequest:
        lines = [
            f"Task description: {json.dumps(description, ensure_ascii=False)}" if description else "",
            f"Current system_prompt (JSON string): {json.dumps(prompt.system_prompt, ensure_ascii=False)}",
            f"Current output_prompt (JSON string): {json.dumps(prompt.output_prompt, ensure_ascii=False)}",
        ]
        if labels:
            lines.append(f"Allowed answers: {json.dumps(labels, ensure_ascii=False)}")
            lines += [
                f"- {json.dumps(k)} means: {json.dumps(v, ensure_ascii=False)}" for k, v in label_descriptions.items()
            ]
        lines += [
            "",
            "Rewrite the prompt following these guidelines:",
            *[
                f"{i}. {g}"
                for i, g in enumerate((*GUIDELINES, *([self.options.guidelines] if self.options.guidelines else ())), 1)
            ],
            "",
            'Reply with only one JSON object of the form {"system_prompt": "...", "output_prompt": "..."} '
            "with exactly those two string keys.",
        ]
        user = "\n".join(line for line in lines if line is not None).strip()
        if mode == "chat":
            return LLMRequest(
                messages=(("system", SYSTEM), ("user", user)),
                max_tokens=self.options.max_tokens,
                temperature=0.0,
                json_schema=PROPOSAL_SCHEMA,
            )
        return LLMRequest(prompt=f"{SYSTEM}\n\n{user}\n\nJSON:\n", max_tokens=self.options.max_tokens, temperature=0.0)

    def rewrite(
        self,
        prompt: PromptVersion,
        client: LLMClient,
        labels: list[str] | None = None,
        label_descriptions: dict[str, str] | None = None,
        description: str = "",
        scored: bool = True,
    ) -> Proposal:
        """The rewritten prompt, or why there is none. `scored=False` marks a version no row has judged.
        `promptopt rewrite`'s entry, outside `propose`, so it applies the writer-model rule itself."""
        refused = self.refusal(client)
        if refused is not None:
            return Proposal.refusal(refused)
        return self._rewrite(prompt, client, labels, label_descriptions, description, scored)

    def _rewrite(
        self,
        prompt: PromptVersion,
        client: LLMClient,
        labels: list[str] | None,
        label_descriptions: dict[str, str] | None,
        description: str,
        scored: bool,
    ) -> Proposal:
        request = self.build_request(prompt, labels or [], label_descriptions or {}, description, client.mode)
        response = client.generate([request])[0]
        if response.error is not None:
            return Proposal(
                prompt=None, rejected_reason=f"optimizer LLM error: {response.error}", raw_output=response.text or None
            )
        parsed = parse_prompt_proposal(response.text, response.finish_reason)
        if not parsed.ok:
            log.warning("metaprompt: rewrite rejected: %s", parsed.rejected_reason)
            return Proposal(prompt=None, rejected_reason=parsed.rejected_reason, raw_output=response.text)
        if (parsed.system_prompt, parsed.output_prompt) == (prompt.system_prompt, prompt.output_prompt):
            return Proposal(
                prompt=None, rejected_reason="the rewrite is the current prompt unchanged", raw_output=response.text
            )
        metadata = {"optimizer": self.name, "scored": scored}
        if not scored:
            metadata["warning"] = "UNSCORED: written from guidelines alone; no row has judged this prompt"
        child = prompt.child(system_prompt=parsed.system_prompt, output_prompt=parsed.output_prompt, metadata=metadata)
        return Proposal(prompt=child, raw_output=response.text)

    def _propose(self, inp: OptimizerContext, evaluate: Evaluator, writer: LLMClient | None) -> Proposal:
        return self._rewrite(inp.prompt, writer, inp.labels, inp.label_descriptions, "", True)
