"""Which llama.cpp build suits this machine's CPU: the switches to compile it with, and the check that the
installed one runs here.

llama-cpp-python has no wheel on the registry; pip compiles it, and CMAKE_ARGS decide for which CPU.
llama.cpp's own default (`GGML_NATIVE=ON`, `-march=native`) compiles its AMX kernels on a CPU with AMX
(Intel Xeon since Sapphire Rapids), and there the first completion crashes (SIGSEGV in
`ggml_backend_amx_mul_mat`). The portable build (`GGML_NATIVE=OFF`: AVX2, FMA, F16C) runs anywhere but, on a
CPU with AVX-512, answers 1.2x to 1.4x slower, which puts the default sst2 optimization over ten minutes on
2 cores (docs/design.md, "The llama.cpp build"). So the install asks for the portable build plus each
AVX-512 extension every core reports, and never AMX; and the local backend refuses, with the command that
fixes it, a build that would crash here (a wheel pip cached from a native build or from another machine)
instead of dying in native code.

Standard library only: deploy/llama_build_flags.py loads this file before the virtual environment exists.
"""

from __future__ import annotations

PORTABLE = "-DGGML_NATIVE=OFF"

# (llama.cpp's CMake switch, its name in llama_print_system_info(), the /proc/cpuinfo flags its code needs).
# GGML_AVX512 compiles with -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw (ggml-cpu/CMakeLists.txt);
# the extensions need it too.
AVX512 = ("GGML_AVX512", "AVX512", frozenset({"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"}))
AVX512_EXTENSIONS = (
    ("GGML_AVX512_VBMI", "AVX512_VBMI", frozenset({"avx512vbmi"})),
    ("GGML_AVX512_VNNI", "AVX512_VNNI", frozenset({"avx512_vnni"})),
    ("GGML_AVX512_BF16", "AVX512_BF16", frozenset({"avx512_bf16"})),
)
AVX2 = ("GGML_AVX2", "AVX2", frozenset({"avx2", "fma", "f16c"}))  # the portable build's (on by default)
AMX = ("AMX_INT8", "AMX_BF16", "AMX_TILE")  # never built: the kernels crash


def cpu_flags(cpuinfo: str) -> set[str]:
    """The flags every processor in /proc/cpuinfo's text has: a process may run on any of its cores."""
    each = [
        set(value.split())
        for key, _, value in (line.partition(":") for line in cpuinfo.splitlines())
        if key.strip() == "flags"
    ]
    return set.intersection(*each) if each else set()


def cmake_args(flags: set[str]) -> str:
    """The portable build, plus the AVX-512 switches whose instructions every core has; AMX never."""
    switches = [PORTABLE]
    switch, _, needs = AVX512
    if needs <= flags:
        switches.append(f"-D{switch}=ON")
        switches += [f"-D{ext}=ON" for ext, _, ext_needs in AVX512_EXTENSIONS if ext_needs <= flags]
    return " ".join(switches)


def compiled_features(system_info: str) -> set[str]:
    """The features llama_print_system_info() reports as built in ("AVX512 = 1 | ..." -> {"AVX512", ...})."""
    features = set()
    for part in system_info.replace("\n", "|").split("|"):
        name, _, value = part.rpartition("=")
        name = name.split(":")[-1].strip()  # "CPU : SSE3" -> "SSE3"
        if name and value.strip() == "1":
            features.add(name)
    return features


def build_problem(system_info: str, flags: set[str]) -> str | None:
    """Why the installed llama.cpp build would crash on this CPU, with the fix; None when it suits it.

    An empty flag set (no /proc/cpuinfo: not Linux) checks only AMX, which no build of ours has."""
    built = compiled_features(system_info)
    fix = (
        f'rebuild it for this CPU: pip cache remove llama_cpp_python && CMAKE_ARGS="{cmake_args(flags)}" '
        f"pip install --force-reinstall --no-deps {installed_requirement()}"
    )
    amx = sorted(built & set(AMX))
    if amx:
        return (
            f"the installed llama-cpp-python was built with llama.cpp's AMX kernels ({', '.join(amx)}), which crash "
            f"(a native build, or a wheel pip cached from one); {fix}"
        )
    if not flags:
        return None
    lacking = [name for _, name, needs in (AVX2, AVX512, *AVX512_EXTENSIONS) if name in built and not needs <= flags]
    if lacking:
        return (
            f"the installed llama-cpp-python was built for {', '.join(lacking)}, which this CPU lacks (a wheel built "
            f"on another machine, or cached from one); {fix}"
        )
    return None


def installed_requirement() -> str:
    """The installed llama-cpp-python as a requirement (the version setup.py pins), for the rebuild command."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"llama-cpp-python=={version('llama_cpp_python')}"
    except PackageNotFoundError:
        return "llama-cpp-python"


def read_cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """This machine's CPU flags; empty where there is no /proc/cpuinfo (not Linux)."""
    try:
        with open(path, encoding="utf-8") as f:
            return cpu_flags(f.read())
    except OSError:
        return set()
