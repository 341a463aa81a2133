"""Local fake LLM servers that speak the real wire protocols.

Tests point the *real* google-genai (Vertex AI and Gemini Developer API) and openai SDK clients at
these servers, so request building, retries, timeouts, response parsing and usage accounting in the
SDKs and in our own client code are exercised end to end, without network or credentials. Faults
(429/5xx, timeouts, dropped connections, malformed bodies) are injected deterministically, and exact
lock-protected counters let tests assert how many requests, retries and tokens a run really cost.

Stdlib only. Run as ``python -m promptopt_dagster_tests.fake_llm_servers --protocol openai`` to serve
from a separate process (prints ``READY http://127.0.0.1:PORT``), e.g. for benchmarks.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import itertools
import json
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

Protocol = Literal["gemini", "openai"]
FAULT_KINDS = ("429", "408", "500", "502", "503", "400", "401", "timeout", "drop", "malformed", "malformed_shape")
_STATUS_FAULTS = {"429": 429, "408": 408, "500": 500, "502": 502, "503": 503, "400": 400, "401": 401}
_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
}
_OPENAI_ERROR = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    408: ("timeout", "timeout"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", "server_error"),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
}
_VERTEX_PATH = re.compile(
    r"^/(v1|v1beta1)/projects/[^/]+/locations/[^/]+/publishers/google/models/([^/:]+):generateContent$"
)
_GEMINI_API_PATH = re.compile(r"^/(v1beta|v1)/models/([^/:]+):generateContent$")
# Vertex AI Prompt Optimizer (zero-shot and few-shot): one prompt in, a streamed JSON array of chunks out.
_OPTIMIZE_PROMPT_PATH = re.compile(r"^/(v1|v1beta1)/projects/[^/]+/locations/[^/]+/tuningJobs:optimizePrompt$")
PROMPT_OPTIMIZER_MODEL = "vertex-prompt-optimizer"  # the `model` a FakeRequest to that route carries
ACCESS_TOKEN = "fake-access-token"  # what POST /token hands out to Application Default Credentials


@dataclass(frozen=True)
class FakeRequest:
    """One parsed generate request, as handed to ``answer`` and fault callables."""

    protocol: str
    path: str
    model: str
    system: str
    user: str
    messages: list  # [(role, text), ...] in order, system excluded
    json_mode: bool
    response_schema: dict | None
    max_tokens: int | None
    temperature: float | None
    body: dict
    headers: dict
    attempt: int  # 1-based count of times this exact prompt (model+system+messages) arrived
    choices: tuple = ()  # the enum the response schema restricts the answer to; () when unconstrained

    @property
    def prompt_key(self) -> tuple:
        """Identity of the prompt: the key of ``FakeLLMServer.prompts_answered``."""
        return (self.model, self.system, tuple(self.messages))


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict
    body: dict | None
    fault: str | None
    status: int | None  # None when the connection was closed without a response
    at: float = field(default_factory=time.time)  # when it was answered (or refused): a duplicate's timing


@dataclass(frozen=True)
class FaultPlan:
    """Deterministic fault injection: a hashed share ``rate`` of prompts fails on its first
    ``fail_attempts`` attempts and then succeeds; or, with ``script``, the n-th request received
    gets ``script[n]`` (None/"ok" = success) and everything after the script succeeds."""

    rate: float = 0.2
    kinds: Sequence[str] = ("429", "500", "timeout", "malformed")
    fail_attempts: int = 1
    seed: int = 0
    retry_after_s: float = 0
    timeout_sleep_s: float = 3.0
    script: Sequence[str | None] | None = None

    def __post_init__(self) -> None:
        bad = [k for k in [*self.kinds, *(self.script or [])] if k not in (*FAULT_KINDS, None, "ok")]
        if bad:
            raise ValueError(f"unknown fault kinds {bad}; known: {FAULT_KINDS}")

    def decide(self, req: FakeRequest, arrival_index: int) -> str | None:
        if self.script is not None:
            return self.script[arrival_index] if arrival_index < len(self.script) else None
        key = json.dumps([self.seed, req.model, req.system, req.messages]).encode()
        h = int.from_bytes(hashlib.sha256(key).digest()[:8], "big")
        if h / 2**64 >= self.rate or req.attempt > self.fail_attempts or not self.kinds:
            return None
        return self.kinds[(h + req.attempt - 1) % len(self.kinds)]


Faults = None | FaultPlan | Callable[[FakeRequest], str | None]


def _text_of(content: Any) -> str:
    """OpenAI message content: a string or a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes; avoid Nagle/delayed-ACK stalls

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence per-request logging
        pass

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, add=False)

    def do_GET(self) -> None:
        self.server.fake._handle(self, "GET")

    def do_POST(self) -> None:
        self.server.fake._handle(self, "POST")

    def reply(self, status: int, payload: Any, headers: dict | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _enum_of(schema: Any) -> tuple[str | None, tuple]:
    """(field, values) an answer is restricted to: a top-level enum (Gemini's text/x.enum, field None)
    or the first enum property of an object schema (a JSON label)."""
    if not isinstance(schema, dict):
        return None, ()
    if schema.get("enum"):
        return None, tuple(str(v) for v in schema["enum"])
    for name, prop in (schema.get("properties") or {}).items():
        if isinstance(prop, dict) and prop.get("enum"):
            return name, tuple(str(v) for v in prop["enum"])
    return None, ()


def _mentioned(text: str, choices: tuple) -> str | None:
    """The choice ``text`` equals, else the one it mentions last (case-insensitively), else None."""
    if text.strip() in choices:
        return text.strip()
    low = text.lower()
    ends = {c: low.rfind(c.lower()) + len(c) for c in choices if c.lower() in low}
    return max(ends, key=lambda c: (ends[c], len(c))) if ends else None


def _constrained_reply(req: FakeRequest, text: str) -> str:
    """What a server that enforces the enum sends: the value ``answer()`` named (else the one the last
    user turn names, else the first), as a bare enum value, a JSON string or a JSON object field."""
    value = _mentioned(text, req.choices) or _mentioned(req.user, req.choices) or req.choices[0]
    field = _enum_of(req.response_schema)[0]
    if field is not None:
        return json.dumps({field: value})
    return json.dumps(value) if req.json_mode else value


class _QuietServer(ThreadingHTTPServer):
    request_queue_size = 256  # socketserver's default backlog of 5 resets connections under a burst

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (its timeout) closes the socket under us: expected, not worth a traceback."""
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class FakeLLMServer:
    """A threaded HTTP server on 127.0.0.1 speaking Gemini generateContent or OpenAI chat completions."""

    def __init__(
        self,
        protocol: Protocol,
        *,
        answer: Callable[[FakeRequest], str] | None = None,
        latency_s: float = 0.0,
        faults: Faults = None,
        echo_auth_in_errors: bool = False,
        port: int = 0,
        honour_choices: bool = True,
    ) -> None:
        if protocol not in ("gemini", "openai"):
            raise ValueError(f"unknown protocol {protocol!r}")
        self.protocol, self.answer, self.latency_s = protocol, answer or (lambda req: "ok"), latency_s
        # False plays a server that ignores an enum in the response schema, so tests see the client catch it.
        self.honour_choices = honour_choices
        self.faults, self.echo_auth_in_errors, self._port = faults, echo_auth_in_errors, port
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._ids = itertools.count(1)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> FakeLLMServer:
        httpd = _QuietServer(("127.0.0.1", self._port), _Handler)
        httpd.daemon_threads = True
        httpd.fake = self  # type: ignore[attr-defined]
        self._httpd, self._stopping = httpd, threading.Event()
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, name=f"fake-{self.protocol}-llm", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop promptly: wakes handlers sleeping in latency/timeout faults and closes open connections."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=2)

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    def reset(self) -> None:
        """Zero every counter, the per-prompt attempt numbers and the script position."""
        with self._lock:
            self.requests: list[RecordedRequest] = []
            self.request_count = self.success_count = self.token_requests = 0
            self.prompt_tokens = self.completion_tokens = 0
            self.fault_counts: collections.Counter[str] = collections.Counter()
            self.prompts_answered: collections.Counter[tuple] = collections.Counter()
            self.max_concurrent = self._in_flight = self._arrivals = 0
            self._attempts: collections.Counter[tuple] = collections.Counter()
            self._models_seen: dict[str, None] = {}

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    # ---- request handling ------------------------------------------------------------------------
    def _handle(self, h: _Handler, method: str) -> None:
        headers = {k.lower(): v for k, v in h.headers.items()}
        raw = h.rfile.read(int(headers.get("content-length") or 0))
        path = h.path.split("?", 1)[0]
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if method == "POST" and path == "/token":  # OAuth2 token endpoint for Application Default Credentials
            with self._lock:
                self.token_requests += 1
            self._record(method, h.path, headers, None, None, 200)
            return h.reply(200, {"access_token": ACCESS_TOKEN, "expires_in": 3600, "token_type": "Bearer"})
        model = self._route(method, path, body)
        if model is None:
            if self.protocol == "openai" and method == "GET" and path == "/v1/models":
                models = list(self._models_seen) or ["fake-model"]
                self._record(method, h.path, headers, body, None, 200)
                return h.reply(
                    200,
                    {
                        "object": "list",
                        "data": [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in models],
                    },
                )
            return self._error(h, method, headers, body, 404, None, f"unknown route {method} {path}")
        if not isinstance(body, dict):
            return self._error(h, method, headers, body, 400, None, "request body is not a JSON object")
        with self._lock:
            self.request_count += 1
            self._in_flight += 1
            self.max_concurrent = max(self.max_concurrent, self._in_flight)
        try:
            self._generate(h, headers, path, model, body)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _route(self, method: str, path: str, body: Any) -> str | None:
        """The model name if this is a generate route of our protocol, else None."""
        if method != "POST":
            return None
        if self.protocol == "gemini":
            if _OPTIMIZE_PROMPT_PATH.match(path):
                return PROMPT_OPTIMIZER_MODEL
            m = _VERTEX_PATH.match(path) or _GEMINI_API_PATH.match(path)
            return m.group(2) if m else None
        if path == "/v1/chat/completions":
            return str(body.get("model") or "fake-model") if isinstance(body, dict) else ""
        return None

    def _parse(self, headers: dict, path: str, model: str, body: dict) -> FakeRequest:
        system_parts, messages = [], []
        if self.protocol == "gemini":
            si = body.get("systemInstruction") or {}
            system_parts = [p.get("text", "") for p in si.get("parts", [])] if isinstance(si, dict) else []
            # optimizePrompt sends one `content`; generateContent a list of `contents`
            for c in body.get("contents") or ([body["content"]] if isinstance(body.get("content"), dict) else []):
                text = "".join(p.get("text", "") for p in c.get("parts", []) if isinstance(p, dict))
                messages.append((c.get("role") or "user", text))
            gc = body.get("generationConfig") or {}
            json_mode = gc.get("responseMimeType") == "application/json"
            schema = gc.get("responseSchema") or gc.get("responseJsonSchema")
            constrained = gc.get("responseMimeType") in ("application/json", "text/x.enum")
            max_tokens, temperature = gc.get("maxOutputTokens"), gc.get("temperature")
        else:
            for msg in body.get("messages") or []:
                role, text = msg.get("role", "user"), _text_of(msg.get("content"))
                (system_parts.append(text) if role in ("system", "developer") else messages.append((role, text)))
            rf = body.get("response_format") or {}
            json_mode = rf.get("type") in ("json_object", "json_schema")
            schema = (rf.get("json_schema") or {}).get("schema")
            constrained = rf.get("type") == "json_schema"
            max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
            temperature = body.get("temperature")
        system = "\n".join(system_parts)
        user = next((t for r, t in reversed(messages) if r == "user"), "")
        key = (model, system, tuple(messages))
        with self._lock:
            self._attempts[key] += 1
            attempt = self._attempts[key]
        return FakeRequest(
            self.protocol,
            path,
            model,
            system,
            user,
            messages,
            json_mode,
            schema,
            int(max_tokens) if max_tokens is not None else None,
            float(temperature) if temperature is not None else None,
            body,
            headers,
            attempt,
            _enum_of(schema)[1] if constrained else (),
        )

    def _generate(self, h: _Handler, headers: dict, path: str, model: str, body: dict) -> None:
        req = self._parse(headers, path, model, body)
        with self._lock:
            arrival = self._arrivals
            self._arrivals += 1
            self._models_seen[model] = None
        plan = self.faults if isinstance(self.faults, FaultPlan) else FaultPlan()
        if isinstance(self.faults, FaultPlan):
            fault = self.faults.decide(req, arrival)
        else:
            fault = self.faults(req) if callable(self.faults) else None
        fault = None if fault in (None, "ok") else str(fault)
        if fault is not None and fault not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {fault!r}")
        if fault in ("timeout", "drop"):
            self._record("POST", h.path, headers, body, fault, None)
            if fault == "timeout":
                self._stopping.wait(plan.timeout_sleep_s)
            h.close_connection = True  # no response at all; the socket is closed after we return
            return
        if self.latency_s:
            self._stopping.wait(self.latency_s)
        if fault in _STATUS_FAULTS:
            extra = {"Retry-After": f"{plan.retry_after_s:g}"} if fault == "429" else None
            return self._error(h, "POST", headers, body, _STATUS_FAULTS[fault], fault, f"injected fault {fault}", extra)
        if fault is not None:  # malformed / malformed_shape: 200 with an unusable body
            self._record("POST", h.path, headers, body, fault, 200)
            bad = {"gemini": b'{"candidates": [', "openai": b'{"choices": ['}[self.protocol]
            return h.reply(200, bad if fault == "malformed" else {"unexpected": True})
        try:
            text = str(self.answer(req))
        except Exception as exc:  # a bug in the test's answer(): surface it as a 500
            return self._error(h, "POST", headers, body, 500, "answer_error", f"answer() raised {exc!r}")
        if req.choices and self.honour_choices:
            text = _constrained_reply(req, text)
        tokens, truncated = text.split(), False
        if req.max_tokens is not None and len(tokens) > req.max_tokens:
            text, truncated = " ".join(tokens[: req.max_tokens]), True
        p = sum(len(t.split()) for t in [req.system, *(t for _, t in req.messages)])
        c = max(len(text.split()), 1) if text else 0
        with self._lock:
            n = next(self._ids)
            self.success_count += 1
            self.prompt_tokens += p
            self.completion_tokens += c
            self.prompts_answered[req.prompt_key] += 1
            self.requests.append(RecordedRequest("POST", h.path, headers, body, None, 200))
        if model == PROMPT_OPTIMIZER_MODEL:
            # The service streams its answer as a JSON array of partial contents; the SDK joins their texts.
            step = max(1, len(text) // 3)
            payload = [
                {"content": {"role": "model", "parts": [{"text": text[i : i + step]}]}}
                for i in range(0, len(text), step)
            ] or [{"content": {"role": "model", "parts": [{"text": ""}]}}]
        elif self.protocol == "gemini":
            payload = {
                "candidates": [
                    {
                        "content": {"role": "model", "parts": [{"text": text}]},
                        "finishReason": "MAX_TOKENS" if truncated else "STOP",
                        "index": 0,
                    }
                ],
                "usageMetadata": {"promptTokenCount": p, "candidatesTokenCount": c, "totalTokenCount": p + c},
                "modelVersion": model,
                "responseId": f"fake-{n}",
            }
        else:
            payload = {
                "id": f"chatcmpl-{n}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "length" if truncated else "stop",
                        "logprobs": None,
                    }
                ],
                "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
            }
        h.reply(200, payload)

    def _error(
        self,
        h: _Handler,
        method: str,
        headers: dict,
        body: Any,
        status: int,
        fault: str | None,
        message: str,
        extra: dict | None = None,
    ) -> None:
        self._record(method, h.path, headers, body, fault, status)
        if self.echo_auth_in_errors:
            message += (
                f" (authorization={headers.get('authorization', '')}"
                f" x-goog-api-key={headers.get('x-goog-api-key', '')})"
            )
        if self.protocol == "gemini":
            err = {"code": status, "message": message, "status": _GEMINI_STATUS.get(status, "UNKNOWN")}
        else:
            etype, code = _OPENAI_ERROR.get(status, ("server_error", str(status)))
            err = {"message": message, "type": etype, "param": None, "code": code}
        h.reply(status, {"error": err}, extra)

    def _record(self, method: str, path: str, headers: dict, body: Any, fault: str | None, status: int | None) -> None:
        with self._lock:
            if fault is not None:
                self.fault_counts[fault] += 1
            self.requests.append(
                RecordedRequest(method, path, headers, body if isinstance(body, dict) else None, fault, status)
            )


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Serve a fake Gemini/OpenAI endpoint until killed.")
    ap.add_argument("--protocol", choices=("gemini", "openai"), required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency-s", type=float, default=0.0)
    ap.add_argument("--answer", default="ok", help="constant answer text")
    ap.add_argument("--fault-rate", type=float, default=0.0)
    ap.add_argument("--fault-kinds", default="429,500", help="comma-separated fault kinds")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    faults = (
        FaultPlan(rate=args.fault_rate, kinds=tuple(args.fault_kinds.split(",")), seed=args.seed)
        if args.fault_rate > 0
        else None
    )
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    with FakeLLMServer(
        args.protocol, answer=lambda req: args.answer, latency_s=args.latency_s, faults=faults, port=args.port
    ) as srv:
        print(f"READY {srv.url}", flush=True)
        while not done.wait(0.2):
            pass


if __name__ == "__main__":
    main()
