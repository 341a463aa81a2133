"""The contract every backend meets: requests in, one response per request out, in any order.

A row that fails comes back with `error` set instead of raising, so one bad row never costs the
rest of the batch; callers decide what fraction of errors is acceptable. Backends stream results
as they finish, which lets callers log progress and store answers before a long batch is over.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from promptopt_dagster.llm.usage import Price, UsageStats

__all__ = ["LLMClient", "LLMRequest", "LLMResponse", "UsageStats"]


@dataclass(frozen=True)
class LLMRequest:
    prompt: str | None = None  # completion-style text (base models)
    messages: tuple[tuple[str, str], ...] | None = None  # chat-style (role, content) pairs
    max_tokens: int = 16
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    json_schema: dict | None = None  # ask for JSON matching this schema (backends with a JSON mode)
    # When set, the answer must be exactly one of these strings (a label). Each backend enforces it its
    # own way (local: label-likelihood ranking; Gemini: an enum response schema; OpenAI-compatible: a
    # JSON schema enum) and returns the chosen string itself as `text`.
    choices: tuple[str, ...] = ()
    # With `choices`: the same prompt with content-free inputs; a backend that ranks labels divides each
    # label's probability by its mean over these (contextual calibration). Others never receive any.
    calibration_prompts: tuple[str, ...] = ()
    # With `choices`: the answer must carry each label's score (`LLMResponse.label_scores`), so answers
    # can be summed over demo sets (PromptVersion.ensemble). Not part of the cache key: a cached answer
    # without scores is asked again.
    want_label_scores: bool = False

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
    attempts: int = 1  # calls it took, retries included; 0 when answered from the cache
    cost_usd: float = 0.0
    # Label-answer backends that rank labels (llama.cpp): each label's log-probability after the prompt.
    label_scores: dict[str, float] | None = None


class LLMClient(ABC):
    backend: str = "abstract"
    #: "completion" models get one rendered text; "chat" models get system/user/assistant turns.
    mode: Literal["completion", "chat"] = "completion"
    #: Whether label answers come from the labels' scores, so they can be calibrated (PromptVersion.calibrate).
    ranks_labels: bool = False

    def __init__(self) -> None:
        self.usage = UsageStats()
        self.price = Price()

    @property
    @abstractmethod
    def model(self) -> str: ...

    @property
    def model_key(self) -> str:
        """The name usage is summed under: one price and one rate limit apply to it."""
        return f"{self.backend}/{self.model}"

    def identity(self) -> dict[str, Any]:
        """What, besides the request, determines the answer. Part of the cache key; never secrets."""
        return {"backend": self.backend, "model": self.model}

    def _generate(self, requests: Sequence[LLMRequest]) -> list[LLMResponse]:
        raise NotImplementedError(f"{type(self).__name__} implements neither _generate nor _stream")

    def _stream(self, requests: Sequence[LLMRequest]) -> Iterator[tuple[int, LLMResponse]]:
        """(index, response) pairs as they finish; a backend without streaming answers in one go."""
        yield from enumerate(self._generate(requests))

    def stream(self, requests: Sequence[LLMRequest]) -> Iterator[tuple[int, LLMResponse]]:
        for i, r in self._stream(requests):
            self._account(r)
            yield i, r

    def generate(
        self, requests: Sequence[LLMRequest], on_result: Callable[[int, LLMResponse], None] | None = None
    ) -> list[LLMResponse]:
        out: list[LLMResponse | None] = [None] * len(requests)
        for i, r in self.stream(requests):
            if out[i] is not None:
                raise RuntimeError(f"{self.backend} answered request {i} twice")
            out[i] = r
            if on_result is not None:
                on_result(i, r)
        missing = [i for i, r in enumerate(out) if r is None]
        if missing:
            raise RuntimeError(f"{self.backend} returned no response for {len(missing)} of {len(requests)} requests")
        return out  # type: ignore[return-value]

    def close(self) -> None:  # noqa: B027 (optional hook: most clients hold nothing to release)
        """Release connections; the client must not be used afterwards."""

    def context_window(self) -> int | None:
        """Tokens one request may hold, prompt and answer together; None when unknown (nothing is checked)."""
        return None

    def count_tokens(self, texts: Sequence[str]) -> list[int] | None:
        """Exact prompt lengths with the model's own tokenizer; None when this backend has none at hand."""
        return None

    def _account(self, r: LLMResponse) -> None:
        u = self.usage
        u.errors += r.error is not None
        if r.cached:
            r.attempts, r.cost_usd = 0, 0.0
            u.cache_hits += 1
            return
        r.cost_usd = self.price.cost(r.prompt_tokens, r.completion_tokens)
        u.llm_calls += 1
        u.requests += r.attempts
        u.prompt_tokens += r.prompt_tokens
        u.completion_tokens += r.completion_tokens
        u.cost_usd += r.cost_usd
