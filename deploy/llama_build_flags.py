"""Print the CMAKE_ARGS that build llama-cpp-python for this machine's CPU: AVX-512 where every core has it,
never AMX. The README's install runs it before the virtual environment exists:

    CMAKE_ARGS="$(python3 deploy/llama_build_flags.py)" .venv/bin/pip install -e ".[dev]"

The choice and why it is so live in promptopt_dagster/llm/llama_build.py (standard library only), which the
local backend also uses to refuse an installed build that would crash on the CPU it runs on; this file loads
it by path, since the package and its dependencies are not installed yet.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

MODULE = Path(__file__).resolve().parents[1] / "promptopt_dagster" / "llm" / "llama_build.py"


def _llama_build():
    spec = importlib.util.spec_from_file_location("llama_build", MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    build = _llama_build()
    parser = argparse.ArgumentParser(
        description="Print CMAKE_ARGS that build llama-cpp-python for this machine's CPU "
        "(AVX-512 where every core has it, never AMX)."
    )
    parser.add_argument(
        "--portable",
        action="store_true",
        help=f"print the build for any x86-64 CPU with AVX2 ({build.PORTABLE}): for a Docker image, or a wheel "
        "that other machines reuse",
    )
    parser.add_argument(
        "--cpuinfo", default="/proc/cpuinfo", help="the file listing the CPU's flags (default: /proc/cpuinfo)"
    )
    args = parser.parse_args(argv)
    print(build.PORTABLE if args.portable else build.cmake_args(build.read_cpu_flags(args.cpuinfo)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
