"""A peer beside us: DSPy's few-shot optimizers on our model, our splits and our scorer, in one table.

bench/quality.py says what the platform's search adds over demos picked by hand; this says where it
stands next to a widely used library doing the same job. Everything but the library is held fixed, so
the two tables can be read side by side:

- the model: Gemma 3 270M under llama.cpp (the `local` backend, built by llm/factory.build_client),
  greedy decoding, reached through an engine (`LocalEngine`) that flattens DSPy's chat messages into
  one completion prompt, as the model has no chat template. Its answer budget is the dataset's
  max_output_tokens plus the tokens of DSPy's own output framing (the field header and the
  `completed` marker), which the model must write for DSPy to read the answer at all;
- the rows: demos come from train (less any row equal to a dev or test row, as the platform's demo
  pool), DSPy's own selection (the random search's valset) from dev's select rows, and the test rows
  are exactly those `promptopt optimize` and bench/quality.py report on:
  `sample_rows(test, test_size, seed)` with the optimization defaults;
- the score: the dataset's target metric from its scoring suite (macro F1 for atis_intent is the same
  number), with the same 95% percentile bootstrap over the recomputed target.

An answer DSPy cannot parse (the 270M model often does not write the `[[ ## label ## ]]` framing
DSPy's ChatAdapter asks for; the adapter then retries once with its JSON adapter, a second model
call) is scored as a wrong answer, not a crash. Model calls are counted in the engine, every one
DSPy makes: compiling and answering the test rows, fallbacks included. DSPy's response cache is off,
so every run is cold, as bench/quality.py's.

Methods: zero_shot (dspy.Predict with the dataset's initial instruction), labeled (LabeledFewShot),
knn (KNNFewShot over a TF-IDF embedding of train, the neighbours used as labeled demos, as the
platform's retriever does), random_search (BootstrapFewShotWithRandomSearch, small settings) and,
only when asked for, mipro (MIPROv2 auto="light", with this same model writing the instructions).

DSPy is not part of the main install: `pip install -e ".[bench]"` (setup.py says why).

    .venv/bin/python bench/peers.py                          # every dataset with labels, all default methods
    .venv/bin/python bench/peers.py sst2 --rows 200          # one dataset, 200 test rows
    .venv/bin/python bench/peers.py sst2 --methods zero_shot,knn --json peers.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import typing
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from promptopt_dagster.app.datasets import load_manifest, load_splits, sample_rows
from promptopt_dagster.app.iteration_setup import IterationSetup
from promptopt_dagster.app.optimizations import OptimizationSpec
from promptopt_dagster.app.settings import get_settings
from promptopt_dagster.defs.resources import ProjectResource
from promptopt_dagster.llm.base import LLMClient, LLMRequest
from promptopt_dagster.llm.factory import build_client
from promptopt_dagster.llm.model_settings import ModelSettings

try:
    import dspy
    from dspy.lm15 import Message, Response, TextPart, Usage, response_to_events
    from dspy.utils.exceptions import AdapterParseError
except ImportError as exc:  # the bench extra is not installed: say how to get it rather than a bare trace
    raise SystemExit(f'bench/peers.py needs DSPy: pip install -e ".[bench]" ({exc})') from exc

log = logging.getLogger("promptopt.peers")

METHODS = ("zero_shot", "labeled", "knn", "random_search", "mipro")
DEFAULT_METHODS = ("zero_shot", "labeled", "knn", "random_search")
DEFAULTS = OptimizationSpec.model_fields
INPUT, LABEL, ANSWER = "text", "label", "answer"


class LocalEngine:
    """DSPy's engine contract (complete(Request) -> Response) over the project's own client.

    DSPy 3.4 routes a custom model through `dspy.LM(engine=...)`; the older BaseLM.forward hook is
    deprecated there. The request's messages become one completion prompt (`prompt`), because the
    local model is a base model without a chat template.
    Decoding is greedy whatever DSPy asks: the same model and decoding as every platform number.
    `calls` counts every request that reached the model; a failed one raises, so DSPy never reads
    an error as an answer."""

    def __init__(self, client: LLMClient, max_tokens: int) -> None:
        self.client = client
        self.max_tokens = max_tokens
        self.calls = 0

    @staticmethod
    def prompt(request) -> str:
        """The chat as a transcript ending in the assistant's cue: how a chat is put to a base model.

        Joining the turns bare loses where the answer starts: the model then continues the pattern of
        the user turns (it writes the next `[[ ## text ## ]]`) instead of answering."""
        parts = []
        if request.system is not None:
            system = request.system
            parts.append(system if isinstance(system, str) else "".join(getattr(p, "text", "") for p in system))
        roles = {"user": "User", "assistant": "Assistant", "system": "System"}
        parts.extend(f"{roles.get(m.role, m.role.title())}: {m.text or ''}" for m in request.messages)
        return "\n\n".join(parts) + "\n\nAssistant:"

    def complete(self, request) -> Response:
        # The answer ends at DSPy's end marker; what follows it would be thrown away by the adapter.
        stop = tuple(request.config.stop or ()) or ("[[ ## completed ## ]]", "\n\nUser:")
        asked = LLMRequest(prompt=self.prompt(request), max_tokens=self.max_tokens, temperature=0.0, stop=stop)
        answer = self.client.generate([asked])[0]
        self.calls += 1
        if answer.error is not None:
            raise RuntimeError(f"local model call failed: {answer.error}")
        return Response(
            id=None,
            model=self.client.model,
            # The space after the cue's colon is the model's to write; DSPy's parser wants the header at line start.
            message=Message.assistant([TextPart(answer.text.lstrip())]),
            finish_reason="stop",
            usage=Usage(input_tokens=answer.prompt_tokens, output_tokens=answer.completion_tokens),
        )

    def stream(self, request):
        return response_to_events(self.complete(request))

    def close(self) -> None:
        """The client outlives the engine (one per bench run); nothing to release here."""


class Answer(dspy.Module):
    """One Predict whose unparseable answer becomes an empty (wrong) one instead of an exception.

    Optimizers see the same module: a demo candidate the model cannot answer in DSPy's format scores 0
    there too, and DSPy's evaluator never stops on its error budget."""

    def __init__(self, signature) -> None:
        super().__init__()
        self.predict = dspy.Predict(signature)
        self.output = next(iter(signature.output_fields))

    def forward(self, **inputs):
        try:
            return self.predict(**inputs)
        except AdapterParseError:
            return dspy.Prediction(**{self.output: ""})


