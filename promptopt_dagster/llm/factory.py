"""Build a (cached) client from plain settings, so the Dagster resource, the CLI and the tests share one path.

`ModelSettings` is every knob of one model; the task model and the optimizer model each get their
own (PROMPTOPT_TASK__* and PROMPTOPT_OPTIMIZER__* in settings.py, or the `task_model` and
`optimizer_model` resources in Dagster). Secrets are not settings: the key is read from the
environment variable the settings name, and never stored, logged or hashed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from promptopt_dagster.llm.base import LLMClient
from promptopt_dagster.llm.cache import CachedClient, ResponseCache
from promptopt_dagster.llm.remote import RetryPolicy
from promptopt_dagster.llm.usage import price_for

log = logging.getLogger("promptopt.llm")

BACKENDS = ("local", "gemini", "openai", "fake")
DEFAULT_KEY_ENV = {"gemini": "GOOGLE_API_KEY", "openai": "OPENAI_API_KEY"}


class ModelSettings(BaseModel):
    backend: str = Field("local", description="local (embedded llama.cpp) | gemini | openai | fake (tests)")
    model: str | None = Field(None, description="Model name (or GGUF path for local); empty: the backend's default")
    # where: gemini
    vertexai: bool = Field(True, description="gemini: Vertex AI with ADC (true) or the Gemini API with a key (false)")
    project: str | None = Field(None, description="gemini on Vertex: Google Cloud project id")
    location: str = Field("us-central1", description="gemini on Vertex: region, or 'global'")
    # where: openai, or a proxy/test server for gemini
    base_url: str | None = Field(None, description="openai: server URL ending in /v1; gemini: endpoint override")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key "
                                                      "(default GOOGLE_API_KEY / OPENAI_API_KEY)")
    json_mode: Literal["schema", "object", "off"] = Field(
        "schema", description="openai: how to ask for JSON (json_schema, json_object, or not at all)")
    # how fast
    max_in_flight: int = Field(16, description="Requests sent at once (remote backends)")
    rpm: int | None = Field(None, description="Requests per minute, shared by everything this process sends to the model")
    tpm: int | None = Field(None, description="Tokens per minute, shared likewise")
    timeout_s: float = Field(60.0, description="Seconds to wait for one reply")
    max_attempts: int = Field(6, description="Tries per row, the first included, on 408/429/5xx/timeouts/broken replies")
    backoff_initial_s: float = Field(1.0, description="First retry waits up to this long (full jitter, doubling)")
    backoff_max_s: float = Field(60.0, description="Cap of one backoff wait; a longer Retry-After is still honoured")
    # what it costs
    input_price_per_mtok: float | None = Field(None, description="USD per million prompt tokens (default: llm/prices.yaml)")
    output_price_per_mtok: float | None = Field(None, description="USD per million completion tokens")

    def key_env(self) -> str | None:
        return self.api_key_env or DEFAULT_KEY_ENV.get(self.backend)


def api_key_from_env(settings: ModelSettings) -> str | None:
    name = settings.key_env()
    return os.environ.get(name) or None if name else None


def build_client(settings: ModelSettings, model_dir: Path, threads: int, cache_path: Path | None,
                 api_key: str | None = None) -> LLMClient:
    """A ready client; `api_key` None means: read it from the environment variable the settings name."""
    s = settings
    if api_key is None:
        api_key = api_key_from_env(s)
    engine = dict(max_in_flight=s.max_in_flight, rpm=s.rpm, tpm=s.tpm, timeout_s=s.timeout_s,
                  retry=RetryPolicy(max_attempts=s.max_attempts, initial_backoff_s=s.backoff_initial_s,
                                    max_backoff_s=s.backoff_max_s))
    if s.backend == "local":
        from promptopt_dagster.llm.local import LlamaCppClient

        client: LLMClient = LlamaCppClient(model_dir=model_dir, model_path=Path(s.model) if s.model else None,
                                           n_threads=threads)
    elif s.backend == "gemini":
        from promptopt_dagster.llm.gemini import GeminiClient

        client = GeminiClient(s.model, vertexai=s.vertexai, project=s.project, location=s.location,
                              api_key=api_key, base_url=s.base_url, **engine)
    elif s.backend == "openai":
        from promptopt_dagster.llm.openai_compat import OpenAIClient

        client = OpenAIClient(s.model, base_url=s.base_url, api_key=api_key, json_mode=s.json_mode, **engine)
    elif s.backend == "fake":
        from promptopt_dagster.llm.fake import FakeLLM

        client = FakeLLM(name=s.model or "fake-1")
    else:
        raise ValueError(f"Unknown LLM backend {s.backend!r}; choose one of {', '.join(BACKENDS)}.")
    client.price = price_for(client.backend, client.model, s.input_price_per_mtok, s.output_price_per_mtok)
    if not client.price.known:
        log.warning("no price known for %s; its cost counts as 0. Set input_price_per_mtok and "
                    "output_price_per_mtok for this model to estimate cost and enforce a money budget.",
                    client.model_key)
    return CachedClient(client, ResponseCache(cache_path)) if cache_path else client
