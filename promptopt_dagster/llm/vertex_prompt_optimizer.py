"""Google's Vertex AI Prompt Optimizer as an optimizer-model backend, through google-cloud-aiplatform 2.7.

The service is not a chat model: it takes one system instruction (and, in few-shot mode, examples of
the task model's answers next to the answers wanted) and replies with a suggested instruction. It is
wrapped as an LLMClient anyway, so its calls go through the same response cache, rate limiter,
retries and usage counts as every other model call (a rerun costs nothing; `max_requests` caps it).

A request to this backend is one JSON document in `LLMRequest.prompt` (see `optimize_request`), and
the answer is the service's raw text: the optimizer parses it itself, strictly. The `agentplatform`
client is used, not `vertexai.Client`, which warns that it is deprecated in favour of it.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import pandas as pd

from promptopt_dagster.llm.base import LLMRequest, LLMResponse
from promptopt_dagster.llm.remote import Failure, RemoteClient, failure_from_status

BACKEND = "vertex_prompt_optimizer"
MODEL = "prompt-optimizer"  # the service has no model versions to choose; the name keys usage and the cache
MODES = ("zero_shot", "few_shot")

# Said once in docs/optimizers.md instead of on every call: the SDK marks prompts.optimize experimental.
warnings.filterwarnings("ignore", message=r"The Vertex SDK GenAI prompts\.optimize method is experimental")
#: columns of a few-shot example, as the SDK's examples_dataframe wants them
EXAMPLE_KEYS = ("prompt", "model_response", "target_response")


def optimize_request(instruction: str, examples: list[dict[str, str]] | None = None) -> LLMRequest:
    """The request for one optimizePrompt call: zero-shot without examples, few-shot with target responses."""
    examples = examples or []
    for i, example in enumerate(examples):
        if set(example) != set(EXAMPLE_KEYS):
            raise ValueError(
                f"example {i} has keys {sorted(example)}; a few-shot example has exactly {list(EXAMPLE_KEYS)}"
            )
    doc = {"instruction": instruction, "mode": "few_shot" if examples else "zero_shot", "examples": examples}
    return LLMRequest(prompt=json.dumps(doc, ensure_ascii=False, sort_keys=True), max_tokens=0)


class VertexPromptOptimizerClient(RemoteClient):
    backend = BACKEND
    mode = "chat"

    def __init__(
        self,
        model: str | None = None,
        *,
        project: str | None = None,
        location: str | None = None,
        base_url: str | None = None,
        credentials: Any = None,
        **engine: Any,
    ) -> None:
        # start-up: agentplatform takes ~2 s to import (google-genai, httpx ~0.4 s); only the vertex optimizer pays it
        import agentplatform
        import httpx
        from google.genai import types

        if not project or not location:
            raise ValueError(
                "the Vertex AI Prompt Optimizer needs a project and a location "
                "(optimizer_model: {backend: vertex_prompt_optimizer, project: ..., location: ...})"
            )
        self._project, self._location, self._base_url = project, location, base_url
        super().__init__(model or MODEL, secrets=[], **engine)
        # httpx, for the reason GeminiClient gives: aiohttp may re-send a POST on a dropped connection.
        http = types.HttpOptions(
            base_url=base_url,
            timeout=int(self.timeout_s * 1000),
            httpx_async_client=httpx.AsyncClient(timeout=self.timeout_s),
        )
        self._client = agentplatform.Client(
            project=project, location=location, credentials=credentials, http_options=http
        )

    def endpoint(self) -> str:
        where = f"vertex:{self._project}/{self._location}"
        return f"{where}@{self._base_url}" if self._base_url else where

    async def _send(self, request: LLMRequest) -> LLMResponse:
        from agentplatform import types  # start-up: see __init__ (~2 s, only for the vertex optimizer)

        try:
            doc = json.loads(request.prompt or "")
            instruction, mode, examples = doc["instruction"], doc["mode"], doc["examples"]
        except (ValueError, KeyError, TypeError):
            return LLMResponse(error="rejected: not an optimize request (build it with optimize_request())")
        config = None
        if mode == "few_shot":
            config = types.OptimizeConfig(
                optimization_target=types.OptimizeTarget.OPTIMIZATION_TARGET_FEW_SHOT_TARGET_RESPONSE,
                examples_dataframe=pd.DataFrame(examples, columns=list(EXAMPLE_KEYS)),
            )
        reply = await self._client.aio.prompts.optimize(prompt=instruction, config=config)
        # Tokens are not reported by the service: its calls count as requests, and cost nothing estimated.
        return LLMResponse(text=reply.raw_text_response or "", finish_reason="stop")

    async def _aclose(self) -> None:
        await self._client.aio._api_client.aclose()  # the SDK's async pool (AsyncClient has no public close)

    def _classify(self, exc: BaseException) -> Failure:
        # the agentplatform client raises google-genai's errors; start-up: see __init__ (only for the vertex optimizer)
        from google.genai import errors

        if isinstance(exc, errors.APIError):
            return failure_from_status(
                int(exc.code or 0), f"{exc.code} {exc.status}: {exc.message}", getattr(exc.response, "headers", None)
            )
        return super()._classify(exc)
