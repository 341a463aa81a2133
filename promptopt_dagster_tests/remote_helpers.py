"""Real SDK clients pointed at the local fake servers: fast retries, short timeouts, fake ADC."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from promptopt_dagster.llm.base import LLMRequest
from promptopt_dagster.llm.gemini import GeminiClient
from promptopt_dagster.llm.openai_compat import OpenAIClient
from promptopt_dagster.llm.remote import RetryPolicy
from promptopt_dagster_tests.fake_llm_servers import FakeLLMServer

FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05)
SECRET = "sk-test-DO-NOT-LEAK-4f9a2c"


@lru_cache(maxsize=1)
def _private_key_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def adc_file(tmp_path: Path, server: FakeLLMServer) -> Path:
    """Application Default Credentials: a service-account key whose token endpoint is the fake server.

    The SDK runs the real OAuth flow (signed JWT exchanged for an access token); an authorized-user
    file would not do, because google-auth always sends those to oauth2.googleapis.com."""
    path = tmp_path / "adc.json"
    path.write_text(json.dumps({"type": "service_account", "project_id": "proj-1", "private_key_id": "k1",
                                "private_key": _private_key_pem(), "client_email": "ci@proj-1.iam.gserviceaccount.com",
                                "client_id": "1", "token_uri": f"{server.url}/token"}))
    return path


def gemini_client(server: FakeLLMServer, **kw) -> GeminiClient:
    kw.setdefault("retry", FAST_RETRY)
    kw.setdefault("timeout_s", 2.0)
    return GeminiClient("gemini-2.5-flash", vertexai=True, project="proj-1", location="us-central1",
                        base_url=server.url, **kw)


def openai_client(server: FakeLLMServer, **kw) -> OpenAIClient:
    kw.setdefault("retry", FAST_RETRY)
    kw.setdefault("timeout_s", 2.0)
    kw.setdefault("api_key", SECRET)
    return OpenAIClient("gpt-4o-mini", base_url=server.openai_base_url, **kw)


def chat(user: str, system: str = "Answer in one word.", **kw) -> LLMRequest:
    return LLMRequest(messages=(("system", system), ("user", user)), **{"max_tokens": 8, **kw})


def echo(req) -> str:
    """A fake model whose answer names its input, so a mixed-up row is visible."""
    return f"answer to {req.user}"
