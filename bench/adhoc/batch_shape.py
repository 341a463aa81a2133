"""Ad hoc: does a prompt's last token give the same logits evaluated alone (the rest cached) as with the whole
prompt in one batch? On the AVX-512 machines of sessions 22-29 the label-ranking tests saw the same scores; on an
AVX2-only machine (session 30) they differed, which is why LabelRanker reads what it already read for the same
tokens instead of evaluating them again (llm/label_ranking.py). Prints the largest logit difference and the prompt
tokens a second, with llama.cpp's repacked weights (extra buffer types) on and off, so the cause can be told apart.

    .venv/bin/python bench/adhoc/batch_shape.py
"""

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import llama_cpp  # noqa: E402
import llama_cpp.llama_cpp as low  # noqa: E402  (the module Llama() reads its defaults from)

from promptopt_dagster.app.settings import get_settings  # noqa: E402
from promptopt_dagster.llm.local import ensure_model_file  # noqa: E402

PROMPT = (
    "Classify the sentiment of the review as positive or negative.\n"
    + "\n".join(f"Review: a fine film number {i} with good acting. Answer: positive" for i in range(40))
    + "\nReview: dull and slow. Answer:"
)


def measure(path: str, extra_bufts: bool) -> tuple[float, float, int]:
    default = low.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = extra_bufts
        return p

    low.llama_model_default_params = params  # Llama() takes no switch for it; its constructor reads these
    try:
        llm = llama_cpp.Llama(model_path=path, n_ctx=4096, n_threads=2, n_threads_batch=2, verbose=False)
    finally:
        low.llama_model_default_params = default
    tokens = llm.tokenize(PROMPT.encode(), add_bos=True)

    def logits() -> np.ndarray:
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()

    def whole() -> np.ndarray:
        llm.reset()
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        llm.eval(tokens)
        return logits()

    started = time.perf_counter()
    together = whole()
    rate = len(tokens) / (time.perf_counter() - started)
    llm._ctx.kv_cache_seq_rm(-1, len(tokens) - 1, -1)  # the last token again, alone, the rest cached
    llm.n_tokens = len(tokens) - 1
    llm.eval(tokens[-1:])
    return float(np.abs(together - logits()).max()), rate, len(tokens)


def main() -> None:
    path = str(ensure_model_file(get_settings().model_dir))
    for extra in (True, False):
        diff, rate, n = measure(path, extra)
        print(
            f"repacked weights {'on ' if extra else 'off'}: {n} tokens; largest logit difference, whole prompt "
            f"against its last token alone: {diff:.4f}; {rate:.0f} prompt tokens/s"
        )


if __name__ == "__main__":
    main()
