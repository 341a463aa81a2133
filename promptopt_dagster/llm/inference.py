"""Answer a set of rows with one prompt version, with progress in the logs and nothing lost on error."""

from __future__ import annotations

import logging
import time

import pandas as pd

from promptopt_dagster.core.prompts import PromptVersion
from promptopt_dagster.llm.base import LLMClient, LLMRequest

log = logging.getLogger("promptopt.inference")

PREDICTION_COLUMNS = ["row_id", "user_input", "ground_truth_output", "prediction", "error",
                      "prompt_tokens", "completion_tokens", "latency_s", "cached"]


def build_request(client: LLMClient, prompt: PromptVersion, user_input: str, max_tokens: int) -> LLMRequest:
    if client.mode == "chat":
        messages = tuple((m["role"], m["content"]) for m in prompt.render_chat(user_input))
        return LLMRequest(messages=messages, max_tokens=max_tokens, stop=())
    # A base model continues the pattern past the answer; the newline ends a one-line answer.
    return LLMRequest(prompt=prompt.render_completion(user_input), max_tokens=max_tokens, stop=("\n",))


def predict(client: LLMClient, prompt: PromptVersion, rows: pd.DataFrame, max_tokens: int,
            label: str = "inference", chunk_size: int = 25) -> pd.DataFrame:
    """One prediction row per input row, in input order; failed rows keep their error text."""
    total, done, started = len(rows), 0, time.perf_counter()
    records = []
    inputs = rows.to_dict("records")
    for start in range(0, total, chunk_size):
        chunk = inputs[start : start + chunk_size]
        responses = client.generate([build_request(client, prompt, r["user_input"], max_tokens) for r in chunk])
        for row, res in zip(chunk, responses):
            records.append({"row_id": row["row_id"], "user_input": row["user_input"],
                            "ground_truth_output": row["ground_truth_output"],
                            "prediction": res.text if res.error is None else None, "error": res.error,
                            "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
                            "latency_s": res.latency_s, "cached": res.cached})
        done += len(chunk)
        elapsed = time.perf_counter() - started
        rate = done / elapsed if elapsed > 0 else float("inf")
        eta = (total - done) / rate if rate and rate != float("inf") else 0.0
        log.info("%s: %d/%d rows (%.0f%%), %.1f rows/s, ETA %.0fs", label, done, total, 100 * done / total, rate, eta)
    frame = pd.DataFrame.from_records(records, columns=PREDICTION_COLUMNS)
    return frame.astype({"row_id": "int64", "prompt_tokens": "int64", "completion_tokens": "int64",
                         "latency_s": "float64", "cached": "bool"})
