"""Tests of the fake LLM servers themselves, over raw HTTP (no SDKs), so SDK tests can trust them."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from promptopt_dagster_tests.fake_llm_servers import FakeLLMServer, FakeRequest, FaultPlan

VERTEX = "/v1beta1/projects/p/locations/us-central1/publishers/google/models/gemini-x:generateContent"
GEMINI_API = "/v1beta/models/gemini-y:generateContent"
CHAT = "/v1/chat/completions"


def post(srv, path, body, headers=None, timeout=5.0, conn=None):
    """POST JSON; returns (status, headers dict lower-cased, raw body bytes)."""
    c = conn or http.client.HTTPConnection("127.0.0.1", int(srv.url.rsplit(":", 1)[1]), timeout=timeout)
    data = json.dumps(body).encode() if not isinstance(body, bytes) else body
    c.request("POST", path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    r = c.getresponse()
    raw = r.read()
    if conn is None:
        c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, raw


def gemini_body(user="hello there", system=None, **gen):
    body = {"contents": [{"role": "user", "parts": [{"text": user}]}]}
    if system:
        body["systemInstruction"] = {"role": "user", "parts": [{"text": system}]}
    if gen:
        body["generationConfig"] = gen
    return body


def chat_body(user="hello there", system=None, model="gpt-fake", **kw):
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return {"model": model, "messages": msgs, **kw}


# ---- happy paths ---------------------------------------------------------------------------------
@pytest.mark.parametrize("path,model", [(VERTEX, "gemini-x"), (GEMINI_API, "gemini-y")])
def test_gemini_happy_path(path, model):
    seen: list[FakeRequest] = []

    def answer(req):
        seen.append(req)
        return "alpha beta gamma"

    with FakeLLMServer("gemini", answer=answer) as srv:
        body = gemini_body(
            "one two three",
            system="be brief",
            temperature=0.3,
            responseMimeType="application/json",
            responseSchema={"type": "OBJECT"},
        )
        status, headers, raw = post(srv, path + "?alt=json", body, {"x-goog-api-key": "K"})
        assert status == 200 and headers["content-type"] == "application/json"
        out = json.loads(raw)
        cand = out["candidates"][0]
        assert cand["content"] == {"role": "model", "parts": [{"text": "alpha beta gamma"}]}
        assert cand["finishReason"] == "STOP" and cand["index"] == 0
        assert out["usageMetadata"] == {"promptTokenCount": 5, "candidatesTokenCount": 3, "totalTokenCount": 8}
        assert out["modelVersion"] == model and out["responseId"]
        req = seen[0]
        assert (req.protocol, req.model, req.system, req.user) == ("gemini", model, "be brief", "one two three")
        assert req.messages == [("user", "one two three")] and req.attempt == 1
        assert req.json_mode and req.response_schema == {"type": "OBJECT"} and req.temperature == 0.3
        assert req.headers["x-goog-api-key"] == "K" and req.path == path
        rec = srv.requests[0]
        assert (rec.method, rec.path, rec.body, rec.fault, rec.status) == ("POST", path + "?alt=json", body, None, 200)
        assert (srv.request_count, srv.success_count, srv.prompt_tokens, srv.completion_tokens) == (1, 1, 5, 3)


def test_gemini_max_tokens_truncates():
    with FakeLLMServer("gemini", answer=lambda r: "a b c d e f") as srv:
        out = json.loads(post(srv, VERTEX, gemini_body(maxOutputTokens=2))[2])
        assert out["candidates"][0]["finishReason"] == "MAX_TOKENS"
        assert out["candidates"][0]["content"]["parts"][0]["text"] == "a b"
        assert out["usageMetadata"]["candidatesTokenCount"] == 2 == srv.completion_tokens


def test_gemini_multi_turn_attempts_and_last_user():
    seen = []
    with FakeLLMServer("gemini", answer=lambda r: seen.append(r) or "x") as srv:
        body = {
            "contents": [
                {"role": "user", "parts": [{"text": "q1"}]},
                {"role": "model", "parts": [{"text": "a1"}]},
                {"role": "user", "parts": [{"text": "q2"}, {"text": " more"}]},
            ]
        }
        post(srv, GEMINI_API, body)
        post(srv, GEMINI_API, body)
        assert seen[0].messages == [("user", "q1"), ("model", "a1"), ("user", "q2 more")]
        assert seen[0].user == "q2 more" and [r.attempt for r in seen] == [1, 2]
        assert srv.prompts_answered[seen[0].prompt_key] == 2


def test_openai_happy_path_and_models():
    seen = []
    with FakeLLMServer("openai", answer=lambda r: seen.append(r) or "fine thanks") as srv:
        assert srv.openai_base_url == srv.url + "/v1"
        body = chat_body(
            "how are you",
            system="sys prompt",
            temperature=0,
            max_tokens=50,
            response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}},
        )
        status, _, raw = post(srv, CHAT, body, {"Authorization": "Bearer sk-x"})
        out = json.loads(raw)
        assert status == 200 and out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
        assert out["model"] == "gpt-fake" and isinstance(out["created"], int)
        assert out["choices"] == [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "fine thanks"},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ]
        assert out["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        req = seen[0]
        assert (req.system, req.user, req.messages, req.max_tokens) == (
            "sys prompt",
            "how are you",
            [("user", "how are you")],
            50,
        )
        assert req.json_mode and req.response_schema == {"type": "object"} and req.temperature == 0.0
        assert req.headers["authorization"] == "Bearer sk-x"
        with urllib.request.urlopen(srv.url + "/v1/models", timeout=5) as r:
            assert [m["id"] for m in json.loads(r.read())["data"]] == ["gpt-fake"]
        assert srv.request_count == 1  # GET /v1/models is not a generate request


def test_openai_length_truncation_and_content_parts():
    with FakeLLMServer("openai", answer=lambda r: "w " * 10) as srv:
        body = {
            "model": "m",
            "max_completion_tokens": 3,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a b"}]}],
        }
        out = json.loads(post(srv, CHAT, body)[2])
        assert out["choices"][0]["finish_reason"] == "length" and out["choices"][0]["message"]["content"] == "w w w"
        assert out["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


def test_keep_alive_reuses_connection():
    with FakeLLMServer("openai") as srv:
        conn = http.client.HTTPConnection("127.0.0.1", int(srv.url.rsplit(":", 1)[1]), timeout=5)
        for i in range(5):
            assert post(srv, CHAT, chat_body(f"q{i}"), conn=conn)[0] == 200
        conn.close()
        assert srv.success_count == 5


def test_default_models_list_and_unknown_paths():
    with FakeLLMServer("openai") as srv:
        with urllib.request.urlopen(srv.url + "/v1/models", timeout=5) as r:
            assert json.loads(r.read())["data"][0]["id"] == "fake-model"
        status, _, raw = post(srv, "/v1/nope", {})
        err = json.loads(raw)["error"]
        assert status == 404 and set(err) == {"message", "type", "param", "code"}
    with FakeLLMServer("gemini") as srv:
        with pytest.raises(urllib.error.HTTPError) as ei:
            urllib.request.urlopen(srv.url + "/v1/models/x:countTokens", timeout=5)
        assert ei.value.code == 404 and json.loads(ei.value.read())["error"]["status"] == "NOT_FOUND"
        assert srv.request_count == 0 and srv.requests[0].status == 404


# ---- faults --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind,status,gstatus,ocode",
    [
        ("429", 429, "RESOURCE_EXHAUSTED", "rate_limit_exceeded"),
        ("408", 408, "DEADLINE_EXCEEDED", "timeout"),
        ("500", 500, "INTERNAL", "server_error"),
        ("502", 502, "UNAVAILABLE", "bad_gateway"),
        ("503", 503, "UNAVAILABLE", "service_unavailable"),
        ("400", 400, "INVALID_ARGUMENT", "invalid_request"),
        ("401", 401, "UNAUTHENTICATED", "invalid_api_key"),
    ],
)
def test_status_faults(kind, status, gstatus, ocode):
    with FakeLLMServer("gemini", faults=lambda r: kind) as srv:
        st, headers, raw = post(srv, VERTEX, gemini_body())
        assert st == status and json.loads(raw)["error"]["code"] == status
        assert json.loads(raw)["error"]["status"] == gstatus
        assert (headers.get("retry-after") == "0") if kind == "429" else ("retry-after" not in headers)
        assert srv.fault_counts == {kind: 1} and srv.success_count == 0 and srv.prompt_tokens == 0
        assert srv.requests[0].fault == kind and srv.requests[0].status == status
    with FakeLLMServer("openai", faults=lambda r: kind) as srv:
        st, _, raw = post(srv, CHAT, chat_body())
        err = json.loads(raw)["error"]
        assert st == status and err["code"] == ocode and err["param"] is None and err["type"]


def test_retry_after_value():
    with FakeLLMServer("openai", faults=FaultPlan(script=["429"], retry_after_s=2)) as srv:
        assert post(srv, CHAT, chat_body())[1]["retry-after"] == "2"


@pytest.mark.parametrize("protocol,path,body", [("gemini", VERTEX, gemini_body()), ("openai", CHAT, chat_body())])
def test_malformed_faults(protocol, path, body):
    with FakeLLMServer(protocol, faults=FaultPlan(script=["malformed", "malformed_shape"])) as srv:
        st, headers, raw = post(srv, path, body)
        assert st == 200 and headers["content-type"] == "application/json"
        with pytest.raises(ValueError):
            json.loads(raw)
        st, _, raw = post(srv, path, body)
        assert st == 200 and json.loads(raw) == {"unexpected": True}
        assert post(srv, path, body)[0] == 200
        assert srv.fault_counts == {"malformed": 1, "malformed_shape": 1} and srv.success_count == 1


@pytest.mark.parametrize("kind", ["drop", "timeout"])
def test_drop_and_timeout_close_without_response(kind):
    with FakeLLMServer("openai", faults=FaultPlan(script=[kind], timeout_sleep_s=0.4)) as srv:
        t0 = time.monotonic()
        with pytest.raises(http.client.RemoteDisconnected):
            post(srv, CHAT, chat_body(), timeout=3)
        elapsed = time.monotonic() - t0
        assert (elapsed >= 0.35) if kind == "timeout" else (elapsed < 0.35)
        assert srv.requests[0].status is None and srv.fault_counts == {kind: 1}
        assert post(srv, CHAT, chat_body())[0] == 200


def test_client_timeout_then_stop_is_prompt():
    srv = FakeLLMServer("gemini", faults=lambda r: "timeout").start()
    errors = []

    def call():
        try:
            post(srv, VERTEX, gemini_body(), timeout=30)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    with pytest.raises(TimeoutError):  # client gives up while the server "hangs" (default 3 s sleep)
        post(srv, VERTEX, gemini_body(), timeout=0.2)
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 1.0
    for t in threads:
        t.join(2)
    assert len(errors) == 3 and srv.fault_counts["timeout"] == 4


def test_fault_plan_is_deterministic_and_fails_then_succeeds():
    prompts = [f"question {i}" for i in range(40)]

    def failing_prompts(seed):
        with FakeLLMServer("openai", faults=FaultPlan(rate=0.5, kinds=("500", "429"), seed=seed)) as srv:
            first = {p: post(srv, CHAT, chat_body(p))[0] for p in prompts}
            second = {p: post(srv, CHAT, chat_body(p))[0] for p in prompts}
            assert all(s == 200 for s in second.values())  # fail_attempts=1: retry succeeds
            failed = {p for p, s in first.items() if s != 200}
            assert srv.request_count == 80 and sum(srv.fault_counts.values()) == len(failed)
            assert srv.success_count == 80 - len(failed)
            assert sorted(srv.prompts_answered.values()) == sorted(1 if p in failed else 2 for p in prompts)
            return failed

    a, b, c = failing_prompts(0), failing_prompts(0), failing_prompts(1)
    assert a == b and a != c and 5 < len(a) < 35


def test_fault_plan_fail_attempts_and_rate_bounds():
    with FakeLLMServer("gemini", faults=FaultPlan(rate=1.0, kinds=("503",), fail_attempts=2)) as srv:
        assert [post(srv, GEMINI_API, gemini_body("x"))[0] for _ in range(3)] == [503, 503, 200]
    with FakeLLMServer("gemini", faults=FaultPlan(rate=0.0)) as srv:
        assert post(srv, GEMINI_API, gemini_body("x"))[0] == 200
    plan = FaultPlan(rate=1.0, kinds=("429", "500", "503"), fail_attempts=3)
    req = dict(
        protocol="openai",
        path=CHAT,
        model="m",
        system="",
        user="u",
        messages=[("user", "u")],
        json_mode=False,
        response_schema=None,
        max_tokens=None,
        temperature=None,
        body={},
        headers={},
    )
    kinds = [plan.decide(FakeRequest(**req, attempt=a), 0) for a in (1, 2, 3, 4)]
    assert sorted(kinds[:3]) == ["429", "500", "503"] and kinds[3] is None


def test_script_mode_is_by_arrival_order():
    with FakeLLMServer("openai", faults=FaultPlan(script=["429", None, "ok", "500"], rate=1.0)) as srv:
        statuses = [post(srv, CHAT, chat_body(f"p{i}"))[0] for i in range(6)]
        assert statuses == [429, 200, 200, 500, 200, 200]
        srv.reset()
        assert srv.request_count == 0 and srv.requests == [] and post(srv, CHAT, chat_body("p0"))[0] == 429


def test_echo_auth_in_errors():
    with FakeLLMServer("gemini", faults=lambda r: "401", echo_auth_in_errors=True) as srv:
        raw = post(srv, VERTEX, gemini_body(), {"Authorization": "Bearer ya29.SECRET", "x-goog-api-key": "AIzaKEY"})[2]
        msg = json.loads(raw)["error"]["message"]
        assert "Bearer ya29.SECRET" in msg and "AIzaKEY" in msg
    with FakeLLMServer("openai", faults=lambda r: "500") as srv:
        assert "sk-secret" not in post(srv, CHAT, chat_body(), {"Authorization": "Bearer sk-secret"})[2].decode()


def test_latency_and_concurrent_counters():
    with FakeLLMServer("openai", answer=lambda r: "one two", latency_s=0.2) as srv:
        results = []
        threads = [
            threading.Thread(target=lambda i=i: results.append(post(srv, CHAT, chat_body(f"a b {i}"))[0]))
            for i in range(8)
        ]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        assert results == [200] * 8 and time.monotonic() - t0 < 1.0
        assert srv.max_concurrent >= 4 and srv.request_count == srv.success_count == 8
        assert (srv.prompt_tokens, srv.completion_tokens) == (24, 16)
        assert len(srv.prompts_answered) == 8


def test_answer_exception_becomes_500():
    with FakeLLMServer("openai", answer=lambda r: 1 / 0) as srv:
        st, _, raw = post(srv, CHAT, chat_body())
        assert st == 500 and "ZeroDivisionError" in json.loads(raw)["error"]["message"]


def test_runs_as_separate_process():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "promptopt_dagster_tests.fake_llm_servers",
            "--protocol",
            "openai",
            "--port",
            "0",
            "--latency-s",
            "0.01",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("READY http://127.0.0.1:")
        url = line.split()[1]
        req = urllib.request.Request(
            url + CHAT, data=json.dumps(chat_body()).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            assert json.loads(r.read())["choices"][0]["message"]["content"] == "ok"
    finally:
        proc.terminate()
        assert proc.wait(5) == 0


def test_fault_plan_rejects_unknown_kinds():
    with pytest.raises(ValueError):
        FaultPlan(kinds=("429", "oops"))
    with pytest.raises(ValueError):
        FaultPlan(script=["teapot"])
