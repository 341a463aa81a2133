"""sst2 optimized with the task model on a fake Gemini (Vertex) server that fails 20% of prompts.

Prints what the server counted next to what the report says, so the accounting can be checked by
eye, plus the fault mix, the wall time and the scores. The fake model is a word-list classifier
(promptopt_dagster_tests/remote_helpers.py::lexicon_model), so the scores say nothing about
Gemini; the point is that every row is answered and every request and token is accounted for.

    .venv/bin/python bench/optimize_fake_gemini.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from promptopt_dagster_tests.fake_llm_servers import FakeLLMServer, FaultPlan  # noqa: E402
from promptopt_dagster_tests.remote_helpers import gemini_env, lexicon_model, run_cli  # noqa: E402


def main() -> None:
    plan = FaultPlan(rate=0.2, kinds=("429", "500", "timeout", "malformed"), fail_attempts=2, timeout_sleep_s=1.0)
    with tempfile.TemporaryDirectory() as tmp, FakeLLMServer("gemini", answer=lexicon_model, faults=plan) as srv:
        tmp_path = Path(tmp)
        started = time.perf_counter()
        done = run_cli(
            tmp_path / "state",
            gemini_env(srv, tmp_path),
            "--dataset",
            "sst2",
            "--report-json",
            str(tmp_path / "report.json"),
        )
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        report = json.loads((tmp_path / "report.json").read_text())
        usage = report["usage"]["by_model"]["gemini/gemini-2.5-flash"]
        print(
            f"wall {wall:.0f} s, {report['iterations']} iterations ({report['stop_reason']}), "
            f"dev {report['initial_dev_score']:.3f} -> {report['best_dev_score']:.3f}, "
            f"test {report['initial_test_score']:.3f} -> {report['best_test_score']:.3f}"
        )
        print(
            f"server: {srv.request_count} requests, {srv.success_count} answered, faults {dict(srv.fault_counts)}, "
            f"{srv.prompt_tokens} prompt + {srv.completion_tokens} completion tokens"
        )
        print(
            f"report: {usage['requests']} requests for {usage['llm_calls']} rows ({usage['cache_hits']} cache hits), "
            f"{usage['errors']} failed, {usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion "
            f"tokens, ${usage['cost_usd']:.4f} at gemini-2.5-flash list prices"
        )
        match = (usage["requests"], usage["prompt_tokens"], usage["completion_tokens"]) == (
            srv.request_count,
            srv.prompt_tokens,
            srv.completion_tokens,
        )
        print(f"report matches server: {match}")


if __name__ == "__main__":
    main()
