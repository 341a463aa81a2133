"""Optimizers by name: each optimizer class registers itself with `@register`, and everything that
needs the names (optimizations.yaml's `optimizer:`, `--optimizer`'s choices, the writer-model rule's
advice) or an optimizer's options reads them here.

The built-in optimizers live in the modules of BUILTIN_MODULES, imported on the first lookup (they
import this module for `register`, so it cannot import them first). Their order is the order names
are listed in, e.g. in an error message.
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import ValidationError

from promptopt_dagster.core.yaml_input import validation_message
from promptopt_dagster.optimizers.base import Optimizer, OptimizerOptions

#: modules of promptopt_dagster.optimizers that hold the built-in optimizers, in the order they are listed
BUILTIN_MODULES = ("fewshot", "reflective", "gepa_search", "metaprompt", "vertex_prompt")

_CLASSES: dict[str, type[Optimizer]] = {}


def register(cls: type[Optimizer]) -> type[Optimizer]:
    """Class decorator: makes `cls` the optimizer of its `name`. A name is registered once."""
    if not (isinstance(cls, type) and issubclass(cls, Optimizer)) or not cls.name or cls.name == Optimizer.name:
        raise TypeError(f"{cls!r} is not an Optimizer subclass with its own `name`")
    if not (isinstance(cls.Options, type) and issubclass(cls.Options, OptimizerOptions)):
        raise TypeError(f"{cls.__name__}.Options must subclass OptimizerOptions")
    known = _CLASSES.get(cls.name)
    if known is not None and known is not cls:
        raise ValueError(f"optimizer name {cls.name!r} is taken by {known.__module__}.{known.__qualname__}")
    _CLASSES[cls.name] = cls
    return cls


def optimizer_classes() -> dict[str, type[Optimizer]]:
    """Every optimizer by the name optimizations.yaml and `--optimizer` use, built-ins first."""
    for module in BUILTIN_MODULES:
        importlib.import_module(f"promptopt_dagster.optimizers.{module}")
    return dict(_CLASSES)


def optimizer_names() -> tuple[str, ...]:
    return tuple(optimizer_classes())


def optimizer_class(name: str) -> type[Optimizer]:
    known = optimizer_classes()
    if name not in known:
        raise ValueError(f"Unknown optimizer {name!r}; choose one of {', '.join(sorted(known))}.")
    return known[name]


def get_optimizer(name: str, **options: Any) -> Optimizer:
    return optimizer_class(name)(**options)


def validate_options(name: str, options: dict[str, Any]) -> OptimizerOptions:
    """The optimizer's options, validated by its Options model; a ValueError says what is wrong in one line."""
    model = optimizer_class(name).Options
    unknown = sorted(set(options) - set(model.model_fields))
    if unknown:
        raise ValueError(
            f"unknown {name} option(s) {', '.join(map(repr, unknown))}; {name} takes {', '.join(sorted(model.model_fields))}"
        )
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        raise ValueError(f"{name} refuses options {options}: {validation_message(exc, (), model)}") from None
