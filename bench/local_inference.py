"""Overhead of the platform's local inference path against a raw llama-cpp-python loop, on sst2.

Answering rows goes through `predict`: render each row's prompt (for retrieved demos a TF-IDF lookup
of the nearest train rows), the context-window check, the client's request/response layer, usage
accounting and progress. On the embedded model all of that must cost little next to the model itself,
or every evaluation of every candidate pays for it. Both sides run in one process on the same loaded
`llama_cpp.Llama` and the same rendered prompts; the raw side is a bare `create_completion` loop over
prompts rendered before the clock starts, the platform side renders inside the timed call (that is
the point) with no response cache, so every row is a model call.

This machine is shared (2 cores; tests may run beside the bench), so one side must not get a quiet
minute the other does not: the rows go in chunks (--chunk), each chunk answered by both sides in turn,
the side that goes first alternating from chunk to chunk; each side's time is the sum over its chunks.
The platform's time outside the model call (its wall time less the sum of its rows' `latency_s`) is
printed too: rendering, the context check and the client layer, a figure contention hardly moves.
The answers of both sides must be identical (greedy decoding).

Modes: `static` (8 fixed demos), `retrieved` (the 8 most similar train rows per input), both with
free answers, and `retrieved-label` (retrieved demos, answer ranked among the labels; its raw
reference is `LabelRanker(llm).rank` called directly). Target: platform <= 1.2x raw in every mode;
the exit code is 1 if a mode misses it.

`--many-labels N` adds the many-label case: N hwu64 dev rows (64 intents), for the initial prompt (the
64 labels listed), 8 retrieved demos and label-balanced static demos (one per label: 64), each answered
three ways on the same loaded model: free generation, label ranking with every label's score
(`complete`, what ranking cost before it learned to stop) and the ranking the client uses (pruned: it
stops when no other label can win). It prints seconds per row, prompt tokens per row, tokens evaluated
past the prompt per row, and whether the two rankings chose alike; the ways take turns per chunk, as above.

`--long-inputs N` adds the long-input case: N rows of about 970 characters (four gsm8k questions to a
row: no labeled long-input set is in data/, so it measures cost, not accuracy) answered with 8
retrieved demos and a label ranked among four, once with whole demos and once with demos cut to
`--long-chars` (`Retrieval.max_chars`, what fewshot starts with when its demo pool's rows are long).
On paragraphs the retrieved demos, which no two rows share, are most of a row's cost; the target is
cut <= 0.5x whole in seconds, and the exit code is 1 if it misses.

    .venv/bin/python bench/local_inference.py [--rows 500] [--threads N] [--modes static,retrieved]
        [--chunk 25] [--many-labels 50] [--long-inputs 40 --long-chars 100]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from promptopt_dagster.app.settings import get_settings  # noqa: E402
from promptopt_dagster.core import retrieval as retrieval_module  # noqa: E402
from promptopt_dagster.core.prompts import Demo, PromptVersion, Retrieval  # noqa: E402
from promptopt_dagster.defs.resources import ProjectResource  # noqa: E402
from promptopt_dagster.llm.inference import predict  # noqa: E402
from promptopt_dagster.llm.label_ranking import LabelRanker  # noqa: E402
from promptopt_dagster.llm.local import LlamaCppClient  # noqa: E402
from promptopt_dagster.optimizers.fewshot import FewShotOptimizer  # noqa: E402

MODES = ("static", "retrieved", "retrieved-label")
MAX_TOKENS = 4  # sst2's max_output_tokens in data/manifest.yaml
STOP = ["\n"]  # predict's default stop for completion prompts


def read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)[["user_input", "ground_truth_output"]]


def load_rows(data_dir: Path, n: int) -> pd.DataFrame:
    """The first n rows of dev, then of test when dev has fewer; row_id is the position."""
    frames, have = [], 0
    for split in ("dev", "test"):
        if have >= n:
            break
        frame = read_csv(data_dir / "sst2" / f"{split}.csv").head(n - have)
        frames.append(frame)
        have += len(frame)
    rows = pd.concat(frames, ignore_index=True)
    if len(rows) < n:
        raise SystemExit(f"sst2 dev + test hold only {len(rows)} rows; ask for --rows {len(rows)} or fewer")
    rows.insert(0, "row_id", range(len(rows)))
    return rows


def build_prompts(initial: PromptVersion, train: pd.DataFrame, labels: list[str], seed: int) -> dict:
    opt = FewShotOptimizer()
    retrieval = Retrieval(k=8, pool=opt.demo_pool(train))
    return {
        "static": initial.child(demos=opt.pick_demos(train, labels, 8, random.Random(seed)), answer="free"),
        "retrieved": initial.child(demos=[], retrieval=retrieval, answer="free"),
        "retrieved-label": initial.child(demos=[], retrieval=retrieval, answer="label", labels=labels),
    }


def forget_retrievals(prompt: PromptVersion) -> None:
    """Empty the retriever's per-query memo, so the platform's timed run pays every TF-IDF lookup.

    Rendering the raw side's prompts filled it; left full, the platform would only read it back. The
    retriever itself (the TF-IDF fit of the pool) is built once per process and stays, as in a run."""
    if prompt.retrieval is not None:
        r = prompt.retrieval
        retriever = retrieval_module.get_retriever(r.method, [d.user_input for d in r.pool])
        getattr(retriever, "_memo", {}).clear()


def run_platform(client: LlamaCppClient, prompt: PromptVersion, rows: pd.DataFrame) -> tuple[float, list[str], float]:
    """Wall seconds of `predict`, its answers, and the seconds its rows spent in the model call."""
    started = time.perf_counter()
    out = predict(client, prompt, rows, max_tokens=MAX_TOKENS, progress_interval_s=1e9, where="sst2 bench rows")
    elapsed = time.perf_counter() - started
    errors = out["error"].dropna()
    if len(errors):
        raise SystemExit(f"platform: {len(errors)} row(s) failed, e.g. {errors.iloc[0]}")
    return elapsed, out["prediction"].tolist(), float(out["latency_s"].sum())


def run_raw(llm, prompts: list[str], labels: list[str] | None) -> tuple[float, list[str]]:
    answers = []
    started = time.perf_counter()
    if labels:  # the platform's label answers: the same ranking, called directly
        ranker = LabelRanker(llm)
        for p in prompts:
            answers.append(ranker.rank(p, labels).choice)
    else:
        for p in prompts:
            res = llm.create_completion(p, max_tokens=MAX_TOKENS, temperature=0.0, top_k=1, stop=STOP)
            answers.append(res["choices"][0]["text"])
    return time.perf_counter() - started, answers


def main() -> None:
    s = get_settings()
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument(
        "--rows",
        type=int,
        default=500,
        help="rows answered per mode and side: the first of sst2 dev, then test if dev has fewer",
    )
    ap.add_argument(
        "--threads", type=int, default=s.llm_threads, help="llama.cpp threads; the default is the settings' llm_threads"
    )
    ap.add_argument(
        "--modes", default="static,retrieved", help=f"comma-separated modes to measure, of: {', '.join(MODES)}"
    )
    ap.add_argument(
        "--chunk",
        type=int,
        default=25,
        help="rows per turn: both sides answer each chunk, alternating which goes first; "
        "0 = one turn each over all rows (one predict call)",
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the static demo pick")
    ap.add_argument("--target", type=float, default=1.2, help="the largest acceptable platform/raw time ratio")
    ap.add_argument(
        "--many-labels",
        type=int,
        default=0,
        metavar="ROWS",
        help="also measure the many-label case on this many hwu64 dev rows (0: skip); with --modes '' only it",
    )
    ap.add_argument(
        "--long-inputs",
        type=int,
        default=0,
        metavar="ROWS",
        help="also measure the long-input case on this many paragraph rows (0: skip); with --modes '' only it",
    )
    ap.add_argument(
        "--long-chars",
        type=int,
        default=FewShotOptimizer.Options.model_fields["long_demo_chars"].default,  # what fewshot cuts paragraphs to
        help="length the long case's retrieved demos are cut to (default: fewshot's long_demo_chars)",
    )
    args = ap.parse_args()
    if not args.modes.strip() and (args.many_labels or args.long_inputs):
        if args.many_labels:
            many_labels(s, args)
        if args.long_inputs and not long_inputs(s, args):
            sys.exit(1)
        return
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        ap.error(f"unknown mode(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(MODES)}")

    labels = yaml.safe_load((s.data_dir / "manifest.yaml").read_text())["datasets"]["sst2"]["labels"]
    train = read_csv(s.data_dir / "sst2" / "train.csv")
    rows = load_rows(s.data_dir, args.rows)
    initial = PromptVersion.load(s.prompts_dir / "sst2.json")
    prompts = build_prompts(initial, train, labels, args.seed)

    client = LlamaCppClient(s.model_dir, n_threads=args.threads)  # plain: no response cache in front
    started = time.perf_counter()
    llm, _lock = client._llama()  # the very Llama object the client answers with (one per process)
    load_s = time.perf_counter() - started
    llm.create_completion("Review: warm up\nSentiment:", max_tokens=1, temperature=0.0, top_k=1)

    print(
        f"sst2, {len(rows)} rows per side, {args.threads} threads, {os.cpu_count()} cores, "
        f"max_tokens {MAX_TOKENS}; model load {load_s:.1f} s; load average {os.getloadavg()[0]:.2f}"
    )
    results, failed = [], False
    for index, mode in enumerate(modes):
        prompt = prompts[mode]
        forget_retrievals(prompt)
        started = time.perf_counter()
        rendered = [prompt.render_completion(text) for text in rows["user_input"]]  # builds the retriever
        render_s = time.perf_counter() - started
        tokens = client.count_tokens(rendered[:50])
        mean_tokens = sum(tokens) / len(tokens)
        ranked = labels if prompt.answer == "label" else None
        forget_retrievals(prompt)
        platform_s = raw_s = model_s = 0.0
        platform_answers, raw_answers, chunk_ratios = [], [], []
        step = args.chunk or len(rows)
        for number, start in enumerate(range(0, len(rows), step)):
            raw_first = (index + number) % 2 == 0
            chunk = {}
            for side in ("raw", "platform") if raw_first else ("platform", "raw"):
                if side == "raw":
                    elapsed, answers = run_raw(llm, rendered[start : start + step], ranked)
                    raw_s += elapsed
                    chunk[side] = elapsed
                    raw_answers += answers
                else:
                    elapsed, answers, in_model = run_platform(client, prompt, rows.iloc[start : start + step])
                    platform_s += elapsed
                    chunk[side] = elapsed
                    model_s += in_model
                    platform_answers += answers
            chunk_ratios.append(chunk["platform"] / chunk["raw"])
        differ = [i for i, (a, b) in enumerate(zip(platform_answers, raw_answers)) if a != b]
        ratio = platform_s / raw_s
        ok = ratio <= args.target
        failed |= not ok
        results.append(
            (
                mode,
                len(rows),
                mean_tokens,
                render_s,
                platform_s,
                raw_s,
                ratio,
                differ,
                ok,
                platform_s - model_s,
                statistics.median(chunk_ratios),
            )
        )
        for i in differ[:5]:
            print(f"  {mode}: row {i} answers differ: platform {platform_answers[i]!r} vs raw {raw_answers[i]!r}")

    print(
        f"{'mode':<16} {'rows':>5} {'tokens':>7} {'render s':>9} {'platform s':>11} {'raw s':>8} "
        f"{'ratio':>6} {'median':>6} {'ms/row plat':>12} {'ms/row raw':>11} {'outside model':>15} {'differ':>7}  verdict"
    )
    for mode, n, mean_tokens, render_s, platform_s, raw_s, ratio, differ, ok, outside_s, median in results:
        print(
            f"{mode:<16} {n:>5} {mean_tokens:>7.0f} {render_s:>9.3f} {platform_s:>11.2f} {raw_s:>8.2f} "
            f"{ratio:>6.3f} {median:>6.3f} {1000 * platform_s / n:>12.1f} {1000 * raw_s / n:>11.1f} "
            f"{1000 * outside_s / n:>8.1f} ms/row {len(differ):>7}  "
            f"{'PASS' if ok else 'FAIL'} (target <= {args.target}x)"
        )
    print(
        "tokens: mean prompt tokens of the first 50 rows. render s: every prompt rendered once before the clock "
        "(a mode's first retrieval render includes the TF-IDF fit). outside model: the platform's wall time "
        f"less its rows' time in the model call. median: the median of the per-chunk ratios. Chunks of {args.chunk or len(rows)} rows, order alternating. "
        f"Load average now {os.getloadavg()[0]:.2f}"
    )
    if args.many_labels:
        many_labels(s, args)
    if args.long_inputs and not long_inputs(s, args):
        failed = True
    if failed:
        sys.exit(1)


def many_labels(s, args) -> None:
    """Seconds and tokens per row on hwu64's 64 labels: free answers, complete ranking, pruned ranking."""
    project = ProjectResource(data_dir=str(s.data_dir), prompts_dir=str(s.prompts_dir))
    spec, suite = project.spec("hwu64"), project.suite("hwu64")  # macro f1 and accuracy as the loop scores them
    labels, max_tokens = list(spec.labels), spec.max_output_tokens
    train = read_csv(s.data_dir / "hwu64" / "train.csv")
    rows = read_csv(s.data_dir / "hwu64" / "dev.csv").head(args.many_labels)
    initial = project.initial_prompt("hwu64")
    opt = FewShotOptimizer()
    prompts = {
        "initial": initial,
        "8 retrieved": initial.child(demos=[], retrieval=Retrieval(k=8, pool=opt.demo_pool(train))),
        "64 balanced": initial.child(demos=opt.pick_demos(train, labels, 8, random.Random(args.seed), balanced=True)),
    }
    client = LlamaCppClient(s.model_dir, n_threads=args.threads)
    llm, _lock = client._llama()
    ranker = LabelRanker(llm)
    print(
        f"hwu64 (64 labels), {len(rows)} dev rows, {args.threads} threads, {os.cpu_count()} cores, "
        f"max_tokens {max_tokens}; load average {os.getloadavg()[0]:.2f}"
    )

    def free(text: str) -> tuple[str, int]:
        res = llm.create_completion(text, max_tokens=max_tokens, temperature=0.0, top_k=1, stop=STOP)
        return res["choices"][0]["text"].strip(), res["usage"]["completion_tokens"]

    ways = {
        "free": free,
        "complete": lambda text: (lambda r: (r.choice, r.label_tokens))(ranker.rank(text, labels, complete=True)),
        "pruned": lambda text: (lambda r: (r.choice, r.label_tokens))(ranker.rank(text, labels, complete=False)),
    }
    print(
        f"{'prompt':<12} {'prompt tok/row':>14} {'way':<9} {'s/row':>7} {'tok past prompt/row':>20} "
        f"{'f1':>6} {'accuracy':>8}"
    )
    step = args.chunk or len(rows)
    for index, (name, prompt) in enumerate(prompts.items()):
        rendered = [prompt.render_completion(text) for text in rows["user_input"]]
        prompt_tokens = statistics.mean(client.count_tokens(rendered))
        seconds = dict.fromkeys(ways, 0.0)
        extra = dict.fromkeys(ways, 0)
        answers: dict[str, list[str]] = {w: [] for w in ways}
        for number, start in enumerate(range(0, len(rows), step)):
            order = list(ways)[(index + number) % 3 :] + list(ways)[: (index + number) % 3]
            for way in order:  # each way goes first in turn, so none gets the quiet minutes alone
                # every way starts from the same KV cache: the chunk's first prompt, as the row before left it
                llm.create_completion(rendered[start], max_tokens=1, temperature=0.0, top_k=1)
                started = time.perf_counter()
                for text in rendered[start : start + step]:
                    answer, tokens = ways[way](text)
                    answers[way].append(answer)
                    extra[way] += tokens
                seconds[way] += time.perf_counter() - started
        for way in ways:
            summary = suite.score(answers[way], rows["ground_truth_output"].tolist()).summary()
            f1, accuracy = summary["f1"], summary["accuracy"]
            print(
                f"{name:<12} {prompt_tokens:>14.0f} {way:<9} {seconds[way] / len(rows):>7.3f} "
                f"{extra[way] / len(rows):>20.1f} {f1:>6.3f} {accuracy:>8.3f}"
            )
        differ = sum(a != b for a, b in zip(answers["complete"], answers["pruned"]))
        print(
            f"{'':<12} pruned/complete time {seconds['pruned'] / seconds['complete']:.2f}, "
            f"pruned/free {seconds['pruned'] / seconds['free']:.2f}; rankings differ on {differ} row(s)"
        )
    print(
        "prompt tok/row: the rendered prompt's tokens (a static prefix is evaluated once and reused from the "
        "KV cache, so only its first row pays for it). tok past prompt: generated tokens (free) or label tokens "
        f"evaluated (rankings). Load average now {os.getloadavg()[0]:.2f}"
    )


