"""What every networked backend shares: requests in flight, rate limits, retries and secret hygiene.

A backend only says how to send one request (`_send`) and how to read its failures (`_classify`).
This module runs many requests at once on one process-wide event loop, waits for the shared rate
limiter, retries transient failures with exponential backoff and full jitter (honouring
Retry-After), and turns a row that still fails into an error on that row, with its attempt count,
instead of an exception that would lose the batch.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import random
import threading
import time
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from promptopt_dagster.core.errors import PromptOptError
from promptopt_dagster.llm.base import LLMClient, LLMRequest, LLMResponse
from promptopt_dagster.llm.ratelimit import RateLimiter, shared_limiter

log = logging.getLogger("promptopt.llm")

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class LLMConfigurationError(PromptOptError):
    """The model cannot answer any row as configured (bad key, unknown model, wrong endpoint)."""


class MalformedReply(Exception):
    """The server answered 200 but not with something the protocol allows; worth another try."""


@dataclass(frozen=True)
class Failure:
    kind: str  # timeout | connection | malformed | http_<status> | rejected | blocked
    message: str
    retryable: bool
    retry_after_s: float | None = None
    fatal: bool = False  # retrying any row is pointless: stop the batch with a clear error


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    max_retry_after_s: float = 300.0

    def delay(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
        """Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2**(attempt-1))].

        A server's Retry-After is a floor: waiting less only earns another 429."""
        jittered = rng.uniform(0, min(self.max_backoff_s, self.initial_backoff_s * 2 ** (attempt - 1)))
        if retry_after_s is not None:
            return max(min(retry_after_s, self.max_retry_after_s), jittered)
        return jittered


def redact(text: str, secrets: Sequence[str]) -> str:
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "[REDACTED]")
    return text


def retry_after_seconds(headers: Any) -> float | None:
    """Retry-After in seconds (the HTTP-date form is rare from model APIs and treated as absent)."""
    if headers is None:
        return None
    try:
        value = headers.get("retry-after") or headers.get("Retry-After")
    except Exception:
        return None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def failure_from_status(status: int, message: str, headers: Any = None) -> Failure:
    if status in RETRYABLE_STATUS:
        return Failure(f"http_{status}", message, True, retry_after_seconds(headers))
    if status in (401, 403):
        return Failure(
            f"http_{status}",
            f"the server refused the credentials ({message}); check the API key or the Application Default Credentials",
            False,
            fatal=True,
        )
    if status == 404:
        return Failure(
            "http_404", f"model or endpoint not found ({message}); check the model name and base_url", False, fatal=True
        )
    return Failure(f"http_{status}", message, False)


# --- one event loop per process ---------------------------------------------------------------------

_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


