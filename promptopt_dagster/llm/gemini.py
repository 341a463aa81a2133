"""Gemini through the google-genai SDK: Vertex AI (project, location, Application Default Credentials) or an API key.

google-genai is Google's replacement for the deprecated `vertexai.generative_models`. The SDK's
own retries stay off (its default) so that attempts are counted, jittered and rate-limited in one
place (llm/remote.py).
"""

from __future__ import annotations

import json
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
        # itself (billed twice, counted once). Retries stay in llm/remote.py;
        # test_llm_remote.py::test_a_dropped_connection_is_retried_by_the_platform_not_silently_by_the_sdk pins it.
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
        self._wires: dict[tuple, tuple[str, dict]] = {}

    def endpoint(self) -> str:
        where = f"vertex:{self._project}/{self._location}" if self._vertexai else "gemini-api"
        return f"{where}@{self._base_url}" if self._base_url else where

    def identity(self) -> dict:
        # Vertex and the Gemini API serve the same model weights; the answer does not depend on the route.
        return {"backend": self.backend, "model": self.model}

    async def _aclose(self) -> None:
        await self._client.aio.aclose()

    def _config(self, request: LLMRequest):
        """The request's settings as the SDK's config (the system instruction travels in the body)."""
        t = self._types
        kwargs: dict[str, Any] = dict(
            temperature=request.temperature,
            max_output_tokens=request.max_tokens,
            stop_sequences=list(request.stop) or None,
        )
        if request.choices:
            # The enum MIME type makes Gemini answer the bare value (application/json would quote it).
            kwargs.update(
                response_mime_type="text/x.enum", response_schema={"type": "STRING", "enum": list(request.choices)}
            )
        elif request.json_schema is not None:
            kwargs.update(response_mime_type="application/json", response_schema=request.json_schema)
        return t.GenerateContentConfig(**kwargs)

    def _wire(self, request: LLMRequest) -> tuple[str, dict]:
        """The REST path and generationConfig the SDK itself would send for this request's settings, made by
        the SDK's own converter once per distinct setting and then reused (a batch shares one).

        Why not `client.aio.models.generate_content` for every row: it builds and validates pydantic
        models both ways, ~1 ms of CPU a request, and one event loop on a small machine spends it
        in bursts as 32 replies land together: 0.7 of the ideal request rate where the openai
        backend reaches 0.93 (bench/llm_throughput.py). The body below is the SDK's, byte for byte
        (test_llm_remote.py::test_gemini_fast_body_is_the_sdks_own compares them); auth, the
        endpoint, the transport and the API errors are still the SDK's (`async_request`). The
        converter is private to google-genai, which is why setup.py pins it exactly."""
        key = (
            request.temperature,
            request.max_tokens,
            tuple(request.stop),
            tuple(request.choices or ()),
            json.dumps(request.json_schema, sort_keys=True) if request.json_schema is not None else None,
        )
        wire = self._wires.get(key)
        if wire is None:
            from google.genai import _common, models

            t = self._types
            params = t._GenerateContentParameters(model=self.model, contents="-", config=self._config(request))
            convert = (
                models._GenerateContentParameters_to_vertex
                if self._vertexai
                else models._GenerateContentParameters_to_mldev
            )
            body = _common.encode_unserializable_types(
                _common.convert_to_dict(convert(self._client._api_client, params, None, params))
            )
            wire = ("{model}:generateContent".format_map(body["_url"]), body.get("generationConfig", {}))
            self._wires[key] = wire
        return wire

    def _body(self, request: LLMRequest) -> tuple[str, dict]:
        path, generation = self._wire(request)
        if request.prompt is not None:
            body: dict[str, Any] = {"contents": [{"parts": [{"text": request.prompt}], "role": "user"}]}
        else:
            messages = request.messages or ()
            body = {
                "contents": [
                    {"parts": [{"text": c}], "role": "model" if r == "assistant" else "user"}
                    for r, c in messages
                    if r != "system"
                ]
            }
            system = "\n\n".join(c for r, c in messages if r == "system")
            if system:
                body["systemInstruction"] = {"parts": [{"text": system}], "role": "user"}
        if generation:
            body["generationConfig"] = generation
        return path, body

    async def _send(self, request: LLMRequest) -> LLMResponse:
        path, body = self._body(request)
        reply = await self._client._api_client.async_request("post", path, body, None)
        return self._read(json.loads(reply.body) if reply.body else {}, request)

    @staticmethod
    def _read(reply: dict, request: LLMRequest) -> LLMResponse:
        """The answer in a generateContent reply (REST JSON, as the SDK would read it)."""
        if not isinstance(reply, dict):
            raise MalformedReply("the reply is not a JSON object")
        usage = reply.get("usageMetadata") or {}
        tokens = dict(
            prompt_tokens=int(usage.get("promptTokenCount") or 0),
            completion_tokens=int(usage.get("candidatesTokenCount") or 0),
        )
        candidates = reply.get("candidates")
        if not candidates:
            block = (reply.get("promptFeedback") or {}).get("blockReason")
            if block:
                return LLMResponse(error=f"blocked: the prompt was blocked ({block})", **tokens)
            raise MalformedReply("no candidates in the reply")
        candidate = candidates[0]
        if not isinstance(candidate, dict):
            raise MalformedReply("a candidate is not a JSON object")
        finish = str(candidate.get("finishReason") or "")
        parts = (candidate.get("content") or {}).get("parts") or []
        text = "".join(str(p.get("text") or "") for p in parts if isinstance(p, dict))
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
