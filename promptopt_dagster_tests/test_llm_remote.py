"""The real google-genai and openai clients against local servers that speak their wire protocols."""

from __future__ import annotations

import time

import pytest

from promptopt_dagster.llm.base import LLMRequest
from promptopt_dagster.llm.cache import CachedClient, ResponseCache
from promptopt_dagster.llm.gemini import GeminiClient
from promptopt_dagster.llm.openai_compat import OpenAIClient
from promptopt_dagster.llm.remote import LLMConfigurationError, MalformedReply, RetryPolicy
from promptopt_dagster_tests.fake_llm_servers import ACCESS_TOKEN, FakeLLMServer, FaultPlan
from promptopt_dagster_tests.remote_helpers import SECRET, chat, echo, gemini_client, make_client, openai_client

SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}


# --- wire format -----------------------------------------------------------------------------------------


def test_gemini_vertex_request_path_body_and_adc_token(adc):
    with FakeLLMServer("gemini", answer=lambda r: "positive") as srv:
        adc(srv)
        client = gemini_client(srv)
        [res] = client.generate([chat("great film", temperature=0.0, max_tokens=4, stop=("\n",))])
    assert (res.text, res.error, res.attempts, res.finish_reason) == ("positive", None, 1, "stop")
    assert (res.prompt_tokens, res.completion_tokens) == (srv.prompt_tokens, srv.completion_tokens) == (6, 1)
    [sent] = [r for r in srv.requests if r.path.endswith(":generateContent")]
    assert (
        sent.path
        == "/v1beta1/projects/proj-1/locations/us-central1/publishers/google/models/gemini-2.5-flash:generateContent"
    )
    assert sent.headers["authorization"] == f"Bearer {ACCESS_TOKEN}" and srv.token_requests == 1
    assert sent.body["systemInstruction"]["parts"] == [{"text": "Answer in one word."}]
    assert sent.body["contents"] == [{"role": "user", "parts": [{"text": "great film"}]}]
    assert sent.body["generationConfig"] == {"temperature": 0.0, "maxOutputTokens": 4, "stopSequences": ["\n"]}


@pytest.mark.parametrize("vertexai", [True, False])
def test_gemini_fast_body_is_the_sdks_own(vertexai, adc):
    """GeminiClient builds each body itself (the SDK's per-request pydantic work capped throughput); it must be
    exactly what google-genai's public generate_content would send, for every shape of request the platform
    makes. Checked against the SDK's own converter, so an SDK upgrade that changes either fails here."""
    from google.genai import _common, models, types

    with FakeLLMServer("gemini") as srv:
        adc(srv)
        client = (
            gemini_client(srv)
            if vertexai
            else GeminiClient("gemini-2.5-flash", vertexai=False, api_key=SECRET, base_url=srv.url)
        )
    requests = [
        chat("great film", temperature=0.0, max_tokens=4, stop=("\n",)),
        chat("x", json_schema=SCHEMA, max_tokens=32),
        chat("x", choices=("positive", "negative"), max_tokens=4),
        LLMRequest(messages=(("system", "a"), ("system", "b"), ("user", "q"), ("assistant", "r"), ("user", "q2"))),
        LLMRequest(messages=(("user", "no system"),), temperature=0.7),
        LLMRequest(prompt="Review: fine\nSentiment:", max_tokens=3, stop=("\n",)),
    ]
    for request in requests:
        if request.prompt is not None:
            contents, system = [types.Content(role="user", parts=[types.Part(text=request.prompt)])], None
        else:
            system = "\n\n".join(c for r, c in request.messages if r == "system") or None
            contents = [
                types.Content(role="model" if r == "assistant" else "user", parts=[types.Part(text=c)])
                for r, c in request.messages
                if r != "system"
            ]
        params = types._GenerateContentParameters(
            model="gemini-2.5-flash",
            contents=contents,
            config=client._config(request).model_copy(update={"system_instruction": system}),
        )
        convert = (
            models._GenerateContentParameters_to_vertex if vertexai else models._GenerateContentParameters_to_mldev
        )
        sdk = _common.encode_unserializable_types(
            _common.convert_to_dict(convert(client._client._api_client, params, None, params))
        )
        path = "{model}:generateContent".format_map(sdk.pop("_url"))
        sdk.pop("config", None)
        assert client._body(request) == (path, sdk), request


