"""A peer beside us: DSPy's few-shot optimizers on our model, our splits and our scorer, in one table.

bench/quality.py says what the platform's search adds over demos picked by hand; this says where it
stands next to a widely used library doing the same job. Everything but the library is held fixed, so
the two tables can be read side by side:

- the model: Gemma 3 270M under llama.cpp (the `local` backend, built by llm/factory.build_client),
  greedy decoding, reached through an engine (`LocalEngine`, a `dspy.LM(engine=...)`);
- the prompt format, with `--adapter completion` (the default): a DSPy adapter of our own
  (`CompletionAdapter`) renders each call as ONE plain completion prompt in the platform's format
  for this model (PromptVersion.render_completion with the dataset's output_prompt): the
  signature's instructions, then each demo, labeled or bootstrapped, as e.g.
  `Review: <text>\nSentiment: <label>`, blank lines between, then the row's input and `Sentiment:`.
  The engine sends that text as it is and stops at the newline; the answer is the completion's first
  line, parsed into the output field, within the dataset's max_output_tokens. So DSPy and the platform
  show the model the same format; what differs is which demos each picks (and, where the platform's
  search turns them on, how it reads answers: label ranking, calibration). Why: the model is a base
  model with no chat template, and DSPy's default ChatAdapter framing (its demos as `User:` /
  `Assistant:` turns with `[[ ## field ## ]]` markers, kept as `--adapter chat`) costs it most of what
  demos give: on sst2, DSPy's 12-shot LabeledFewShot scored 0.53 through it where a hand-written
  12-shot completion prompt scores 0.90. With `--adapter chat` the engine flattens the chat into a
  `User:/Assistant:` transcript ending in `Assistant:`, and the answer budget is max_output_tokens
  plus the tokens of DSPy's output framing (the field header and the `completed` marker), which the
  model must write for DSPy to read the answer at all;
- the rows: demos come from train (less any row equal to a dev or test row, as the platform's demo
  pool), DSPy's own selection (the random search's valset) from dev's select rows, and the test rows
  are exactly those `promptopt optimize` and bench/quality.py report on:
  `sample_rows(test, test_size, seed)` with the optimization defaults;
- the score: the dataset's target metric from its scoring suite (macro F1 for atis_intent is the same
  number), with the same 95% percentile bootstrap over the recomputed target.

An answer DSPy cannot parse is scored as a wrong answer, not a crash: with the completion adapter a
first line that is empty or not one of the labels (no retry); with the chat adapter an answer
without the `[[ ## label ## ]]` framing, which the 270M model often leaves out (ChatAdapter then
retries once with its JSON adapter, a second model call). Model calls are counted in the engine, every one
DSPy makes: compiling and answering the test rows, fallbacks included. DSPy's response cache is off,
so every run is cold, as bench/quality.py's.

Methods: zero_shot (dspy.Predict with the dataset's initial instruction), labeled (LabeledFewShot),
knn (KNNFewShot over a TF-IDF embedding of train, the neighbours used as labeled demos, as the
platform's retriever does), random_search (BootstrapFewShotWithRandomSearch, small settings) and,
only when asked for, mipro (MIPROv2 auto="light", with this same model writing the instructions;
`--adapter chat` only, as its instruction proposer's signatures are not one input -> one output).

DSPy is not part of the main install: `pip install -e ".[bench]"` (setup.py says why).

    .venv/bin/python bench/peers.py                          # every dataset with labels, all default methods
    .venv/bin/python bench/peers.py sst2 --rows 200          # one dataset, 200 test rows
    .venv/bin/python bench/peers.py sst2 --methods zero_shot,knn --json peers.json
    .venv/bin/python bench/peers.py sst2 --adapter chat      # DSPy's own ChatAdapter framing, as first measured
    .venv/bin/python bench/peers.py atis_intent --methods knn --predictions answers/  # and each test answer
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
from promptopt_dagster.core.prompts import PLACEHOLDER, fill, placeholder_problem
from promptopt_dagster.defs.resources import ProjectResource
from promptopt_dagster.llm.base import LLMClient, LLMRequest
from promptopt_dagster.llm.factory import build_client
from promptopt_dagster.llm.model_settings import ModelSettings

try:
    import dspy
    from dspy.adapters.utils import parse_value
    from dspy.lm15 import Message, Response, TextPart, Usage, response_to_events
    from dspy.utils.exceptions import AdapterParseError
except ImportError as exc:  # the bench extra is not installed: say how to get it rather than a bare trace
    raise SystemExit(f'bench/peers.py needs DSPy: pip install -e ".[bench]" ({exc})') from exc

log = logging.getLogger("promptopt.peers")

METHODS = ("zero_shot", "labeled", "knn", "random_search", "mipro")
ADAPTERS = ("completion", "chat")
DEFAULT_METHODS = ("zero_shot", "labeled", "knn", "random_search")
DEFAULTS = OptimizationSpec.model_fields
INPUT, LABEL, ANSWER = "text", "label", "answer"


class LocalEngine:
    """DSPy's engine contract (complete(Request) -> Response) over the project's own client.

    DSPy 3.4 routes a custom model through `dspy.LM(engine=...)`; the older BaseLM.forward hook is
    deprecated there. The local model is a base model without a chat template, so every request is
    sent as one completion prompt, in one of two modes:

    - `completion=True` (with CompletionAdapter): the request is one user message whose text is
      already the whole prompt; it is sent as it is and the answer stops at the end of its line.
      Anything else is refused: the adapter and the engine must agree on what the text is.
    - `completion=False` (with DSPy's ChatAdapter): the chat is flattened into a transcript (`transcript`).

    Decoding is greedy whatever DSPy asks: the same model and decoding as every platform number.
    `calls` counts every request that reached the model; a failed one raises, so DSPy never reads
    an error as an answer."""

    def __init__(self, client: LLMClient, max_tokens: int, completion: bool = True) -> None:
        self.client = client
        self.max_tokens = max_tokens
        self.completion = completion
        self.calls = 0

    @staticmethod
    def completion_text(request) -> str:
        """The prompt CompletionAdapter wrote: the text of the request's single user message."""
        messages = list(request.messages)
        if request.system is not None or len(messages) != 1 or messages[0].role != "user":
            roles = ["system"] * (request.system is not None) + [m.role for m in messages]
            raise ValueError(
                f"completion mode sends one user message as the prompt, got {roles}: "
                "use CompletionAdapter with this engine (or the engine's chat mode with DSPy's ChatAdapter)"
            )
        return messages[0].text or ""

    @staticmethod
    def transcript(request) -> str:
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
        if self.completion:
            # The answer is the rest of the prompt's last line, as the platform's completion prompts are read.
            prompt, stop = self.completion_text(request), ("\n",)
        else:
            # The answer ends at DSPy's end marker; what follows it would be thrown away by the adapter.
            prompt = self.transcript(request)
            stop = tuple(request.config.stop or ()) or ("[[ ## completed ## ]]", "\n\nUser:")
        asked = LLMRequest(prompt=prompt, max_tokens=self.max_tokens, temperature=0.0, stop=stop)
        answer = self.client.generate([asked])[0]
        self.calls += 1
        if answer.error is not None:
            raise RuntimeError(f"local model call failed: {answer.error}")
        return Response(
            id=None,
            model=self.client.model,
            # The space after the cue's colon ("Assistant:", "Sentiment:") is the model's to write; DSPy's
            # ChatAdapter wants its field header at line start.
            message=Message.assistant([TextPart(answer.text.lstrip())]),
            finish_reason="stop",
            usage=Usage(input_tokens=answer.prompt_tokens, output_tokens=answer.completion_tokens),
        )

    def stream(self, request):
        return response_to_events(self.complete(request))

    def close(self) -> None:
        """The client outlives the engine (one per bench run); nothing to release here."""


class CompletionAdapter(dspy.Adapter):
    """A call as ONE plain completion prompt, rendered as the platform renders its own for this model.

    The prompt is PromptVersion.render_completion's: the signature's instructions, then each demo as
    the dataset's output_prompt filled with the demo's input followed by " <label>", then the row's
    input in the same template, all separated by blank lines, so the model only writes the label:

        Classify the sentiment of the movie review as positive or negative.

        Review: a gorgeous film
        Sentiment: positive

        Review: dull and long
        Sentiment:

    With the dataset's template (prompts/<dataset>.json's output_prompt) DSPy and the platform show the
    model the same format and differ only in the demos; without one, the fields' DSPy prefixes stand in
    (`Text: ...\nLabel:`). Bootstrapped demos (traces) are dicts of the same fields and render the
    same way; a demo missing its input or output is left out. The answer is the completion's first
    line, stripped, parsed into the single output field (a Literal must be one of its labels); an empty
    or unparseable one raises AdapterParseError, which Answer scores as wrong. No fallback call.

    The result is one user message: LocalEngine in completion mode sends its text as the prompt as it
    is (no chat framing) and stops at the newline. Only one-input, one-output signatures can be
    rendered so (MIPROv2's instruction proposer has others: run it with the chat adapter)."""

    def __init__(self, template: str | None = None) -> None:
        super().__init__()
        problem = placeholder_problem(template) if template is not None else None
        if problem:
            raise ValueError(f"CompletionAdapter template: {problem}")
        self.template = template

    @staticmethod
    def fields(signature) -> tuple[str, str]:
        if len(signature.input_fields) != 1 or len(signature.output_fields) != 1:
            raise ValueError(
                f"CompletionAdapter renders one input field and one output field, not {signature.signature!r}"
            )
        return next(iter(signature.input_fields)), next(iter(signature.output_fields))

    def template_for(self, signature) -> str:
        if self.template is not None:
            return self.template
        source, target = self.fields(signature)
        prefix = lambda name, field: (field.json_schema_extra or {}).get("prefix") or f"{name.title()}:"  # noqa: E731
        return (
            f"{prefix(source, signature.input_fields[source])} {PLACEHOLDER}\n"
            f"{prefix(target, signature.output_fields[target])}"
        )

    def format(self, signature, demos, inputs) -> list[dict]:
        source, target = self.fields(signature)
        template = self.template_for(signature)
        parts = [signature.instructions.strip()] if (signature.instructions or "").strip() else []
        for demo in demos:
            if demo.get(source) is None or demo.get(target) is None:
                continue
            parts.append(fill(template, str(demo[source])) + " " + str(demo[target]).strip())
        parts.append(fill(template, str(inputs[source])))
        return [{"role": "user", "content": "\n\n".join(parts)}]

    def parse(self, signature, completion: str) -> dict:
        _, target = self.fields(signature)
        answer = completion.strip().split("\n", 1)[0].strip()
        try:
            value = parse_value(answer, signature.output_fields[target].annotation) if answer else None
        except ValueError as exc:  # pydantic's ValidationError is one: an answer outside the labels
            raise AdapterParseError(
                adapter_name=type(self).__name__, signature=signature, lm_response=completion, message=str(exc)
            ) from None
        if value is None:
            raise AdapterParseError(
                adapter_name=type(self).__name__, signature=signature, lm_response=completion, message="no answer"
            )
        return {target: value}


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
    initial = project.initial_prompt(name)
    signature = signature_for(initial.system_prompt or "", list(spec.labels))
    trainset, valset, testset = examples(train, output), examples(select, output), examples(test, output)
    references = [str(x) for x in test["ground_truth_output"]]

    if args.adapter == "completion":
        # The platform's own format (the dataset's output_prompt): the answer budget is the platform's.
        adapter = CompletionAdapter(initial.output_prompt)
        engine = LocalEngine(client, spec.max_output_tokens, completion=True)
    else:
        # The model must also write DSPy's output framing for any answer to be read.
        framing = client.count_tokens([f"[[ ## {output} ## ]]\n\n\n[[ ## completed ## ]]"])
        adapter = dspy.ChatAdapter()
        engine = LocalEngine(client, spec.max_output_tokens + (framing[0] if framing else 24), completion=False)
    dspy.configure(
        lm=dspy.LM(f"local/{client.model}", engine=engine, cache=False, temperature=0.0, num_retries=0),
        adapter=adapter,
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
        if args.predictions:
            args.predictions.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(
                {
                    "user_input": test["user_input"].tolist(),
                    "ground_truth_output": references,
                    "prediction": predictions,
                }
            ).to_csv(args.predictions / f"{name}.{method}.csv", index=False)
        found = suite.target_interval(predictions, references)
        low, high = found.low, found.high
        row = {
            "dataset": name,
            "method": method,
            "adapter": args.adapter,
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
        "| dataset | method | adapter | test score [95%] | unparsed | model calls (compile) | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        low, high = r["test 95%"]
        lines.append(
            f"| {r['dataset']} | {r['method']} | {r['adapter']} | {r['metric']} {r['test']:.3f} [{low:.3f}, {high:.3f}] "
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
    parser.add_argument(
        "--adapter",
        choices=ADAPTERS,
        default=ADAPTERS[0],
        help="completion: one plain prompt in the dataset's own format (CompletionAdapter); "
        "chat: DSPy's ChatAdapter, flattened into a User:/Assistant: transcript",
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
    parser.add_argument(
        "--predictions",
        type=Path,
        help="also write each method's test answers here, one CSV per dataset and method "
        "(DATASET.METHOD.csv: user_input, ground_truth_output, prediction), for a paired comparison "
        "(bench/adhoc/peer_paired.py)",
    )
    args = parser.parse_args(argv)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if "mipro" in args.methods and args.adapter == "completion":
        parser.error("mipro's instruction proposer has signatures the completion adapter cannot render: --adapter chat")
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
