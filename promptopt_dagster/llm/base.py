"""The contract every backend meets: a batch of requests in, one response per request out.

A row that fails comes back with `error` set instead of raising, so one bad row never costs the
rest of the batch; callers decide what fraction of errors is acceptable.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence


@dataclass(frozen=True)
class LLMRequest:
    prompt: str | None = None  # completion-style text (base models)
    messages: tuple[tuple[str, str], ...] | None = None  # chat-style (role, content) pairs
    max_tokens: int = 16
    temperature: float = 0.0
    stop: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class LLMResponse:
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    finish_reason: str | None = None
    error: str | None = None
    cached: bool = False


@dataclass
class UsageStats:
    """Requests actually sent to a model versus answered from the response cache."""

    llm_calls: int = 0
    cache_hits: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: "UsageStats") -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def since(self, before: "UsageStats") -> "UsageStats":
        """What was used after the snapshot `before` (take one with dataclasses.replace(usage))."""
        return UsageStats(**{f.name: getattr(self, f.name) - getattr(before, f.name) for f in dataclasses.fields(self)})


class LLMClient(ABC):
    backend: str = "abstract"
    #: "completion" models get one rendered text; "chat" models get system/user/assistant turns.
    mode: Literal["completion", "chat"] = "completion"

    def __init__(self) -> None:
        self.usage = UsageStats()

    @property
    @abstractmethod
    def model(self) -> str: ...

    def identity(self) -> dict[str, Any]:
        """What, besides the request, determines the answer. Part of the cache key; never secrets."""
        return {"backend": self.backend, "model": self.model}

    @abstractmethod
    def _generate(self, requests: Sequence[LLMRequest]) -> list[LLMResponse]: ...

    def generate(self, requests: Sequence[LLMRequest]) -> list[LLMResponse]:
        responses = self._generate(requests)
        if len(responses) != len(requests):
            raise RuntimeError(f"{self.backend} returned {len(responses)} responses for {len(requests)} requests")
        for r in responses:
            if not r.cached:
                self.usage.llm_calls += 1
                self.usage.prompt_tokens += r.prompt_tokens
                self.usage.completion_tokens += r.completion_tokens
            self.usage.errors += r.error is not None
        return responses