LONG_LABELS = ["world", "sports", "business", "science"]


def paragraphs(path: Path, n: int, per: int = 4) -> list[str]:
    """Rows of about a news paragraph's length: `per` gsm8k questions joined."""
    questions = read_csv(path)["user_input"].tolist()
    return [" ".join(questions[i * per : (i + 1) * per]) for i in range(min(n, len(questions) // per))]


def long_inputs(s, args) -> bool:
    """Seconds and prompt tokens per row on paragraph inputs with 8 retrieved demos, whole and cut; True when
    cut costs at most half the seconds of whole."""
    data = s.data_dir / "gsm8k"
    pool = [
        Demo(user_input=t, ground_truth_output=LONG_LABELS[i % 4])
        for i, t in enumerate(paragraphs(data / "train.csv", 400))
    ]
    rows = pd.DataFrame({"user_input": paragraphs(data / "test.csv", args.long_inputs)})
    rows["row_id"] = range(len(rows))
    rows["ground_truth_output"] = [LONG_LABELS[i % 4] for i in range(len(rows))]
    base = PromptVersion(
        system_prompt=f"Classify the topic of the text as one of: {', '.join(LONG_LABELS)}.",
        output_prompt="Text: {user_input}\nTopic:",
        answer="label",
        labels=LONG_LABELS,
    )
    sides = {
        "whole": base.child(retrieval=Retrieval(k=8, pool=pool)),
        f"cut to {args.long_chars}": base.child(retrieval=Retrieval(k=8, pool=pool, max_chars=args.long_chars)),
    }
    client = LlamaCppClient(s.model_dir, n_threads=args.threads)  # the production context window
    client.count_tokens(["warm up"])  # load the model before any clock starts
    seconds, tokens = dict.fromkeys(sides, 0.0), dict.fromkeys(sides, 0)
    step = args.chunk or len(rows)
    for n, start in enumerate(range(0, len(rows), step)):
        chunk = rows.iloc[start : start + step]
        for name in list(sides) if n % 2 == 0 else list(reversed(sides)):  # each side goes first in turn
            began = time.perf_counter()
            answers = predict(client, sides[name], chunk, max_tokens=4, label=name, progress_interval_s=3600)
            seconds[name] += time.perf_counter() - began
            tokens[name] += int(answers["prompt_tokens"].sum())
    print(
        f"long inputs: {len(rows)} rows of about {int(rows['user_input'].str.len().mean())} characters, "
        f"8 retrieved demos each, {args.threads} threads; load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{'demos':<14} {'s/row':>7} {'tokens/row':>11}")
    for name in sides:
        print(f"{name:<14} {seconds[name] / len(rows):>7.3f} {tokens[name] / len(rows):>11.0f}")
    whole, cut = list(sides)
    ratio = seconds[cut] / seconds[whole]
    print(
        f"cut/whole: {ratio:.2f}x the seconds, {tokens[cut] / tokens[whole]:.2f}x the tokens "
        f"(target: at most 0.5x the seconds){'' if ratio <= 0.5 else '  MISSED'}"
    )
    return ratio <= 0.5


if __name__ == "__main__":
    main()