def signature_for(instructions: str, labels: list[str]):
    """text -> label (one of the dataset's labels, as DSPy types a classification) or text -> answer."""
    output = (typing.Literal[tuple(labels)], dspy.OutputField()) if labels else (str, dspy.OutputField())
    return dspy.Signature({INPUT: (str, dspy.InputField()), LABEL if labels else ANSWER: output}, instructions)


def examples(rows: pd.DataFrame, output: str) -> list:
    return [
        dspy.Example(**{INPUT: r.user_input, output: str(r.ground_truth_output).strip()}).with_inputs(INPUT)
        for r in rows.itertuples()
    ]


def tfidf_embedder(train_texts: list[str]):
    """A TF-IDF embedder (fit on train) as DSPy's Embedder: rows are L2-normalized, so KNN's dot product
    is the cosine similarity the platform's own retriever (core/retrieval.py) ranks demos by."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(sublinear_tf=True).fit(train_texts)
    return dspy.Embedder(lambda texts: vectorizer.transform(texts).toarray().astype(np.float32), caching=False)


def compile_program(method: str, signature, trainset: list, valset: list, metric, args) -> dspy.Module:
    student = Answer(signature)
    if method == "zero_shot":
        return student
    if method == "labeled":
        return dspy.LabeledFewShot(k=args.k).compile(student, trainset=trainset)
    if method == "knn":
        embedder = tfidf_embedder([e[INPUT] for e in trainset])
        # Neighbours as labeled demos only (no bootstrapped ones): what the platform's retriever does,
        # and no teacher calls per test row.
        optimizer = dspy.KNNFewShot(
            k=args.k, trainset=trainset, vectorizer=embedder, max_bootstrapped_demos=0, max_labeled_demos=args.k
        )
        return optimizer.compile(student)
    if method == "random_search":
        optimizer = dspy.BootstrapFewShotWithRandomSearch(
            metric=metric,
            max_bootstrapped_demos=args.bootstrapped,
            max_labeled_demos=args.k,
            num_candidate_programs=args.candidates,
            num_threads=1,  # one llama.cpp context: calls run one at a time anyway
            max_errors=10**9,  # Answer already turns parse failures into wrong answers
        )
        return optimizer.compile(student, trainset=trainset, valset=valset)
    if method == "mipro":
        optimizer = dspy.MIPROv2(metric=metric, auto="light", num_threads=1, max_errors=10**9, seed=args.seed)
        return optimizer.compile(student, trainset=trainset, valset=valset)
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def run_dataset(name: str, args, settings, client: LLMClient) -> list[dict]:
    project = ProjectResource(data_dir=str(settings.data_dir), prompts_dir=str(settings.prompts_dir))
    spec, suite = project.spec(name), project.suite(name)
    splits = load_splits(spec, Path(settings.data_dir))
    # the rows an optimization of this dataset uses, cut as its iterations cut them (select rows: --dev-rows)
    setup = IterationSetup.resolve(OptimizationSpec(name=name, dataset=name, select_size=args.dev_rows), splits)
    seed = setup.spec.seed
    test = sample_rows(setup.test, args.rows, seed)
    select = setup.select
    train = sample_rows(setup.demo_source(), args.train_rows, seed)
    output = LABEL if spec.labels else ANSWER
    signature = signature_for(project.initial_prompt(name).system_prompt or "", list(spec.labels))
    trainset, valset, testset = examples(train, output), examples(select, output), examples(test, output)
    references = [str(x) for x in test["ground_truth_output"]]

    framing = client.count_tokens([f"[[ ## {output} ## ]]\n\n\n[[ ## completed ## ]]"])
    engine = LocalEngine(client, spec.max_output_tokens + (framing[0] if framing else 24))
    dspy.configure(
        lm=dspy.LM(f"local/{client.model}", engine=engine, cache=False, temperature=0.0, num_retries=0),
        max_errors=10**9,
    )

    def metric(example, prediction, trace=None) -> float:
        """The dataset's target on one row (correct or not, for a label): what DSPy's optimizers maximize."""
        return suite.score([str(prediction.get(output) or "")], [example[output]]).value

    out = []
    for method in args.methods:
        started, calls_before, client_before = time.perf_counter(), engine.calls, client.usage.llm_calls
        log.info("%s %s: compiling on %d train / %d dev rows", name, method, len(trainset), len(valset))
        program = compile_program(method, signature, trainset, valset, metric, args)
        compile_calls = engine.calls - calls_before
        predictions = []
        for example in tqdm(testset, desc=f"{name} {method} test", file=sys.stderr, mininterval=5):
            predictions.append(str(program(**example.inputs()).get(output) or ""))
        score = suite.score(predictions, references).value
        found = suite.target_interval(predictions, references)
        low, high = found.low, found.high
        row = {
            "dataset": name,
            "method": method,
            "metric": suite.target,
            "test rows": len(testset),
            "test": score,
            "test 95%": [low, high],
            "unparsed": sum(p == "" for p in predictions),
            "model calls": engine.calls - calls_before,
            "compile calls": compile_calls,
            "client calls": client.usage.llm_calls - client_before,
            "max tokens": engine.max_tokens,
            "wall s": round(time.perf_counter() - started, 1),
        }
        log.info("%s %s: %s %.3f [%.3f, %.3f]", name, method, suite.target, score, low, high)
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def table(rows: list[dict]) -> str:
    lines = [
        "| dataset | method | test score [95%] | unparsed | model calls (compile) | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        low, high = r["test 95%"]
        lines.append(
            f"| {r['dataset']} | {r['method']} | {r['metric']} {r['test']:.3f} [{low:.3f}, {high:.3f}] "
            f"| {r['unparsed']}/{r['test rows']} | {r['model calls']} ({r['compile calls']}) | {r['wall s']:.0f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "datasets", nargs="*", help="dataset names in data/manifest.yaml (default: every one with labels)"
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=DEFAULTS["test_size"].default,
        help="held-out test rows, sampled as `promptopt optimize` samples them (0: all)",
    )
    parser.add_argument(
        "--methods",
        type=lambda s: [m.strip() for m in s.split(",") if m.strip()],
        default=list(DEFAULT_METHODS),
        help=f"comma-separated, from {','.join(METHODS)} (mipro only when named: see docs/benchmarks.md)",
    )
    parser.add_argument("--train-rows", type=int, default=0, help="train rows DSPy may draw demos from (0: all)")
    parser.add_argument(
        "--dev-rows",
        type=int,
        default=DEFAULTS["select_size"].default,
        help="dev select rows the random search (and MIPROv2) choose among candidates on",
    )
    parser.add_argument("--k", type=int, default=12, help="demos per prompt (bench/quality.py's by-hand k)")
    parser.add_argument("--bootstrapped", type=int, default=4, help="random search: most bootstrapped demos")
    parser.add_argument("--candidates", type=int, default=4, help="random search: random candidate programs")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"].default, help="MIPROv2's seed")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("LiteLLM", "httpx", "dspy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = get_settings()
    names = args.datasets or [n for n, s in load_manifest(settings.manifest_path).items() if s.labels]
    # No response cache: every method pays for its calls, as bench/quality.py's cold runs do.
    client = build_client(ModelSettings(), settings.model_dir, settings.llm_threads, None)
    rows = []
    for name in names:
        rows.extend(run_dataset(name, args, settings, client))
    print()
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
