"""Build a (cached) client from plain settings, so the Dagster resource, the CLI and the tests share one path."""

from __future__ import annotations

import logging
from pathlib import Path

from promptopt_dagster.llm.base import LLMClient
from promptopt_dagster.llm.cache import CachedClient, ResponseCache
from promptopt_dagster.llm.fake import FakeLLM
from promptopt_dagster.llm.gemini import GeminiClient
from promptopt_dagster.llm.local import LlamaCppClient
from promptopt_dagster.llm.model_settings import BACKENDS, PROMPT_SERVICES, ModelSettings, api_key_from_env
from promptopt_dagster.llm.openai_compat import OpenAIClient
from promptopt_dagster.llm.remote import RetryPolicy
from promptopt_dagster.llm.usage import price_for
from promptopt_dagster.llm.vertex_prompt_optimizer import VertexPromptOptimizerClient

__all__ = ["ModelSettings", "build_client"]

log = logging.getLogger("promptopt.llm")

#: models already warned about having no price: a run builds a client per resource and per asset, and the
#: warning says nothing new the second time, so it is printed once per model per process
_UNPRICED_WARNED: set[str] = set()


def build_client(
    settings: ModelSettings,
    model_dir: Path,
    threads: int,
    cache_path: Path | str | None,
    api_key: str | None = None,
) -> LLMClient:
    """A ready client; `api_key` None means: read it from the environment variable the settings name."""
    s = settings
    if api_key is None:
        api_key = api_key_from_env(s)
    engine = dict(
        max_in_flight=s.max_in_flight,
        rpm=s.rpm,
        tpm=s.tpm,
        timeout_s=s.timeout_s,
        retry=RetryPolicy(
            max_attempts=s.max_attempts, initial_backoff_s=s.backoff_initial_s, max_backoff_s=s.backoff_max_s
        ),
    )
    if s.backend == "local":
        client: LLMClient = LlamaCppClient(
            model_dir=model_dir,
            model_path=Path(s.model) if s.model else None,
            n_ctx=s.context_tokens,
            n_threads=threads,
        )
    elif s.backend == "gemini":
        client = GeminiClient(
            s.model,
            vertexai=s.vertexai,
            project=s.project,
            location=s.location,
            api_key=api_key,
            base_url=s.base_url,
            **engine,
        )
    elif s.backend == "openai":
        client = OpenAIClient(s.model, base_url=s.base_url, api_key=api_key, json_mode=s.json_mode, **engine)
    elif s.backend == "vertex_prompt_optimizer":
        client = VertexPromptOptimizerClient(
            s.model, project=s.project, location=s.location, base_url=s.base_url, **engine
        )
    elif s.backend == "fake":
        client = FakeLLM(name=s.model or "fake-1")
    else:
        raise ValueError(f"Unknown LLM backend {s.backend!r}; choose one of {', '.join(BACKENDS)}.")
    client.price = price_for(client.backend, client.model, s.input_price_per_mtok, s.output_price_per_mtok)
    if not client.price.known and s.backend not in PROMPT_SERVICES and client.model_key not in _UNPRICED_WARNED:
        _UNPRICED_WARNED.add(client.model_key)  # a prompt service's call has no tokens to price
        log.warning(
            "no price known for %s; its cost counts as 0. Set input_price_per_mtok and "
            "output_price_per_mtok for this model to estimate cost and enforce a money budget.",
            client.model_key,
        )
    return CachedClient(client, ResponseCache(cache_path)) if cache_path else client