def test_gemini_reads_blocked_withheld_and_malformed_replies():
    """What the fake server never sends: a blocked prompt, an answer withheld for safety, a reply without candidates."""
    ask, pick = chat("x"), chat("x", choices=("a", "b"))
    blocked = GeminiClient._read(
        {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 5}}, ask
    )
    assert (blocked.error, blocked.prompt_tokens) == ("blocked: the prompt was blocked (SAFETY)", 5)
    withheld = GeminiClient._read({"candidates": [{"finishReason": "SAFETY", "content": {"parts": []}}]}, ask)
    assert withheld.error == "blocked: the answer was withheld (SAFETY)" and withheld.finish_reason == "SAFETY"
    off = GeminiClient._read({"candidates": [{"finishReason": "STOP", "content": {"parts": [{"text": " c "}]}}]}, pick)
    assert off.error.startswith("not_a_choice: the model answered 'c'")
    two = GeminiClient._read({"candidates": [{"content": {"parts": [{"text": "a"}, {"text": "b"}]}}]}, ask)
    assert (two.text, two.finish_reason, two.error) == ("ab", None, None)
    for bad in ({}, {"candidates": []}, [], {"candidates": ["x"]}):
        with pytest.raises(MalformedReply):
            GeminiClient._read(bad, ask)


def test_gemini_json_mode_sends_mime_type_and_schema(adc):
    with FakeLLMServer("gemini", answer=lambda r: '{"label": "positive"}' if r.json_mode else "no") as srv:
        adc(srv)
        [res] = gemini_client(srv).generate([chat("x", json_schema=SCHEMA, max_tokens=32)])
    assert res.text == '{"label": "positive"}'
    config = srv.requests[-1].body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseSchema"]["required"] == ["label"]


def test_gemini_api_key_mode_uses_the_developer_api_path_and_key_header():
    with FakeLLMServer("gemini") as srv:
        client = GeminiClient(
            "gemini-2.5-flash", vertexai=False, api_key=SECRET, base_url=srv.url, retry=RetryPolicy(max_attempts=1)
        )
        [res] = client.generate([chat("hi")])
    assert res.error is None
    sent = srv.requests[-1]
    assert sent.path.startswith("/v1beta/models/gemini-2.5-flash:generateContent")
    assert sent.headers["x-goog-api-key"] == SECRET
    assert SECRET not in str(client.identity())


def test_openai_request_path_body_key_and_json_modes():
    with FakeLLMServer("openai", answer=lambda r: "positive") as srv:
        [res] = openai_client(srv).generate([chat("great film", max_tokens=4, stop=("\n",))])
        openai_client(srv).generate([chat("a", json_schema=SCHEMA)])
        openai_client(srv, json_mode="object").generate([chat("b", json_schema=SCHEMA)])
        openai_client(srv, json_mode="off").generate([chat("c", json_schema=SCHEMA)])
    assert (res.text, res.attempts, res.prompt_tokens, res.completion_tokens) == ("positive", 1, 6, 1)
    plain, schema, obj, off = (r for r in srv.requests if r.path == "/v1/chat/completions")
    assert plain.headers["authorization"] == f"Bearer {SECRET}"
    assert plain.body == {
        "model": "gpt-4o-mini",
        "max_tokens": 4,
        "temperature": 0.0,
        "stop": ["\n"],
        "messages": [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "great film"}],
    }
    assert schema.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": SCHEMA},
    }
    assert obj.body["response_format"] == {"type": "json_object"}
    assert "response_format" not in off.body


# --- retries ---------------------------------------------------------------------------------------------

RETRYABLE = ["429", "408", "500", "502", "503", "timeout", "drop", "malformed", "malformed_shape"]


