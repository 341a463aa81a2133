"""Answer a set of rows with one prompt version, with progress in the logs and nothing lost on error."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from promptopt_dagster.core.errors import ContextWindowError
from promptopt_dagster.core.prompts import PromptVersion
from promptopt_dagster.llm.base import LLMClient, LLMRequest, LLMResponse
from promptopt_dagster.llm.label_ranking import first_best
from promptopt_dagster.llm.progress import Progress

log = logging.getLogger("promptopt.llm")

PREDICTION_COLUMNS = [
    "row_id",
    "user_input",
    "ground_truth_output",
    "prediction",
    "error",
    "attempts",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_s",
    "cached",
]
PREDICTION_DTYPES = {
    "row_id": "int64",
    "attempts": "int64",
    "model": "string",
    "prompt_tokens": "int64",
    "completion_tokens": "int64",
    "cost_usd": "float64",
    "latency_s": "float64",
    "cached": "bool",
}


def build_request(
    client: LLMClient, prompt: PromptVersion, user_input: str, max_tokens: int, stop: tuple[str, ...] = ("\n",)
) -> LLMRequest:
    if client.mode == "chat":
        messages = tuple((m["role"], m["content"]) for m in prompt.render_chat(user_input))
        return LLMRequest(messages=messages, max_tokens=max_tokens, stop=(), choices=prompt.choices)
    # A base model continues the pattern past the answer; by default the newline ends a one-line answer
    # (datasets with multi-line answers set their own stop, e.g. the start of the next demo).
    calibration = prompt.calibration_prompts(user_input) if client.ranks_labels else ()
    return LLMRequest(
        prompt=prompt.render_completion(user_input),
        max_tokens=max_tokens,
        stop=tuple(stop),
        choices=prompt.choices,
        calibration_prompts=calibration,
    )


def build_requests(
    client: LLMClient, prompt: PromptVersion, rows: pd.DataFrame, max_tokens: int, stop: tuple[str, ...] = ("\n",)
) -> list[LLMRequest]:
    return [build_request(client, prompt, text, max_tokens, stop) for text in rows["user_input"]]


def summed_answer(choices: Sequence[str], members: Sequence[LLMResponse]) -> LLMResponse:
    """One row's answer from its answers with each demo set: each label's log-probability, normalized
    over the labels, summed over the sets. A set's quirks (the labels its rows lean to) average out."""
    cost = {
        "prompt_tokens": sum(r.prompt_tokens for r in members),
        "attempts": sum(r.attempts for r in members),
        "completion_tokens": sum(r.completion_tokens for r in members),
        "cost_usd": sum(r.cost_usd for r in members),
        "latency_s": sum(r.latency_s for r in members),
        "cached": all(r.cached for r in members),
    }
    failed = next((r.error for r in members if r.error is not None), None)
    if failed is None and any(r.label_scores is None for r in members):
        failed = "the backend returned no label scores to sum over demo sets"
    if failed is not None:
        return LLMResponse(error=failed, **cost)
    total = np.zeros(len(choices))
    for r in members:
        scores = np.array([r.label_scores[c] for c in choices], dtype=np.float64)
        total += scores - np.logaddexp.reduce(scores)
    return LLMResponse(text=choices[first_best(total)], finish_reason="choice", **cost)  # the first of equals


def voted_answer(choices: Sequence[str], response: LLMResponse, shares: dict[str, float], weight: float) -> LLMResponse:
    """One row's answer with its retrieved rows' vote: each label's log-probability (normalized over the labels)
    plus `weight` times the log of its share of those rows (PromptVersion.vote_shares)."""
    if response.error is not None:
        return response
    if response.label_scores is None:
        return dataclasses.replace(response, error="the backend returned no label scores to weigh the vote with")
    scores = np.array([response.label_scores[c] for c in choices], dtype=np.float64)
    total = scores - np.logaddexp.reduce(scores) + weight * np.log([shares[c] for c in choices])
    # the first of equals, as ranking does
    return dataclasses.replace(response, text=choices[first_best(total)], finish_reason="choice")


