"""Ad hoc: how fast llama.cpp reads long prompts under other settings and other quantizations of the embedded
model, as ratios to its defaults measured in the same process.

Why: on long inputs the prompt tokens are the time (retrieved paragraphs are read anew on every row), so before
cutting demos shorter (fewshot's `long_demo_chars`) it is worth knowing what llama.cpp itself allows. Each
variant reads the same prompts: retrieved-demo-like prompts of `--demos` rows of DIR/train.csv cut to
`--chars` characters, each from an empty cache (`reset`), so no prefix is shared.

    .venv/bin/python bench/adhoc/prefill_settings.py DIR [--demos 16] [--chars 400] [--prompts 6] [--requantize]

DIR holds a train.csv with a user_input column (`bench/package_sections.py DIR` writes long paragraphs).
`--requantize` also writes Q8_0, F16 and Q4_0 copies of the shipped Q4_K_M file with llama.cpp's own
`llama_model_quantize` into a temporary directory and reads the prompts with each.
"""

import argparse
import ctypes
import random
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from promptopt_dagster.app.settings import get_settings
from promptopt_dagster.llm.local import ensure_model_file

SETTINGS = {
    "defaults": {},
    "n_batch/n_ubatch 2048": {"n_batch": 2048, "n_ubatch": 2048},
    "n_ubatch 256": {"n_ubatch": 256},
    "flash attention": {"flash_attn": True},
    "flash attention, n_ubatch 256": {"flash_attn": True, "n_ubatch": 256},
}
QUANTS = {"Q8_0": 7, "F16": 1, "Q4_0": 2}  # llama_ftype values


def prompts(train: Path, demos: int, chars: int, count: int) -> list[str]:
    texts = pd.read_csv(train, dtype=str, keep_default_na=False)["user_input"].tolist()
    rng = random.Random(1)
    out = []
    for _ in range(count):
        shown = "\n\n".join(f"Input: {t[:chars]}\nLabel: x" for t in rng.sample(texts, demos))
        out.append(f"Classify the input.\n\n{shown}\n\nInput: {rng.choice(texts)}\nLabel:")
    return out


def tokens_per_second(model: Path, texts: list[str], **settings) -> float:
    from llama_cpp import Llama

    llm = Llama(model_path=str(model), n_ctx=4096, n_threads=2, n_threads_batch=2, verbose=False, **settings)
    tokens = [llm.tokenize(t.encode()) for t in texts]
    started = time.perf_counter()
    for t in tokens:
        llm.reset()
        llm.eval(t)
    rate = sum(map(len, tokens)) / (time.perf_counter() - started)
    del llm
    return rate


def requantized(source: Path, out_dir: Path) -> dict[str, Path]:
    import llama_cpp

    out = {}
    for name, ftype in QUANTS.items():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize, params.nthread = ftype, True, 2
        target = out_dir / f"gemma-{name}.gguf"
        if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) != 0:
            raise SystemExit(f"quantizing to {name} failed")
        out[name] = target
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path, help="a directory with train.csv (user_input column)")
    ap.add_argument("--demos", type=int, default=16, help="demos a prompt shows")
    ap.add_argument("--chars", type=int, default=400, help="characters each demo is cut to")
    ap.add_argument("--prompts", type=int, default=6, help="prompts each variant reads")
    ap.add_argument("--requantize", action="store_true", help="also read them with Q8_0, F16 and Q4_0 copies")
    args = ap.parse_args()
    settings = get_settings()
    model = ensure_model_file(settings.model_dir)
    texts = prompts(args.dir / "train.csv", args.demos, args.chars, args.prompts)
    reference = tokens_per_second(model, texts)
    print(f"defaults (Q4_K_M): {reference:.0f} prompt tokens/s", flush=True)
    for name, extra in list(SETTINGS.items())[1:]:
        rate = tokens_per_second(model, texts, **extra)
        print(f"{name}: {rate:.0f} tokens/s, {rate / reference:.2f} x defaults", flush=True)
    if args.requantize:
        with tempfile.TemporaryDirectory() as tmp:
            for name, path in requantized(model, Path(tmp)).items():
                rate = tokens_per_second(path, texts)
                print(f"{name} copy: {rate:.0f} tokens/s, {rate / reference:.2f} x Q4_K_M", flush=True)


if __name__ == "__main__":
    main()