@pytest.mark.parametrize("protocol", ["gemini", "openai"])
@pytest.mark.parametrize("kind", RETRYABLE)
def test_transient_failures_are_retried_until_answered(protocol, kind, adc):
    plan = FaultPlan(script=[kind, kind], timeout_sleep_s=1.0)
    with FakeLLMServer(protocol, answer=echo, faults=plan) as srv:
        adc(srv)
        client = make_client(protocol, srv, timeout_s=0.3)
        [res] = client.generate([chat("row 1")])
    assert (res.error, res.text, res.attempts) == (None, "answer to row 1", 3)
    assert srv.request_count == 3 and srv.success_count == 1
    assert client.usage.requests == 3 and client.usage.llm_calls == 1


@pytest.mark.parametrize("protocol", ["gemini", "openai"])
def test_a_dropped_connection_is_retried_by_the_platform_not_silently_by_the_sdk(protocol, adc):
    """A long timeout, so nothing but the transport can resend: google-genai's aiohttp path, left to
    itself, sleeps 1-10 s after a dropped connection and re-sends the POST, an attempt the platform
    never counts (and the server bills)."""
    with FakeLLMServer(protocol, answer=echo, faults=FaultPlan(script=["drop"])) as srv:
        adc(srv)
        client = make_client(protocol, srv, timeout_s=30, retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.01))
        started = time.perf_counter()
        [res] = client.generate([chat("row 1")])
    assert (res.error, res.text, res.attempts) == (None, "answer to row 1", 2)
    assert srv.request_count == client.usage.requests == 2
    assert time.perf_counter() - started < 1.0, "the retry waited as the SDK's implicit one does"


@pytest.mark.parametrize("protocol", ["gemini", "openai"])
def test_retry_after_is_honoured(protocol, adc):
    plan = FaultPlan(script=["429"], retry_after_s=1)
    with FakeLLMServer(protocol, faults=plan) as srv:
        adc(srv)
        started = time.perf_counter()
        [res] = make_client(protocol, srv).generate([chat("x")])
        elapsed = time.perf_counter() - started
    assert res.error is None and res.attempts == 2
    assert elapsed >= 1.0, f"retried after {elapsed:.2f}s although the server asked for 1s"


@pytest.mark.parametrize("protocol", ["gemini", "openai"])
def test_rows_that_keep_failing_keep_their_error_and_attempts_and_nothing_else_is_lost(protocol, adc):
    plan = FaultPlan(rate=0.3, kinds=("500", "malformed"), fail_attempts=99)
    with FakeLLMServer(protocol, answer=echo, faults=plan) as srv:
        adc(srv)
        client = make_client(protocol, srv, retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.01))
        requests = [chat(f"row {i}") for i in range(40)]
        out = client.generate(requests)
    failed = [r for r in out if r.error]
    assert 0 < len(failed) < 40
    for req, res in zip(requests, out):
        if res.error:
            assert res.attempts == 3 and res.error.split(":")[0] in ("http_500", "malformed")
        else:
            assert res.text == f"answer to {req.messages[1][1]}"
    assert srv.request_count == 3 * len(failed) + (40 - len(failed))
    assert client.usage.errors == len(failed) and client.usage.requests == srv.request_count


@pytest.mark.parametrize("protocol", ["gemini", "openai"])
def test_client_errors_are_not_retried(protocol, adc):
    plan = FaultPlan(script=["400"])
    with FakeLLMServer(protocol, faults=plan) as srv:
        adc(srv)
        first, second = make_client(protocol, srv).generate([chat("a"), chat("b")])
    assert srv.request_count == 2
    errors = [r for r in (first, second) if r.error]
    assert len(errors) == 1 and errors[0].error.startswith("http_400") and errors[0].attempts == 1


@pytest.mark.parametrize("protocol", ["gemini", "openai"])
def test_refused_credentials_stop_the_batch_with_a_clear_error_and_no_secret(protocol, adc):
    with FakeLLMServer(
        protocol, faults=FaultPlan(rate=1.0, kinds=("401",), fail_attempts=99), echo_auth_in_errors=True
    ) as srv:
        adc(srv)
        client = (
            GeminiClient("gemini-2.5-flash", vertexai=False, api_key=SECRET, base_url=srv.url)
            if protocol == "gemini"
            else openai_client(srv)
        )
        with pytest.raises(LLMConfigurationError) as err:
            client.generate([chat(f"row {i}") for i in range(50)])
    text = str(err.value)
    assert "refused the credentials" in text and "API key" in text
    assert SECRET not in text and "[REDACTED]" in text
    assert srv.request_count < 50  # the batch stopped instead of sending every row to a dead end


