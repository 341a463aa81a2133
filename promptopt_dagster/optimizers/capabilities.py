"""Which model each optimizer needs: the writer-model rule, stated once.

The CLI checks it before any run and the optimizers check it again under Dagster (a UI launch skips
the CLI), so both read the same rule and print the same message.
"""

from __future__ import annotations

#: optimizers that ask the optimizer model to write prompts: the embedded model cannot
WRITERS = ("reflective", "gepa", "metaprompt", "vertex")
#: the optimizer-model backend each service-bound optimizer needs (the others need a chat model)
SERVICE_OF = {"vertex": "vertex_prompt_optimizer"}


def writer_model_problem(optimizer: str, backend: str | None) -> str | None:
    """Why this optimizer cannot run on this optimizer-model backend (None: no model), or None. One message
    for the CLI's check before any run and for the optimizers themselves under Dagster."""
    service = SERVICE_OF.get(optimizer)
    if service and backend != service:
        return (
            f"optimizer {optimizer!r} sends the prompt to Google's Vertex AI Prompt Optimizer, and the optimizer "
            f"model is {backend or 'missing'}. Set optimizer_model: {{backend: {service}, project: YOUR_PROJECT, "
            f"location: us-central1}} in data/optimizations.yaml (or PROMPTOPT_OPTIMIZER__BACKEND={service} "
            "with PROMPTOPT_OPTIMIZER__PROJECT)."
        )
    if optimizer in WRITERS and not service and backend in SERVICE_OF.values():
        return (
            f"optimizer {optimizer!r} needs a chat model to write prompts; {backend} only serves optimizer "
            f"'vertex'. Set optimizer_model to a gemini or openai model, or use optimizer: vertex."
        )
    if optimizer not in WRITERS or backend not in (None, "local"):
        return None
    which = "missing" if backend is None else "the embedded Gemma 3 270M, which cannot"
    return (
        f"optimizer {optimizer!r} needs a model that can write prompts, and the optimizer model is {which}. "
        "Set optimizer_model in data/optimizations.yaml (or PROMPTOPT_OPTIMIZER__BACKEND=gemini|openai with its "
        "settings), or use --optimizer fewshot."
    )
