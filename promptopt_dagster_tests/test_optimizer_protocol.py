"""The optimizer protocol: names, capabilities and options come from the registry, the writer-model rule
runs in Optimizer.propose for every optimizer, and every refusal is a Proposal without a prompt."""

from __future__ import annotations

import subprocess
import sys
import typing

import pandas as pd
import pytest
from pydantic import Field

from promptopt_dagster.app.optimizations import OPTIMIZERS, OptimizationSpec
from promptopt_dagster.core.prompts import PromptVersion
from promptopt_dagster.llm.fake import FakeLLM
from promptopt_dagster.optimizers import registry
from promptopt_dagster.optimizers.base import Evaluation, Optimizer, OptimizerContext, OptimizerOptions, Proposal
from promptopt_dagster.optimizers.capabilities import writer_model_problem

SELECT = pd.DataFrame(
    {"row_id": [1, 2], "user_input": ["a fine film", "a dull film"], "ground_truth_output": ["positive", "negative"]}
)


def context(**changes) -> OptimizerContext:
    fields = {
        "prompt": PromptVersion(system_prompt="Classify.", output_prompt="Review: {user_input}\nSentiment:"),
        "baseline": Evaluation(SELECT.assign(prediction="positive"), [1.0, 0.0], 0.5),
        "metric": "accuracy",
        "train": SELECT.head(0),
        "select_rows": SELECT,
        "labels": ["positive", "negative"],
        "iteration": 1,
    }
    return OptimizerContext(**{**fields, **changes})


def never(prompt, rows):
    raise AssertionError("a refused optimizer must not evaluate anything")


def test_the_names_are_the_registrys_and_each_class_registers_its_own():
    classes = registry.optimizer_classes()
    assert OPTIMIZERS == registry.optimizer_names() == tuple(classes)
    assert set(OPTIMIZERS) == {"fewshot", "reflective", "gepa", "metaprompt", "vertex"}
    assert all(cls.name == name for name, cls in classes.items())
    assert typing.get_args(OptimizationSpec.model_fields["optimizer"].annotation) == OPTIMIZERS
    with pytest.raises(ValueError, match="Unknown optimizer 'mipro'; choose one of fewshot, gepa"):
        registry.get_optimizer("mipro")


def test_the_protocol_module_imports_no_optimizer():
    code = (
        "import sys, promptopt_dagster.optimizers.base as b; "
        "print(sorted(m for m in sys.modules if m.startswith('promptopt_dagster.optimizers.')))"
    )
    loaded = {m.rsplit(".", 1)[1] for m in eval(subprocess.check_output([sys.executable, "-c", code], text=True))}
    assert "base" in loaded and not loaded & set(registry.BUILTIN_MODULES)  # the registry imports them on demand
    assert registry.optimizer_class("gepa").__module__ == "promptopt_dagster.optimizers.gepa_search"


def test_a_name_is_registered_once(monkeypatch):
    monkeypatch.setattr(registry, "_CLASSES", dict(registry.optimizer_classes()))

    class Echo(Optimizer):
        name = "echo"

        class Options(OptimizerOptions):
            times: int = Field(1, ge=1)

        def _propose(self, context, evaluate, writer):
            return Proposal(prompt=context.prompt.child(), state=(context.state or b"") + b"x")

    assert registry.register(Echo) is Echo and registry.optimizer_names()[-1] == "echo"
    assert registry.validate_options("echo", {"times": 2}).times == 2

    class Other(Echo):
        pass

    with pytest.raises(ValueError, match="'echo' is taken by"):
        registry.register(Other)
    with pytest.raises(TypeError, match="not an Optimizer subclass"):
        registry.register(dict)
    # an optimizer with state: what it returns is what the next iteration gets
    first = registry.get_optimizer("echo").propose(context(), never)
    assert (
        first.state == b"x" and registry.get_optimizer("echo").propose(context(state=first.state), never).state == b"xx"
    )


REFUSED = [
    (name, backend)
    for name in registry.optimizer_names()
    for backend in (None, "local", "vertex_prompt_optimizer", "openai")
    if writer_model_problem(name, backend) is not None
]


def test_every_optimizer_that_writes_prompts_has_refusals():
    writers = {n for n, cls in registry.optimizer_classes().items() if cls.capabilities.writes_prompts}
    assert writers == {"reflective", "gepa", "metaprompt", "vertex"} == {name for name, _ in REFUSED}
    assert ("vertex", "openai") in REFUSED and ("gepa", "openai") not in REFUSED


@pytest.mark.parametrize("name, backend", REFUSED)
def test_the_writer_model_rule_refuses_before_any_optimizer_code_runs(name, backend):
    problem = writer_model_problem(name, backend)
    writer = None
    if backend is not None:
        writer = FakeLLM(lambda request: "never asked", mode="chat")
        writer.backend = backend
    proposal = registry.get_optimizer(name).propose(context(state=b"earlier search"), never, writer)
    assert proposal == Proposal(prompt=None, rejected_reason=problem, state=b"earlier search")
    assert writer is None or not writer.requests


def test_fewshot_needs_no_writer_and_the_rule_names_it():
    assert not registry.optimizer_class("fewshot").capabilities.writes_prompts
    assert writer_model_problem("fewshot", None) is None
    assert writer_model_problem("gepa", None).endswith("or use --optimizer fewshot.")


def test_every_optimizers_options_are_a_model_with_working_defaults():
    for name, cls in registry.optimizer_classes().items():
        assert issubclass(cls.Options, OptimizerOptions)
        assert cls().options == registry.validate_options(name, {}) == cls.Options()
    with pytest.raises(ValueError, match=r"unknown gepa option\(s\) 'minibatch'; gepa takes components, max_tokens"):
        registry.validate_options("gepa", {"minibatch": 3})
    with pytest.raises(ValueError, match=r"vertex refuses options .*examples: should be greater than or equal to 1"):
        registry.validate_options("vertex", {"examples": 0})
    with pytest.raises(ValueError, match="num_candidates"):
        registry.get_optimizer("fewshot", num_candidates=0)  # the constructor validates too


def test_options_that_follow_the_optimizations_settings():
    spec = OptimizationSpec(name="a", dataset="sst2", confidence=0.8)
    assert spec.optimizer_options() == {"race_confidence": 0.8}
    assert spec.model_copy(update={"options": {"race_confidence": 0.7}}).optimizer_options() == {"race_confidence": 0.7}
    gepa = OptimizationSpec(name="a", dataset="sst2", optimizer="gepa", options={"minibatch_size": 2})
    assert gepa.optimizer_options() == {"minibatch_size": 2}
