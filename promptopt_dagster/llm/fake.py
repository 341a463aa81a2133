"""A deterministic stand-in model for fast unit tests of logic; never used to call a feature done."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from promptopt_dagster.llm.base import LLMClient, LLMRequest, LLMResponse


def _default_responder(request: LLMRequest) -> str:
    text = request.prompt if request.prompt is not None else "\n".join(c for _, c in request.messages or ())
    return hashlib.sha256(text.encode()).hexdigest()[:8]


class FakeLLM(LLMClient):
    backend = "fake"

    def __init__(
        self, responder: Callable[[LLMRequest], str] | None = None, name: str = "fake-1", mode: str = "completion"
    ) -> None:
        super().__init__()
        self._responder = responder or _default_responder
        self._name = name
        self.mode = mode  # type: ignore[assignment]
        self.requests: list[LLMRequest] = []

    @property
    def model(self) -> str:
        return self._name

    def _generate(self, requests: Sequence[LLMRequest]) -> list[LLMResponse]:
        out = []
        for req in requests:
            self.requests.append(req)
            try:
                text = self._responder(req)
            except Exception as exc:  # a responder may simulate a failing row
                out.append(LLMResponse(error=f"{type(exc).__name__}: {exc}"))
                continue
            if req.choices:
                text = _as_choice(text, req.choices)
            prompt_len = len((req.prompt or "").split())
            out.append(
                LLMResponse(
                    text=text, prompt_tokens=prompt_len, completion_tokens=len(text.split()), finish_reason="stop"
                )
            )
        return out


def _as_choice(text: str, choices: Sequence[str]) -> str:
    """The choice the scripted answer names first (a constrained backend always answers a choice)."""
    lowered = text.strip().casefold()
    named = [(lowered.find(c.casefold()), -len(c), c) for c in choices if c.casefold() in lowered]
    return min(named)[2] if named else choices[0]