def check_context(
    client: LLMClient, requests: list[LLMRequest], row_ids: list[int], prompt: PromptVersion, where: str
) -> None:
    """Refuse, before any call, rows whose rendered prompt plus the answer budget exceed the model's context.

    Such a row would only fail (or be silently truncated) after the rows before it were paid for.
    `where` names the rows' source for the message, e.g. "sst2/dev.csv"; row ids are 0-based data rows.
    Every token but BOS covers at least one byte, so only prompts longer in bytes than the window can
    overflow: the tokenizer runs on those alone, and a typical batch (a cached rerun too) pays nothing.
    """
    window = client.context_window()
    if window is None or any(r.prompt is None for r in requests) or not requests:
        return
    budget = requests[0].max_tokens
    suspects = [
        (row_id, r.prompt)
        for row_id, r in zip(row_ids, requests)
        if len(r.prompt.encode("utf-8")) + 1 + budget > window
    ]
    counts = client.count_tokens([text for _, text in suspects]) if suspects else []
    if counts is None:
        return
    over = [(row_id, n) for (row_id, _), n in zip(suspects, counts) if n + budget > window]
    if not over:
        return
    shown = ", ".join(f"{row_id + 1} ({n} tokens)" for row_id, n in over[:10])
    more = f" and {len(over) - 10} more" if len(over) > 10 else ""
    raise ContextWindowError(
        f"{len(over)} row(s) of {where} do not fit the task model's context window of {window} tokens "
        f"with prompt v{prompt.version} ({budget} tokens kept for the answer): data row(s) {shown}{more}. "
        "No model call was made. Shorten or remove those rows, or give the task model a longer context (the "
        "embedded model: PROMPTOPT_TASK__CONTEXT_TOKENS, up to 32768), or use a model with a longer one."
    )


def predict(
    client: LLMClient,
    prompt: PromptVersion,
    rows: pd.DataFrame,
    max_tokens: int,
    label: str = "inference",
    progress_interval_s: float = 5.0,
    stop: tuple[str, ...] = ("\n",),
    where: str = "the evaluation rows",
) -> pd.DataFrame:
    """One prediction row per input row, in input order; failed rows keep their error and attempt count.

    All rows go to the client in one batch, so a remote backend keeps its full number of requests
    in flight; the client streams answers back and progress is logged as they arrive."""
    inputs = rows.to_dict("records")
    if prompt.ensembled and not client.ranks_labels:
        log.warning(
            "prompt v%d sums label scores over %d demo sets, but the %s backend returns no label "
            "scores: it answers with the first set alone",
            prompt.version,
            1 + len(prompt.ensemble),
            client.backend,
        )
    if prompt.calibrated and not client.ranks_labels:
        log.warning(
            "prompt v%d asks for calibrated label answers, but the %s backend returns no label scores: "
            "its answers are not calibrated (they were with the backend that measured the prompt)",
            prompt.version,
            client.backend,
        )
    if prompt.voted and not client.ranks_labels:
        log.warning(
            "prompt v%d weighs label answers with its retrieved rows' vote, but the %s backend returns no label "
            "scores: it answers without the vote",
            prompt.version,
            client.backend,
        )
    voted = prompt.voted and client.ranks_labels
    members = prompt.ensemble_members() if client.ranks_labels else []
    if members:  # every row once per demo set, all in one batch: the backend orders them to share prefixes
        requests = [
            dataclasses.replace(r, want_label_scores=True)
            for member in members
            for r in build_requests(client, member, rows, max_tokens, stop)
        ]
        label = f"{label} ({len(members)} demo sets)"
    else:
        requests = build_requests(client, prompt, rows, max_tokens, stop)
        if voted:  # the same requests as without the vote (and the same cache entries), with every label's score
            requests = [dataclasses.replace(r, want_label_scores=True) for r in requests]
    check_context(client, requests, [int(r["row_id"]) for r in inputs] * max(1, len(members)), prompt, where)
    progress = Progress(len(requests), label, progress_interval_s)

    def on_result(_: int, r: LLMResponse) -> None:
        progress.advance(failed=r.error is not None, cached=r.cached)

    try:
        responses = client.generate(requests, on_result=on_result)
    finally:
        progress.close()
    if members:
        n = len(inputs)
        responses = [summed_answer(prompt.choices, responses[i::n]) for i in range(n)]
    elif voted:
        weight = prompt.retrieval.vote
        responses = [
            voted_answer(prompt.choices, r, prompt.vote_shares(row["user_input"]), weight)
            for row, r in zip(inputs, responses)
        ]
    records = [
        {
            "row_id": row["row_id"],
            "user_input": row["user_input"],
            "ground_truth_output": row["ground_truth_output"],
            "prediction": res.text if res.error is None else None,
            "error": res.error,
            "attempts": res.attempts,
            "model": client.model_key,
            "prompt_tokens": res.prompt_tokens,
            "completion_tokens": res.completion_tokens,
            "cost_usd": res.cost_usd,
            "latency_s": res.latency_s,
            "cached": res.cached,
        }
        for row, res in zip(inputs, responses)
    ]
    return pd.DataFrame.from_records(records, columns=PREDICTION_COLUMNS).astype(PREDICTION_DTYPES)
