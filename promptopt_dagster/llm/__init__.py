"""One client interface for every model backend; backends differ only in how a batch is sent."""

from promptopt_dagster.llm.base import LLMClient, LLMRequest, LLMResponse

__all__ = ["LLMClient", "LLMRequest", "LLMResponse"]