# --- concurrency, limits, cache ----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["gemini", "openai"])
def test_many_rows_with_20_percent_faults_are_all_answered_once_in_order(protocol, adc):
    plan = FaultPlan(
        rate=0.2, kinds=("429", "500", "timeout", "malformed", "drop"), fail_attempts=2, timeout_sleep_s=0.6
    )
    with FakeLLMServer(protocol, answer=echo, faults=plan, latency_s=0.01) as srv:
        adc(srv)
        client = make_client(
            protocol,
            srv,
            max_in_flight=8,
            timeout_s=0.3,
            retry=RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05),
        )
        requests = [chat(f"row {i}") for i in range(150)]
        out = client.generate(requests)
    assert [r.text for r in out] == [f"answer to row {i}" for i in range(150)]
    assert all(r.error is None for r in out)
    assert set(srv.prompts_answered.values()) == {1}, "a prompt was answered twice"
    assert sum(srv.fault_counts.values()) > 0 and srv.max_concurrent > 1
    assert client.usage.requests == srv.request_count
    assert client.usage.prompt_tokens == srv.prompt_tokens
    assert client.usage.completion_tokens == srv.completion_tokens


def test_requests_in_flight_never_exceed_the_limit():
    with FakeLLMServer("openai", latency_s=0.05) as srv:
        openai_client(srv, max_in_flight=8).generate([chat(f"row {i}") for i in range(40)])
    assert srv.max_concurrent == 8


def test_requests_per_minute_limit_spaces_requests_out():
    with FakeLLMServer("openai") as srv:
        client = openai_client(srv, rpm=1200, max_in_flight=32)  # 20 per second, at most 20 at once
        started = time.perf_counter()
        client.generate([chat(f"row {i}") for i in range(40)])
        elapsed = time.perf_counter() - started
    assert elapsed >= 0.9, f"40 requests at 1200 rpm took {elapsed:.2f}s"


def test_clients_of_one_model_share_one_limiter():
    with FakeLLMServer("openai") as srv:
        a, b = openai_client(srv, rpm=100), openai_client(srv, rpm=100)
        other_model = OpenAIClient("gpt-4.1", base_url=srv.openai_base_url, api_key="x", rpm=100)
    assert a.limiter is b.limiter and a.limiter is not other_model.limiter


@pytest.mark.parametrize("protocol", ["gemini", "openai"])
def test_rerun_is_served_from_cache_and_resends_only_failed_rows(protocol, adc, tmp_path):
    always_fails = {"row 3", "row 7"}
    faults = lambda req: "500" if req.user in always_fails and not failing_off else None  # noqa: E731
    failing_off = False
    with FakeLLMServer(protocol, answer=echo, faults=faults) as srv:
        adc(srv)
        cache = ResponseCache(tmp_path / "cache.sqlite")
        requests = [chat(f"row {i}") for i in range(10)]
        first = CachedClient(make_client(protocol, srv, retry=RetryPolicy(2, 0.01)), cache).generate(requests)
        assert [i for i, r in enumerate(first) if r.error] == [3, 7]
        srv.reset()
        failing_off = True
        again = CachedClient(make_client(protocol, srv), cache)
        second = again.generate(requests)
    users = sorted(srv.prompts_answered)
    assert [key[2][-1][1] for key in users] == ["row 3", "row 7"], "only the failed rows go out again"
    assert [r.text for r in second] == [f"answer to row {i}" for i in range(10)]
    assert again.usage.cache_hits == 8 and again.usage.llm_calls == 2


def test_a_server_that_is_down_is_a_connection_failure_not_a_timeout():
    """The openai SDK's aiohttp transport reports a refused connect as ConnectTimeout; a user must read
    that the server is down, not that it was slow."""
    with FakeLLMServer("openai", answer=lambda r: "ok") as srv:
        client = make_client("openai", srv, retry=RetryPolicy(max_attempts=1))
    # the server has stopped: its port refuses connections now
    [res] = client.generate([chat("x")])
    assert res.error is not None and res.error.startswith("connection:") and "timeout" not in res.error, res.error
