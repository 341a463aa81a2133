"""Settings declared once: the stop rules, the budget and the optimizer names live in one model each, and
`promptopt optimize`'s override flags (type check, help, shown default) are generated from those fields."""

from __future__ import annotations

import argparse
import typing

import pytest
from pydantic import Field

from promptopt_dagster.app.optimizations import OPTIMIZERS, OptimizationSpec
from promptopt_dagster.cli.dispatch import promptopt_parser
from promptopt_dagster.cli.overrides import FLAGS, add_override_flags, flag_name, number, shown_default, spec_field
from promptopt_dagster.core.decisions import Budget, StopPolicy, StopRules


def _optimize_flags() -> dict[str, argparse.Action]:
    sub = next(a for a in promptopt_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.option_strings[0]: a for a in sub.choices["optimize"]._actions if a.option_strings}


def test_every_override_flag_shows_its_fields_description_and_default():
    actions = _optimize_flags()
    for path in FLAGS:
        field = spec_field(path)
        help_text = actions[flag_name(path)].help
        assert field.description and field.description in help_text, path
        assert help_text.endswith(f" (default: {shown_default(field)})"), (path, help_text)
        assert actions[flag_name(path)].default is None  # absent: the optimization's own value


def test_the_shown_defaults_are_the_models_defaults():
    """Spot checks of the generated text against values a user knows, including a None default's meaning."""
    actions = _optimize_flags()
    assert actions["--max-iterations"].help == "stop after this many iterations (default: 5)"
    assert actions["--max-failed-fraction"].help.endswith("(default: 0.02)")
    assert actions["--max-cost-usd"].help.endswith("(0: no cap) (default: 0)")
    assert actions["--target-metric"].help.endswith("(default: target_metric in data/manifest.yaml)")
    assert actions["--optimizer"].help.endswith("(default: fewshot)")
    assert StopRules().max_iterations == 5 and OptimizationSpec.model_fields["max_failed_fraction"].default == 0.02


def test_a_default_changed_in_the_model_changes_the_help():
    class Rules(StopRules):
        patience: int = Field(7, ge=3, description="give up after this many flat iterations")

    class Changed(OptimizationSpec):
        stop: Rules = Field(default_factory=Rules)
        eval_size: int = Field(321, ge=0, description="rows that decide")

    parser = argparse.ArgumentParser()
    add_override_flags(parser, Changed)
    helps = {a.option_strings[0]: a for a in parser._actions if a.option_strings}
    assert helps["--patience"].help == "give up after this many flat iterations (default: 7)"
    assert helps["--eval-size"].help == "rows that decide (default: 321)"
    with pytest.raises(argparse.ArgumentTypeError, match="must be 3 or more, got 2"):
        helps["--patience"].type("2")


def test_flag_types_come_from_the_field_constraints():
    actions = _optimize_flags()
    assert actions["--eval-size"].type("7") == 7 and actions["--confidence"].type("0.95") == 0.95
    for flag, text, message in [
        ("--eval-size", "-5", "must be 0 or more, got -5"),
        ("--max-iterations", "0", "must be 1 or more, got 0"),
        ("--max-failed-fraction", "1.5", "must be between 0 and 1, got 1.5"),
        ("--confidence", "0.2", "must be between 0.5 and 0.999, got 0.2"),
        ("--target-score", "x", "expected a number, got 'x'"),
        ("--seed", "1.5", "expected a whole number, got '1.5'"),
        ("--max-cost-usd", "nan", "must be 0 or more, got nan"),
    ]:
        with pytest.raises(argparse.ArgumentTypeError) as info:
            actions[flag].type(text)
        assert str(info.value) == message, flag
    assert actions["--seed"].type("-3") == -3  # no constraint on the field, none on the flag


def test_number_states_every_kind_of_bound():
    for bounds, text, message in [
        ({"gt": 0.0}, "0", "must be more than 0, got 0"),
        ({"le": 10}, "11", "must be 10 or less, got 11"),
        ({"gt": 0.0, "lt": 1.0}, "1", "must be more than 0 and less than 1, got 1"),
    ]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            number(float if "gt" in bounds else int, **bounds)(text)


def test_optimizer_names_are_written_once():
    assert typing.get_args(OptimizationSpec.model_fields["optimizer"].annotation) == OPTIMIZERS
    assert _optimize_flags()["--optimizer"].choices == list(OPTIMIZERS)


def test_the_stop_policy_is_the_specs_rules_confidence_and_budget():
    spec = OptimizationSpec(name="a", dataset="sst2", stop={"patience": 4}, budget={"max_tokens": 9}, confidence=0.8)
    policy = spec.stop_policy()
    assert isinstance(policy, StopRules) and policy.patience == 4 and policy.confidence == 0.8
    assert policy.budget == Budget(max_tokens=9)
    # no default retyped: a bare policy has the spec's defaults
    bare, default = StopPolicy(), OptimizationSpec(name="a", dataset="sst2")
    assert bare.model_dump() == {
        **default.stop.model_dump(),
        "confidence": default.confidence,
        "budget": default.budget.model_dump(),
    }
