"""Real SDK clients and the CLI pointed at the local fake servers: fast retries, short timeouts, fake ADC."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import duckdb

from promptopt_dagster.app.settings import PROJECT_ROOT
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
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def adc_file(tmp_path: Path, server: FakeLLMServer) -> Path:
    """Application Default Credentials: a service-account key whose token endpoint is the fake server.

    The SDK runs the real OAuth flow (signed JWT exchanged for an access token); an authorized-user
    file would not do, because google-auth always sends those to oauth2.googleapis.com."""
    path = tmp_path / "adc.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "proj-1",
                "private_key_id": "k1",
                "private_key": _private_key_pem(),
                "client_email": "ci@proj-1.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": f"{server.url}/token",
            }
        )
    )
    return path


def gemini_client(server: FakeLLMServer, **kw) -> GeminiClient:
    kw.setdefault("retry", FAST_RETRY)
    kw.setdefault("timeout_s", 2.0)
    return GeminiClient(
        "gemini-2.5-flash", vertexai=True, project="proj-1", location="us-central1", base_url=server.url, **kw
    )


def openai_client(server: FakeLLMServer, **kw) -> OpenAIClient:
    kw.setdefault("retry", FAST_RETRY)
    kw.setdefault("timeout_s", 2.0)
    kw.setdefault("api_key", SECRET)
    return OpenAIClient("gpt-4o-mini", base_url=server.openai_base_url, **kw)


def make_client(protocol: str, server: FakeLLMServer, **kw):
    """The real SDK client for a fake server's protocol."""
    return gemini_client(server, **kw) if protocol == "gemini" else openai_client(server, **kw)


def chat(user: str, system: str = "Answer in one word.", **kw) -> LLMRequest:
    return LLMRequest(messages=(("system", system), ("user", user)), **{"max_tokens": 8, **kw})


def echo(req) -> str:
    """A fake model whose answer names its input, so a mixed-up row is visible."""
    return f"answer to {req.user}"


# --- whole optimizations through the CLI (tests and bench/optimize_fake_gemini.py) --------------------

POSITIVE = {
    "good",
    "great",
    "best",
    "love",
    "fun",
    "beautiful",
    "wonderful",
    "funny",
    "fine",
    "enjoy",
    "moving",
    "remarkable",
    "charming",
    "entertaining",
    "brilliant",
    "well",
    "solid",
    "sweet",
    "pleasure",
    "delight",
}
NEGATIVE = {
    "bad",
    "worst",
    "dull",
    "boring",
    "mess",
    "fails",
    "stupid",
    "flat",
    "tedious",
    "awful",
    "lack",
    "nothing",
    "problem",
    "poor",
    "unfunny",
    "pointless",
    "never",
    "no",
    "not",
    "too",
}


def lexicon_model(req) -> str:
    """A crude sentiment 'model': good enough for the optimizer to have something to move."""
    words = set(req.user.lower().replace(",", " ").replace(".", " ").split())
    pos, neg = len(words & POSITIVE), len(words & NEGATIVE)
    if pos == neg and not req.messages[:-1]:  # without demos it hedges, with demos it commits
        return "neutral"
    return "positive" if pos >= neg else "negative"


def run_cli(state: Path, env_extra: dict, *args: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PROMPTOPT_STATE_DIR": str(state), "PROMPTOPT_OPTIMIZER__BACKEND": "fake", **env_extra}
    env.pop("DAGSTER_HOME", None)
    return subprocess.run(
        [sys.executable, "-m", "promptopt_dagster.cli", "optimize", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=1200,
    )


def gemini_env(srv: FakeLLMServer, tmp_path: Path) -> dict:
    return {
        "PROMPTOPT_TASK__BACKEND": "gemini",
        "PROMPTOPT_TASK__BASE_URL": srv.url,
        "PROMPTOPT_TASK__PROJECT": "proj-1",
        "PROMPTOPT_TASK__LOCATION": "us-central1",
        "GOOGLE_APPLICATION_CREDENTIALS": str(adc_file(tmp_path, srv)),
        "PROMPTOPT_TASK__TIMEOUT_S": "0.5",
        "PROMPTOPT_TASK__BACKOFF_INITIAL_S": "0.01",
        "PROMPTOPT_TASK__BACKOFF_MAX_S": "0.05",
    }


def warehouse(state: Path, sql: str):
    with duckdb.connect(str(state / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(sql).fetchdf()
