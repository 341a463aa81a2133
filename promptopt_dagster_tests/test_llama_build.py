"""The llama.cpp build for each kind of CPU: what the README's install asks for (deploy/llama_build_flags.py),
and the local backend's refusal of an installed build that would crash where it runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from promptopt_dagster.llm.llama_build import cpu_flags
from promptopt_dagster.llm.local import LlamaBuildError, check_llama_build

SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "llama_build_flags.py"

SAPPHIRE_RAPIDS = (
    "fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c bmi1 avx2 bmi2 avx512f avx512dq avx512cd avx512bw avx512vl "
    "avx_vnni avx512_bf16 avx512vbmi avx512_vnni amx_bf16 avx512_fp16 amx_tile amx_int8"
)
SKYLAKE_X = "fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c bmi1 avx2 bmi2 avx512f avx512dq avx512cd avx512bw avx512vl"
ZEN3 = "fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c bmi1 avx2 bmi2"
KNIGHTS_LANDING = "fpu sse sse2 avx f16c avx2 fma avx512f avx512cd avx512er avx512pf"  # AVX-512 F without BW, VL, DQ


def flags_for(tmp_path: Path, *cores: str) -> str:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("".join(f"processor\t: {i}\nmodel name\t: x\nflags\t\t: {f}\n\n" for i, f in enumerate(cores)))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpuinfo", str(cpuinfo)], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_a_cpu_with_amx_gets_its_avx512_extensions_and_never_amx(tmp_path):
    assert flags_for(tmp_path, SAPPHIRE_RAPIDS, SAPPHIRE_RAPIDS) == (
        "-DGGML_NATIVE=OFF -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON"
    )


@pytest.mark.parametrize(
    ("cores", "expected"),
    [
        ((SKYLAKE_X,), "-DGGML_NATIVE=OFF -DGGML_AVX512=ON"),  # AVX-512 without the later extensions
        ((ZEN3,), "-DGGML_NATIVE=OFF"),  # AVX2 only: the portable build
        ((KNIGHTS_LANDING,), "-DGGML_NATIVE=OFF"),  # AVX-512 F alone does not run ggml's AVX-512 code
        ((SAPPHIRE_RAPIDS, ZEN3), "-DGGML_NATIVE=OFF"),  # a core without AVX-512: the process may run there
    ],
)
def test_each_cpu_gets_only_the_instructions_every_core_has(tmp_path, cores, expected):
    assert flags_for(tmp_path, *cores) == expected


def test_without_cpuinfo_or_when_asked_the_build_is_portable(tmp_path):
    missing = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpuinfo", str(tmp_path / "none")], capture_output=True, text=True, check=True
    )
    portable = subprocess.run([sys.executable, str(SCRIPT), "--portable"], capture_output=True, text=True, check=True)
    assert missing.stdout.strip() == portable.stdout.strip() == "-DGGML_NATIVE=OFF"


PORTABLE_INFO = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | LLAMAFILE = 1 | OPENMP = 1 | "
)
AVX512_INFO = PORTABLE_INFO.replace("BMI2 = 1 |", "BMI2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 |")
NATIVE_AMX_INFO = AVX512_INFO.replace("AVX512_VNNI = 1 |", "AVX512_VNNI = 1 | AMX_INT8 = 1 |")


def _flags(line: str) -> set[str]:
    return cpu_flags(f"flags : {line}")


def test_a_build_with_amx_kernels_is_refused_with_the_rebuild_for_this_cpu():
    with pytest.raises(LlamaBuildError) as raised:
        check_llama_build(NATIVE_AMX_INFO, _flags(SAPPHIRE_RAPIDS))
    message = str(raised.value)
    assert "AMX kernels (AMX_INT8)" in message
    assert "pip cache remove llama_cpp_python" in message
    assert '-DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON"' in message


def test_a_build_for_instructions_the_cpu_lacks_is_refused_and_a_portable_one_is_not():
    with pytest.raises(LlamaBuildError, match=r"built for AVX512, AVX512_VNNI, which this CPU lacks.*NATIVE=OFF\""):
        check_llama_build(AVX512_INFO, _flags(ZEN3))
    check_llama_build(PORTABLE_INFO, _flags(ZEN3))
    check_llama_build(PORTABLE_INFO, _flags(SAPPHIRE_RAPIDS))
    check_llama_build(AVX512_INFO, _flags(SAPPHIRE_RAPIDS))
    check_llama_build(AVX512_INFO, set())  # no /proc/cpuinfo: only AMX is known to crash


def test_the_installed_build_suits_this_machine():
    """What the README's install built on this machine is accepted here (the real llama_cpp and /proc/cpuinfo)."""
    check_llama_build()
