"""Throughput of the remote model layer against a fake server with fixed latency.

The seed design sent requests in sequential batches of 10, so at 100 ms a reply it could never pass
100 requests/s. The platform keeps N requests in flight; at 32 in flight and 100 ms the ideal is
320 requests/s. Both run here in one process and one run, against the same server, which runs in a
separate process so that it does not compete with the client for the GIL.

    .venv/bin/python bench/llm_throughput.py [--requests 2000] [--in-flight 32] [--latency-s 0.1] [--backend openai]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from promptopt_dagster.llm.base import LLMRequest  # noqa: E402
from promptopt_dagster.llm.gemini import GeminiClient  # noqa: E402
from promptopt_dagster.llm.openai_compat import OpenAIClient  # noqa: E402


def start_server(protocol: str, latency_s: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "promptopt_dagster_tests.fake_llm_servers",
            "--protocol",
            protocol,
            "--port",
            "0",
            "--latency-s",
            str(latency_s),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline().strip()
    if not line.startswith("READY "):
        proc.kill()
        raise SystemExit(f"fake server did not start: {line!r}")
    return proc, line.split(" ", 1)[1]


def make_client(backend: str, url: str, in_flight: int):
    if backend == "openai":
        return OpenAIClient("gpt-4o-mini", base_url=url + "/v1", api_key="bench", max_in_flight=in_flight)
    import google.oauth2.credentials

    return GeminiClient(
        "gemini-2.5-flash",
        project="bench",
        location="us-central1",
        base_url=url,
        credentials=google.oauth2.credentials.Credentials(token="bench"),
        max_in_flight=in_flight,
    )


def requests(n: int, tag: str) -> list[LLMRequest]:
    return [
        LLMRequest(messages=(("system", "Classify the sentiment."), ("user", f"{tag} review number {i}")), max_tokens=4)
        for i in range(n)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--in-flight", type=int, default=32)
    ap.add_argument("--latency-s", type=float, default=0.1)
    ap.add_argument("--backend", choices=["openai", "gemini"], default="openai")
    args = ap.parse_args()
    proc, url = start_server(args.backend, args.latency_s)
    try:
        warm = make_client(args.backend, url, args.in_flight)
        warm.generate(requests(args.in_flight, "warm-up"))  # connections and imports, not measured

        platform = make_client(args.backend, url, args.in_flight)
        started, cpu_started = time.perf_counter(), time.process_time()
        out = platform.generate(requests(args.requests, "platform"))
        platform_s = time.perf_counter() - started
        cpu_ms = 1000 * (time.process_time() - cpu_started) / args.requests
        failed = sum(r.error is not None for r in out)

        seed = make_client(args.backend, url, 10)
        batch = requests(args.requests, "seed")
        started = time.perf_counter()
        for i in range(0, len(batch), 10):  # the seed design: send 10, wait for all 10, repeat
            seed.generate(batch[i : i + 10])
        seed_s = time.perf_counter() - started
        for client in (warm, platform, seed):
            client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    ideal = args.in_flight / args.latency_s
    rate, seed_rate = args.requests / platform_s, args.requests / seed_s
    print(
        f"backend {args.backend}, {args.requests} requests, {args.latency_s * 1000:.0f} ms latency, "
        f"{os.cpu_count()} cores"
    )
    print(
        f"platform ({args.in_flight} in flight): {platform_s:6.2f} s  {rate:7.1f} req/s  "
        f"{rate / ideal:.3f} of ideal {ideal:.0f} req/s  ({failed} failed; client CPU {cpu_ms:.2f} ms/request)"
    )
    print(
        f"seed (sequential batches of 10): {seed_s:6.2f} s  {seed_rate:7.1f} req/s  "
        f"{seed_rate / (10 / args.latency_s):.3f} of its ideal {10 / args.latency_s:.0f} req/s"
    )
    print(f"speed-up {rate / seed_rate:.1f}x; target >= 0.9 of ideal: {'met' if rate / ideal >= 0.9 else 'NOT met'}")


if __name__ == "__main__":
    main()
