"""Every knob of one model, as plain pydantic, so settings.py can hold two of them without importing any backend.

The task model and the optimizer model each get their own (PROMPTOPT_TASK__* and
PROMPTOPT_OPTIMIZER__* in settings.py, or the `task_model` and `optimizer_model` resources in
Dagster). Secrets are not settings: the key is read from the environment variable the settings
name, and never stored, logged or hashed.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, Field

BACKENDS = ("local", "gemini", "openai", "fake", "vertex_prompt_optimizer")
#: backends that only rewrite prompts (the `vertex` optimizer's model), never answer rows
PROMPT_SERVICES = ("vertex_prompt_optimizer",)
DEFAULT_KEY_ENV = {"gemini": "GOOGLE_API_KEY", "openai": "OPENAI_API_KEY"}


class ModelSettings(BaseModel):
    backend: str = Field(
        "local",
        description="local (embedded llama.cpp) | gemini | openai | fake (tests) | "
        "vertex_prompt_optimizer (optimizer model of `vertex` only)",
    )
    model: str | None = Field(None, description="Model name (or GGUF path for local); empty: the backend's default")
    # where: gemini
    vertexai: bool = Field(True, description="gemini: Vertex AI with ADC (true) or the Gemini API with a key (false)")
    project: str | None = Field(None, description="gemini on Vertex, vertex_prompt_optimizer: Google Cloud project id")
    location: str = Field("us-central1", description="gemini on Vertex, vertex_prompt_optimizer: region, or 'global'")
    # where: openai, or a proxy/test server for gemini
    base_url: str | None = Field(None, description="openai: server URL ending in /v1; gemini: endpoint override")
    api_key_env: str | None = Field(
        None, description="Environment variable holding the API key (default GOOGLE_API_KEY / OPENAI_API_KEY)"
    )
    json_mode: Literal["schema", "object", "off"] = Field(
        "schema", description="openai: how to ask for JSON (json_schema, json_object, or not at all)"
    )
    # how much it reads
    context_tokens: int = Field(
        4096,
        ge=512,
        le=131072,
        description="local: context window in tokens. Every dev and test row must fit it with the initial prompt "
        "(longer rows are refused before any call); Gemma 3 270M was trained on 32,768. A longer window fits "
        "longer rows and lets the optimizer try more demos on long inputs; the default model's KV cache takes 18 KiB a "
        "token (72 MiB at 4096, 576 MiB at 32768: bench/adhoc/kv_cache.py)",
    )
    # how fast
    max_in_flight: int = Field(16, description="Requests sent at once (remote backends), on one event loop per process")
    rpm: int | None = Field(
        None, description="Requests per minute, shared by everything this process sends to the model"
    )
    tpm: int | None = Field(None, description="Tokens per minute, shared likewise")
    timeout_s: float = Field(60.0, description="Seconds to wait for one reply")
    max_attempts: int = Field(
        6,
        description="Tries per row, the first included, on 408, 429, 5xx, timeouts, broken connections and malformed replies",
    )
    backoff_initial_s: float = Field(
        1.0, description="First retry waits up to this long; exponential backoff with full jitter, doubling"
    )
    backoff_max_s: float = Field(
        60.0,
        description="Cap of one backoff wait; a server's Retry-After is a floor (a longer one is still honoured) "
        "and pauses the model's limiter",
    )
    # what it costs
    input_price_per_mtok: float | None = Field(
        None,
        description="USD per million prompt tokens, for the cost estimate and --max-cost-usd (default: llm/prices.yaml)",
    )
    output_price_per_mtok: float | None = Field(
        None, description="USD per million completion tokens, likewise (default: llm/prices.yaml)"
    )

    def key_env(self) -> str | None:
        return self.api_key_env or DEFAULT_KEY_ENV.get(self.backend)


def api_key_from_env(settings: ModelSettings) -> str | None:
    name = settings.key_env()
    return os.environ.get(name) or None if name else None
