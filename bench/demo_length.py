"""What cutting retrieved demos saves per row on long inputs, with the embedded model.

With k retrieved demos a row's prompt holds k train rows that no other row shares, so the model reads
them all for every row: on paragraph-length inputs that is most of the cost of answering. fewshot cuts
retrieved demos to `long_demo_chars` characters when the demo pool's rows are long (median over it).
This prints, for the same rows, the seconds and prompt tokens per row with whole demos and with cut
ones, and the ratio. Both run in one process on one loaded model, in alternating chunks (the machine is
shared: neither side gets a quiet minute the other does not).

There is no labeled long-input set in data/, so the rows are built from gsm8k's questions, four to a
row (about 900 characters, a news paragraph's length); what this measures is cost, not accuracy. The
answer is ranked among four labels, as a topic classifier's would be.

    .venv/bin/python bench/demo_length.py [--rows 60] [--k 8] [--chars 400] [--chunk 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from promptopt_dagster.app.settings import get_settings  # noqa: E402
from promptopt_dagster.core.prompts import Demo, PromptVersion, Retrieval  # noqa: E402
from promptopt_dagster.llm.inference import predict  # noqa: E402
from promptopt_dagster.llm.local import LlamaCppClient  # noqa: E402

LABELS = ["world", "sports", "business", "science"]


def paragraphs(path: Path, n: int, per: int = 4) -> list[str]:
    questions = pd.read_csv(path, dtype=str, keep_default_na=False)["user_input"].tolist()
    return [" ".join(questions[i * per : (i + 1) * per]) for i in range(min(n, len(questions) // per))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=60, help="rows answered by each side (default 60)")
    ap.add_argument("--k", type=int, default=8, help="retrieved demos per row (default 8)")
    ap.add_argument("--chars", type=int, default=400, help="length retrieved demos are cut to (default 400)")
    ap.add_argument("--pool", type=int, default=400, help="rows in the demo pool (default 400)")
    ap.add_argument("--chunk", type=int, default=10, help="rows per alternating chunk (default 10)")
    args = ap.parse_args(argv)

    data = ROOT / "data" / "gsm8k"
    pool = [
        Demo(user_input=t, ground_truth_output=LABELS[i % 4])
        for i, t in enumerate(paragraphs(data / "train.csv", args.pool))
    ]
    rows = pd.DataFrame({"user_input": paragraphs(data / "test.csv", args.rows)})
    rows["row_id"], rows["ground_truth_output"] = range(len(rows)), [LABELS[i % 4] for i in range(len(rows))]
    base = PromptVersion(
        system_prompt=f"Classify the topic of the text as one of: {', '.join(LABELS)}.",
        output_prompt="Text: {user_input}\nTopic:",
        answer="label",
        labels=LABELS,
    )
    sides = {
        "whole": base.child(retrieval=Retrieval(k=args.k, pool=pool)),
        f"cut to {args.chars}": base.child(retrieval=Retrieval(k=args.k, pool=pool, max_chars=args.chars)),
    }
    client = LlamaCppClient(get_settings().model_dir)  # the production context window (4096)
    client.count_tokens(["warm up"])  # load the model before any clock starts
    seconds = {name: 0.0 for name in sides}
    tokens = {name: 0 for name in sides}
    for n, start in enumerate(range(0, len(rows), args.chunk)):
        chunk = rows.iloc[start : start + args.chunk]
        order = list(sides) if n % 2 == 0 else list(reversed(sides))
        for name in order:
            began = time.perf_counter()
            answers = predict(client, sides[name], chunk, max_tokens=4, label=name, progress_interval_s=3600)
            seconds[name] += time.perf_counter() - began
            tokens[name] += int(answers["prompt_tokens"].sum())
    print(
        f"{len(rows)} rows of about {int(rows['user_input'].str.len().mean())} characters, {args.k} retrieved demos each"
    )
    print(f"{'demos':<14} {'s/row':>7} {'tokens/row':>11}")
    for name in sides:
        print(f"{name:<14} {seconds[name] / len(rows):>7.3f} {tokens[name] / len(rows):>11.0f}")
    whole, cut = list(sides)
    print(
        f"cut/whole: {seconds[cut] / seconds[whole]:.2f}x the seconds, {tokens[cut] / tokens[whole]:.2f}x the tokens "
        f"(target: at most 0.5x the seconds)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