def background_loop() -> asyncio.AbstractEventLoop:
    """A daemon thread running one event loop for the whole process.

    SDK async clients bind their connection pools to the loop they first ran on, so every batch
    runs on this same loop instead of a fresh `asyncio.run` each time."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="promptopt-llm-loop", daemon=True).start()
            _LOOP = loop
        return _LOOP


class RemoteClient(LLMClient):
    mode = "chat"

    def __init__(
        self,
        model: str,
        max_in_flight: int = 16,
        rpm: float | None = None,
        tpm: float | None = None,
        retry: RetryPolicy = RetryPolicy(),
        timeout_s: float = 60.0,
        secrets: Sequence[str] = (),
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self._model = model
        self.max_in_flight = max_in_flight
        self.retry = retry
        self.timeout_s = timeout_s
        self._secrets = tuple(s for s in secrets if s)
        self._rng = random.Random(seed)
        self.limiter: RateLimiter = shared_limiter((self.backend, self.endpoint(), model), rpm, tpm)

    @property
    def model(self) -> str:
        return self._model

    def endpoint(self) -> str:
        """Where requests go (no secrets): part of the rate-limiter key."""
        return ""

    async def _aclose(self) -> None:
        """Close the SDK client's connection pool (on the loop it was used on)."""

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._aclose(), background_loop()).result(timeout=10)

    @abstractmethod
    async def _send(self, request: LLMRequest) -> LLMResponse:
        """Send one request once; raise on any failure (classified by `_classify`)."""

    def _classify(self, exc: BaseException) -> Failure:
        """Backends map their SDK's exceptions first and fall back to this for the common ones."""
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            return Failure("timeout", f"no reply within {self.timeout_s:g}s", True)
        if isinstance(exc, (MalformedReply, ValueError)):  # json.JSONDecodeError is a ValueError
            return Failure("malformed", f"malformed reply: {exc}", True)
        if isinstance(exc, (ConnectionError, OSError)):
            return Failure("connection", f"connection failed: {type(exc).__name__}: {exc}", True)
        name = type(exc).__module__.split(".")[0]
        if name in ("aiohttp", "httpx", "httpcore", "httpx2", "httpcore2"):  # the SDKs' HTTP transports
            return Failure("connection", f"connection failed: {type(exc).__name__}: {exc}", True)
        return Failure("error", f"{type(exc).__name__}: {exc}", False)

    @staticmethod
    def estimate_tokens(request: LLMRequest) -> int:
        """Rough size for the token bucket before the reply says the truth (~4 characters a token)."""
        text = request.prompt or "".join(c for _, c in request.messages or ())
        return len(text) // 4 + 1 + request.max_tokens

    async def _one(self, request: LLMRequest) -> LLMResponse:
        started = time.perf_counter()
        estimate = self.estimate_tokens(request)
        for attempt in range(1, self.retry.max_attempts + 1):
            await self.limiter.acquire(estimate)
            try:
                async with asyncio.timeout(self.timeout_s + 1.0):  # a backstop; the SDKs time out first
                    response = await self._send(request)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is classified, none is lost
                failure = self._classify(exc)
                message = redact(failure.message, self._secrets)
                if failure.fatal:
                    raise LLMConfigurationError(
                        f"{self.backend} model '{self.model}' at {self.endpoint() or 'default endpoint'}: {message}"
                    ) from None
                if not failure.retryable or attempt == self.retry.max_attempts:
                    return LLMResponse(
                        error=f"{failure.kind}: {message}", attempts=attempt, latency_s=time.perf_counter() - started
                    )
                if failure.retry_after_s is not None:
                    self.limiter.pause(failure.retry_after_s)
                delay = self.retry.delay(attempt, failure.retry_after_s, self._rng)
                log.debug("%s attempt %d failed (%s); retrying in %.2fs", self.model, attempt, failure.kind, delay)
                await asyncio.sleep(delay)
                continue
            self.limiter.settle(estimate, response.prompt_tokens + response.completion_tokens)
            response.attempts = attempt
            response.latency_s = time.perf_counter() - started
            return response
        raise AssertionError("unreachable")

    def _stream(self, requests: Sequence[LLMRequest]) -> Iterator[tuple[int, LLMResponse]]:
        if not requests:
            return
        done: queue.Queue = queue.Queue()  # lists of (index, response or fatal exception)

        async def run_all() -> None:
            gate = asyncio.Semaphore(self.max_in_flight)
            finished: list = []

            async def run(i: int, req: LLMRequest) -> None:
                async with gate:
                    try:
                        finished.append((i, await self._one(req)))
                    except BaseException as exc:  # fatal config errors and cancellation end the batch
                        finished.append((i, exc))
                        raise

            async def hand_over() -> None:
                # Results go to the caller's thread in small batches: waking it for every row costs
                # the event loop a GIL hand-off per request, which shows at hundreds of requests/s.
                while True:
                    await asyncio.sleep(0.02)
                    if finished:
                        done.put(finished[:])
                        finished.clear()

            courier = asyncio.ensure_future(hand_over())
            try:
                await asyncio.gather(*(run(i, r) for i, r in enumerate(requests)))
            finally:
                courier.cancel()
                done.put(finished[:])
                finished.clear()

        future = asyncio.run_coroutine_threadsafe(run_all(), background_loop())
        received = 0
        try:
            while received < len(requests):
                for i, item in done.get():
                    if isinstance(item, BaseException):
                        raise item
                    received += 1
                    yield i, item
        finally:
            future.cancel()  # a consumer that stops early (or a fatal error) stops the requests still queued
