"""Gemini through the google-genai SDK: Vertex AI (project, location, Application Default Credentials) or an API key.

google-genai is Google's replacement for the deprecated `vertexai.generative_models`. The SDK's
own retries stay off (its default) so that attempts are counted, jittered and rate-limited in one
place (llm/remote.py).
"""

from __future__ import annotations

from typing import Any

from promptopt_dagster.llm.base import LLMRequest, LLMResponse
from promptopt_dagster.llm.remote import Failure, MalformedReply, RemoteClient, failure_from_status

DEFAULT_MODEL = "gemini-2.5-flash"


class GeminiClient(RemoteClient):
    backend = "gemini"

    def __init__(
        self,
        model: str | None = None,
        *,
        vertexai: bool = True,
        project: str | None = None,
        location: str | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        api_version: str | None = None,
        credentials: Any = None,
        **engine: Any,
    ) -> None:
        # start-up: google-genai takes ~0.4 s to import; only a process with a Gemini model pays it
        from google import genai
        from google.genai import types

        self._vertexai, self._project, self._location, self._base_url = vertexai, project, location, base_url
        super().__init__(model or DEFAULT_MODEL, secrets=[api_key or ""], **engine)
        # The SDK's aiohttp transport (aiohttp comes with openai[aiohttp]): under the httpx transport,
        # httpcore's connection pool rescans every connection on every request event, and that CPU
        # capped a 2-core machine at ~0.55 of the ideal request rate (bench/llm_throughput.py).
        # retry_options with one attempt is what turns OFF the SDK's implicit retry on the aiohttp
        # path: without it a dropped connection makes the SDK sleep 1-10 s and re-send the POST
        # itself (billed twice, counted once). Retries stay in llm/remote.py; the 'drop' case of
        # test_llm_remote.py::test_transient_failures_are_retried_until_answered pins the exact count.
        http = types.HttpOptions(
            base_url=base_url,
            api_version=api_version,
            timeout=int(self.timeout_s * 1000),
            retry_options=types.HttpRetryOptions(attempts=1),
        )
        if vertexai:
            if not project or not location:
                raise ValueError(
                    "Gemini on Vertex AI needs a project and a location "
                    "(PROMPTOPT_TASK__PROJECT / PROMPTOPT_TASK__LOCATION or the resource config)"
                )
            self._client = genai.Client(
                vertexai=True, project=project, location=location, credentials=credentials, http_options=http
            )
        else:
            if not api_key:
                raise ValueError(
                    "Gemini API-key mode needs a key: set GOOGLE_API_KEY (or the variable named by "
                    "api_key_env), or use Vertex AI with vertexai=true, a project and a location"
                )
            self._client = genai.Client(api_key=api_key, http_options=http)
        self._types = types

    def endpoint(self) -> str:
        where = f"vertex:{self._project}/{self._location}" if self._vertexai else "gemini-api"
        return f"{where}@{self._base_url}" if self._base_url else where

    def identity(self) -> dict:
        # Vertex and the Gemini API serve the same model weights; the answer does not depend on the route.
        return {"backend": self.backend, "model": self.model}

    async def _aclose(self) -> None:
        await self._client.aio.aclose()

    def _config(self, request: LLMRequest, system: str | None):
        t = self._types
        kwargs: dict[str, Any] = dict(
            temperature=request.temperature,
            max_output_tokens=request.max_tokens,
            stop_sequences=list(request.stop) or None,
        )
        if system:
            kwargs["system_instruction"] = system
        if request.choices:
            # The enum MIME type makes Gemini answer the bare value (application/json would quote it).
            kwargs.update(
                response_mime_type="text/x.enum", response_schema={"type": "STRING", "enum": list(request.choices)}
            )
        elif request.json_schema is not None:
            kwargs.update(response_mime_type="application/json", response_schema=request.json_schema)
        return t.GenerateContentConfig(**kwargs)

    def _contents(self, request: LLMRequest) -> tuple[list, str | None]:
        t = self._types
        if request.prompt is not None:
            return [t.Content(role="user", parts=[t.Part(text=request.prompt)])], None
        system = "\n\n".join(c for r, c in request.messages or () if r == "system") or None
        contents = [
            t.Content(role="model" if r == "assistant" else "user", parts=[t.Part(text=c)])
            for r, c in request.messages or ()
            if r != "system"
        ]
        return contents, system

    async def _send(self, request: LLMRequest) -> LLMResponse:
        contents, system = self._contents(request)
        reply = await self._client.aio.models.generate_content(
            model=self.model, contents=contents, config=self._config(request, system)
        )
        usage = reply.usage_metadata
        tokens = dict(
            prompt_tokens=(usage.prompt_token_count or 0) if usage else 0,
            completion_tokens=(usage.candidates_token_count or 0) if usage else 0,
        )
        if not reply.candidates:
            feedback = reply.prompt_feedback
            if feedback is not None and feedback.block_reason:
                return LLMResponse(error=f"blocked: the prompt was blocked ({feedback.block_reason})", **tokens)
            raise MalformedReply("no candidates in the reply")
        candidate = reply.candidates[0]
        finish = str(
            candidate.finish_reason.value
            if hasattr(candidate.finish_reason, "value")
            else candidate.finish_reason or ""
        )
        text = "".join(p.text or "" for p in (candidate.content.parts or [])) if candidate.content else ""
        if not text and finish in ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT"):
            return LLMResponse(error=f"blocked: the answer was withheld ({finish})", finish_reason=finish, **tokens)
        if request.choices:
            text = text.strip()
            if text not in request.choices:  # the server broke its enum; a retry would say the same
                return LLMResponse(
                    error=f"not_a_choice: the model answered {text[:200]!r}, not one of {list(request.choices)}",
                    finish_reason=finish.lower() or None,
                    **tokens,
                )
        return LLMResponse(text=text, finish_reason=finish.lower() or None, **tokens)

    def _classify(self, exc: BaseException) -> Failure:
        from google.genai import errors  # start-up: see __init__ (google-genai, ~0.4 s, only for Gemini)

        if isinstance(exc, errors.APIError):
            return failure_from_status(
                int(exc.code or 0), f"{exc.code} {exc.status}: {exc.message}", getattr(exc.response, "headers", None)
            )
        return super()._classify(exc)
