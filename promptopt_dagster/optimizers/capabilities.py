"""Which model each optimizer needs: declared on its class, and the writer-model rule, stated once.

`Optimizer.propose` applies the rule before any optimizer code runs (so under Dagster too, where a UI
launch skips the CLI), and the CLI applies it by name before a run starts: both read the same rule
from the same class attributes and print the same message.
"""

from __future__ import annotations

from dataclasses import dataclass

from promptopt_dagster.llm.model_settings import PROMPT_SERVICES


@dataclass(frozen=True)
class Capabilities:
    """What an optimizer class needs of the optimizer model (its `writer`)."""

    writes_prompts: bool = False  # asks the optimizer model to write prompts: the embedded model cannot
    service: str | None = None  # the one optimizer-model backend it works with (a prompt service), if any


def writer_refusal(optimizer: str, capabilities: Capabilities, backend: str | None) -> str | None:
    """Why `optimizer` (with these capabilities) cannot run on this optimizer-model backend (None: no
    model), or None."""
    service = capabilities.service
    if service and backend != service:
        return (
            f"optimizer {optimizer!r} sends the prompt to Google's Vertex AI Prompt Optimizer, and the optimizer "
            f"model is {backend or 'missing'}. Set optimizer_model: {{backend: {service}, project: YOUR_PROJECT, "
            f"location: us-central1}} in data/optimizations.yaml (or PROMPTOPT_OPTIMIZER__BACKEND={service} "
            "with PROMPTOPT_OPTIMIZER__PROJECT)."
        )
    if capabilities.writes_prompts and not service and backend in PROMPT_SERVICES:
        served = _names(lambda caps: caps.service == backend)
        return (
            f"optimizer {optimizer!r} needs a chat model to write prompts; {backend} only serves optimizer "
            f"{' or '.join(map(repr, served))}. Set optimizer_model to a gemini or openai model, or use "
            f"optimizer: {' or '.join(served)}."
        )
    if not capabilities.writes_prompts or backend not in (None, "local"):
        return None
    which = "missing" if backend is None else "the embedded Gemma 3 270M, which cannot"
    return (
        f"optimizer {optimizer!r} needs a model that can write prompts, and the optimizer model is {which}. "
        "Set optimizer_model in data/optimizations.yaml (or PROMPTOPT_OPTIMIZER__BACKEND=gemini|openai with its "
        f"settings), or use --optimizer {' or '.join(_names(lambda caps: not caps.writes_prompts))}."
    )


def writer_model_problem(optimizer: str, backend: str | None) -> str | None:
    """The rule for a registered optimizer by name: the CLI's check before any run."""
    # cycle: the registry imports the optimizers, which import this module for their capabilities
    from promptopt_dagster.optimizers.registry import optimizer_class

    return writer_refusal(optimizer, optimizer_class(optimizer).capabilities, backend)


def _names(which) -> list[str]:
    from promptopt_dagster.optimizers.registry import optimizer_classes  # cycle: as writer_model_problem's

    return [name for name, cls in optimizer_classes().items() if which(cls.capabilities)]
