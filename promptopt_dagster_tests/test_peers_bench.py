"""bench/peers.py end to end on the real model at a smoke size: every method gets a row, and its numbers hold together.

The table is what claims of "better than DSPy" are read from, so the smoke checks what would make
such a claim wrong: a missing method, a score outside [0, 1] or outside its own interval, or model
calls the engine counted differently from the client (a call DSPy made that the table hides).
It runs the default (completion) adapter; a model-free test checks that adapter shows the model
exactly the platform's own completion prompt.
DSPy comes with the `bench` extra, which CI installs: there a missing dspy fails; elsewhere it skips.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pandas as pd
import pytest

from promptopt_dagster.app.datasets import load_splits, sample_rows
from promptopt_dagster.app.settings import PROJECT_ROOT, get_settings
from promptopt_dagster.defs.resources import ProjectResource

METHODS = ["zero_shot", "labeled", "knn", "random_search"]


def load_peers():
    try:
        import dspy  # noqa: F401
    except ImportError:
        # CI installs the bench extra (.ci/run): there a missing dspy fails; elsewhere (the README's
        # `pip install -e ".[dev]"`) it skips, as the browser test does without chromium
        if os.environ.get("CI"):
            raise
        pytest.skip('DSPy is not installed: pip install -e ".[bench]" to run the peer bench')

    spec = importlib.util.spec_from_file_location("bench_peers", PROJECT_ROOT / "bench" / "peers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_peers"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_peers_smoke_on_sst2(capsys, tmp_path):
    peers = load_peers()
    rows = peers.main(
        [
            "sst2",
            "--rows",
            "20",
            "--train-rows",
            "40",
            "--dev-rows",
            "6",
            "--k",
            "4",
            "--bootstrapped",
            "2",
            "--candidates",
            "1",
            "--methods",
            ",".join(METHODS),
            "--predictions",
            str(tmp_path / "answers"),
        ]
    )
    printed = capsys.readouterr().out
    assert [r["method"] for r in rows] == METHODS
    assert all(r["adapter"] == "completion" for r in rows)
    for r in rows:
        low, high = r["test 95%"]
        assert 0.0 <= low <= r["test"] <= high <= 1.0, r
        assert r["test rows"] == 20
        assert r["model calls"] > 0, r
        assert r["model calls"] == r["client calls"], r  # the engine saw every call the model answered
        assert 0 <= r["unparsed"] <= 20
        assert f"| sst2 | {r['method']} | completion | accuracy {r['test']:.3f}" in printed
    # Compiling costs nothing but for the search; the test rows cost at least one call each.
    by_method = {r["method"]: r for r in rows}
    assert by_method["zero_shot"]["compile calls"] == by_method["labeled"]["compile calls"] == 0
    assert by_method["random_search"]["compile calls"] > 0
    assert all(r["model calls"] - r["compile calls"] >= 20 for r in rows)
    # The completion adapter has no fallback: one call per test row, whatever the model answers.
    assert all(r["model calls"] - r["compile calls"] == 20 for r in rows)
    # The saved answers are the test rows the table scored: the same rows, and the same score from them.
    settings = get_settings()
    project = ProjectResource(data_dir=str(settings.data_dir), prompts_dir=str(settings.prompts_dir))
    test = sample_rows(load_splits(project.spec("sst2"), settings.data_dir).test, 20, 0)
    for r in rows:
        saved = pd.read_csv(tmp_path / "answers" / f"sst2.{r['method']}.csv", keep_default_na=False, dtype=str)
        assert saved["user_input"].tolist() == test["user_input"].tolist()
        assert saved["ground_truth_output"].tolist() == test["ground_truth_output"].astype(str).tolist()
        rescored = project.suite("sst2").score(saved["prediction"].tolist(), saved["ground_truth_output"].tolist())
        assert rescored.value == pytest.approx(r["test"]), r


def test_peers_uses_the_reports_test_rows():
    """The test rows are sample_rows(test, test_size, seed) with the optimization defaults, as the report's."""
    peers = load_peers()
    args = peers.parse_args(["sst2"])
    assert args.rows == 500 and args.methods == METHODS and args.adapter == "completion"
    assert peers.parse_args(["sst2", "--adapter", "chat", "--methods", "mipro"]).adapter == "chat"
    with pytest.raises(SystemExit):
        peers.parse_args(["sst2", "--methods", "zero_shot,nonsense"])
    with pytest.raises(SystemExit):  # MIPROv2's proposer signatures are not one input -> one output
        peers.parse_args(["sst2", "--methods", "mipro"])


class _Recorder:
    """A client that answers every request with one text and keeps the requests."""

    model = "recorder"

    def __init__(self, text: str) -> None:
        from promptopt_dagster.llm.base import LLMResponse

        self.asked, self.answer = [], LLMResponse(text=text, prompt_tokens=1, completion_tokens=1)

    def generate(self, requests):
        self.asked.extend(requests)
        return [self.answer for _ in requests]


def test_completion_adapter_sends_the_platforms_prompt():
    """Labeled and bootstrapped demos render as PromptVersion.render_completion renders them, the engine
    sends that text raw and stops at the line's end; an answer outside the labels is an empty one."""
    import dspy

    from promptopt_dagster.core.prompts import Demo, PromptVersion

    peers = load_peers()
    instruction, template = (
        "Classify the sentiment of the movie review as positive or negative.",
        "Review: {user_input}\nSentiment:",
    )
    client = _Recorder(" positive")
    engine = peers.LocalEngine(client, 4, completion=True)
    lm = dspy.LM("local/recorder", engine=engine, cache=False, temperature=0.0, num_retries=0)
    program = peers.Answer(peers.signature_for(instruction, ["positive", "negative"]))
    program.predict.demos = [
        dspy.Example(text="dull and long", label="negative").with_inputs("text"),
        dspy.Example(augmented=True, text="a gorgeous film", label="positive"),  # as BootstrapFewShot keeps a trace
        dspy.Example(text="no label here").with_inputs("text"),  # nothing to show: left out
    ]
    with dspy.context(lm=lm, adapter=peers.CompletionAdapter(template)):
        assert program(text="what a ride").label == "positive"
        client.answer.text = " Positive!"
        assert program(text="what a ride").label == ""  # unparsed: scored as wrong, no second call

    platform = PromptVersion(
        system_prompt=instruction,
        output_prompt=template,
        demos=[
            Demo(user_input="dull and long", ground_truth_output="negative"),
            Demo(user_input="a gorgeous film", ground_truth_output="positive"),
        ],
    )
    assert [r.prompt for r in client.asked] == [platform.render_completion("what a ride")] * 2
    assert all(r.stop == ("\n",) and r.max_tokens == 4 for r in client.asked)
    assert engine.calls == 2
    assert peers.CompletionAdapter().parse(program.predict.signature, " negative \nReview: x") == {"label": "negative"}
