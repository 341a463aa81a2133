"""Any OpenAI-compatible chat-completions server (OpenAI, vLLM, Ollama, llama.cpp server) via the openai SDK.

The SDK's own retries are switched off (max_retries=0) so that attempts are counted, jittered and
rate-limited in one place (llm/remote.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from promptopt_dagster.llm.base import LLMRequest, LLMResponse
from promptopt_dagster.llm.remote import Failure, MalformedReply, RemoteClient, failure_from_status

DEFAULT_MODEL = "gpt-4o-mini"
#: Local servers (vLLM, Ollama, llama.cpp) need no key, but the SDK refuses to start without one.
NO_KEY = "not-needed"


class OpenAIClient(RemoteClient):
    backend = "openai"

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        json_mode: Literal["schema", "object", "off"] = "schema",
        **engine: Any,
    ) -> None:
        import openai  # start-up: the SDK takes ~0.4 s to import; paid only with an OpenAI-compatible model

        self._base_url = base_url
        self.json_mode = json_mode
        super().__init__(model or DEFAULT_MODEL, secrets=[api_key or ""], **engine)
        # aiohttp under the SDK (openai[aiohttp]) costs less CPU per request than its default httpx
        # stack, and on a small machine CPU per request bounds throughput (bench/llm_throughput.py).
        self._reply_type = openai.types.chat.ChatCompletion
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or NO_KEY,
            max_retries=0,
            timeout=self.timeout_s,
            http_client=openai.DefaultAioHttpClient(timeout=self.timeout_s),
        )

    def endpoint(self) -> str:
        return self._base_url or "api.openai.com"

    def identity(self) -> dict:
        # Two servers may serve different weights under one model name, so the endpoint is part of it.
        return {"backend": self.backend, "model": self.model, "endpoint": self.endpoint()}

    async def _aclose(self) -> None:
        await self._client.close()

    def _response_format(self, request: LLMRequest) -> dict | None:
        if (request.json_schema is None and not request.choices) or self.json_mode == "off":
            return None
        if self.json_mode == "object":
            return {"type": "json_object"}
        if request.choices:
            return {
                "type": "json_schema",
                "json_schema": {"name": "label", "strict": True, "schema": label_schema(request.choices)},
            }
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": request.json_schema}}

    def _choice(self, text: str, choices: Sequence[str]) -> tuple[str | None, str]:
        """(the chosen label, or None and why not).

        With JSON off the server constrains nothing, so a reply that names exactly one label is
        taken as that label; with a JSON mode the reply must be {"label": <one of the choices>}."""
        if self.json_mode == "off":
            answer = text.strip()
            if answer in choices:
                return answer, ""
            named = [c for c in choices if c.lower() in answer.lower()]
            if len(named) == 1:
                return named[0], ""
            return None, f"the model answered {answer[:200]!r}, which names not exactly one of {list(choices)}"
        try:
            answer = json.loads(text)["label"]
        except (ValueError, TypeError, KeyError):
            return None, f"the model answered {text[:200]!r}, not a JSON object with a label from {list(choices)}"
        if answer not in choices:
            return None, f"the model answered {str(answer)[:200]!r}, not one of {list(choices)}"
        return answer, ""

    async def _send(self, request: LLMRequest) -> LLMResponse:
        if request.prompt is not None:
            messages = [{"role": "user", "content": request.prompt}]
        else:
            messages = [{"role": r, "content": c} for r, c in request.messages or ()]
        kwargs: dict[str, Any] = dict(
            model=self.model, messages=messages, max_tokens=request.max_tokens, temperature=request.temperature
        )
        if request.stop:
            kwargs["stop"] = list(request.stop)
        fmt = self._response_format(request)
        if fmt is not None:
            kwargs["response_format"] = fmt
        # The SDK's documented raw `post` (README, "undocumented endpoints") skips the per-call walk over
        # the typed parameters that `chat.completions.create` does on every call.
        reply = await self._client.post("/chat/completions", cast_to=self._reply_type, body=kwargs)
        if not getattr(reply, "choices", None):
            raise MalformedReply("no choices in the reply")
        choice = reply.choices[0]
        usage = reply.usage
        out = LLMResponse(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason,
            prompt_tokens=(usage.prompt_tokens or 0) if usage else 0,
            completion_tokens=(usage.completion_tokens or 0) if usage else 0,
        )
        if request.choices:
            # An off-choice answer is the row's error, not a retry: at temperature 0 it would come back the same.
            label, why = self._choice(out.text, request.choices)
            out.text, out.error = (label, None) if label is not None else ("", f"not_a_choice: {why}")
        return out

    def _classify(self, exc: BaseException) -> Failure:
        import openai  # start-up: see __init__ (~0.4 s, only for an OpenAI-compatible model)

        if isinstance(exc, openai.APIStatusError):
            return failure_from_status(exc.status_code, f"{exc.status_code}: {exc.message}", exc.response.headers)
        if isinstance(exc, openai.APITimeoutError):
            refused = _refused(exc)
            if refused is not None:
                return Failure("connection", f"connection failed: {refused}", True)
            return Failure("timeout", f"no reply within {self.timeout_s:g}s", True)
        if isinstance(exc, openai.APIConnectionError):
            return Failure("connection", f"connection failed: {exc}", True)
        return super()._classify(exc)


def _refused(exc: BaseException) -> BaseException | None:
    """The refused connection under a 'timeout': the aiohttp transport reports a refused connect as a
    ConnectTimeout, which would tell a user whose server is down to raise the timeout."""
    seen = exc.__cause__ or exc.__context__
    while seen is not None:
        inner = getattr(seen, "os_error", seen)
        if isinstance(inner, ConnectionError):
            return inner
        seen = seen.__cause__ or seen.__context__
    return None


def label_schema(choices: Sequence[str]) -> dict:
    """A strict-mode schema (every property required, no others) whose one field is the label."""
    return {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": list(choices)}},
        "required": ["label"],
        "additionalProperties": False,
    }
