"""Build a (cached) client from plain settings, so the Dagster resource and the tests share one path."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from promptopt_dagster.llm.base import LLMClient
from promptopt_dagster.llm.cache import CachedClient, ResponseCache

BACKENDS = ("local", "fake")


class ModelSettings(BaseModel):
    backend: str = "local"
    model: str | None = None  # None: the backend's default model


def build_client(settings: ModelSettings, model_dir: Path, threads: int, cache_path: Path | None) -> LLMClient:
    if settings.backend == "local":
        from promptopt_dagster.llm.local import LlamaCppClient

        client: LLMClient = LlamaCppClient(model_dir=model_dir, model_path=Path(settings.model) if settings.model else None,
                                           n_threads=threads)
    elif settings.backend == "fake":
        from promptopt_dagster.llm.fake import FakeLLM

        client = FakeLLM(name=settings.model or "fake-1")
    else:
        raise ValueError(f"Unknown LLM backend {settings.backend!r}; choose one of {', '.join(BACKENDS)}.")
    return CachedClient(client, ResponseCache(cache_path)) if cache_path else client
