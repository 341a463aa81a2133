"""What the context-window check costs per batch, against answering the batch, on the embedded model.

It runs before every batch (baseline, each candidate, refined, test), cached reruns included, so it
must cost next to nothing. Prints the time to tokenize every prompt (what the check would cost
without its byte bound), the check itself, and the generation of the same 200 sst2 dev rows with an
8-demo prompt, extrapolated from 50 rows.

    .venv/bin/python bench/context_check.py
"""

from __future__ import annotations

import time

import pandas as pd

from promptopt_dagster.app.settings import get_settings
from promptopt_dagster.core.prompts import Demo, PromptVersion
from promptopt_dagster.llm.inference import build_requests, check_context
from promptopt_dagster.llm.local import LlamaCppClient


def main() -> None:
    s = get_settings()
    client = LlamaCppClient(s.model_dir, n_threads=s.llm_threads)
    train = pd.read_csv(s.data_dir / "sst2" / "train.csv", dtype=str).head(8)
    dev = pd.read_csv(s.data_dir / "sst2" / "dev.csv", dtype=str).head(200).rename_axis("row_id").reset_index()
    prompt = PromptVersion(
        system_prompt="Classify the sentiment.",
        output_prompt="Review: {user_input}\nSentiment:",
        demos=[Demo(user_input=r.user_input, ground_truth_output=r.ground_truth_output) for r in train.itertuples()],
    )
    requests = build_requests(client, prompt, dev, 4)
    client.count_tokens(["warm up"])
    started = time.perf_counter()
    client.count_tokens([r.prompt for r in requests])
    tokenize = time.perf_counter() - started
    started = time.perf_counter()
    check_context(client, requests, dev["row_id"].tolist(), prompt, "sst2/dev.csv")
    check = time.perf_counter() - started
    started = time.perf_counter()
    client.generate(requests[:50])
    generate = (time.perf_counter() - started) * len(requests) / 50
    print(
        f"200 rows: tokenize all {tokenize * 1000:.1f} ms, check_context {check * 1000:.2f} ms, "
        f"generate ~{generate:.1f} s; check / generate = {check / generate:.5f}, "
        f"tokenize-all / generate = {tokenize / generate:.4f}"
    )


if __name__ == "__main__":
    main()
