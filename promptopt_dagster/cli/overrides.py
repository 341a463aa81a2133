"""The `promptopt optimize` flags that override an optimization's settings, generated from OptimizationSpec.

Each flag's type check, choices, help and shown default are read from the spec's field (its annotation,
its ge/gt/le/lt constraints, its description and its default), so a rule or a default changed in the
model changes the flag with it, and none is typed twice. Only which settings are flags is listed here.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from promptopt_dagster.app.optimizations import OptimizationSpec

#: the settings that are flags, as paths into an optimization entry (optimizations.yaml's layout); the
#: flag is the last part with dashes (("stop", "max_iterations") -> --max-iterations), in --help's order
FLAGS: tuple[tuple[str, ...], ...] = (
    ("stop", "max_iterations"),
    ("eval_size",),
    ("select_size",),
    ("spare_size",),
    ("confidence",),
    ("test_size",),
    ("optimizer",),
    ("stop", "target_score"),
    ("target_metric",),
    ("stop", "patience"),
    ("seed",),
    ("budget", "max_requests"),
    ("budget", "max_tokens"),
    ("budget", "max_cost_usd"),
    ("budget", "max_metric_calls"),
    ("objective", "max_tokens_per_row"),
    ("objective", "max_seconds_per_row"),
    ("objective", "within_points"),
    ("max_failed_fraction",),
)


def flag_name(path: tuple[str, ...]) -> str:
    return "--" + path[-1].replace("_", "-")


def spec_field(path: tuple[str, ...], model: type[BaseModel] = OptimizationSpec) -> FieldInfo:
    """The field a path names, through nested settings models (`stop`, `budget`)."""
    for key in path[:-1]:
        model = _plain(model.model_fields[key].annotation)
    return model.model_fields[path[-1]]


def shown_default(field: FieldInfo) -> str:
    """The default as --help shows it; a None default says what it stands for (the field's `default_text`)."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if field.default is None and "default_text" in extra:
        return str(extra["default_text"])
    return _number_text(field.default) if isinstance(field.default, float) else str(field.default)


def flag_help(field: FieldInfo) -> str:
    return f"{field.description} (default: {shown_default(field)})"


def number(
    kind: type, ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None
):
    """An argparse type for an int or float within bounds (pydantic's ge/gt/le/lt), whose refusal is one
    line naming the rule, e.g. "must be 0 or more, got -5", "must be between 0 and 1, got 1.5"."""
    rule = _rule(ge, gt, le, lt)

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}"
            ) from None
        # written as `not (within)`, so a float NaN, which compares false with everything, is refused too
        if not (
            (ge is None or value >= ge)
            and (gt is None or value > gt)
            and (le is None or value <= le)
            and (lt is None or value < lt)
        ):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value if kind is int else text}")
        return value

    return parse


def add_override_flags(parser: argparse.ArgumentParser, model: type[BaseModel] = OptimizationSpec) -> None:
    """One flag per FLAGS path. Its argparse default is None, meaning "the optimization's own value"; the
    help shows the model's default, which is what a dataset's default optimization uses."""
    for path in FLAGS:
        field = spec_field(path, model)
        parser.add_argument(flag_name(path), dest=path[-1], help=flag_help(field), **_argparse_type(field))


def apply_overrides(args: argparse.Namespace, entry: dict) -> dict:
    """`entry` (an optimization's model_dump) with every flag given on the command line written in."""
    for path in FLAGS:
        value = getattr(args, path[-1])
        if value is not None:
            target = entry
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value
    return entry


def _argparse_type(field: FieldInfo) -> dict[str, Any]:
    kind = _plain(field.annotation)
    if typing.get_origin(kind) is Literal:
        return {"choices": list(typing.get_args(kind))}
    if kind is str:
        return {}
    if kind in (int, float):
        bounds = {
            name: getattr(rule, name)
            for rule in field.metadata
            for name in ("ge", "gt", "le", "lt")
            if hasattr(rule, name)
        }
        return {"type": number(kind, **bounds)}
    raise TypeError(f"no command-line form for a setting of type {field.annotation}")  # a new flag's type: add one


def _plain(annotation: Any) -> Any:
    """`X | None` -> X: None is what an absent flag already means."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _number_text(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _rule(ge, gt, le, lt) -> str:
    """The bounds as the refusal states them: today's wording for the usual ones ("0 or more", "between 0 and 1")."""
    if ge is not None and le is not None:
        return f"between {_number_text(ge)} and {_number_text(le)}"
    low = (
        f"at least {_number_text(ge)}"
        if ge is not None
        else f"more than {_number_text(gt)}"
        if gt is not None
        else None
    )
    high = (
        f"at most {_number_text(le)}" if le is not None else f"less than {_number_text(lt)}" if lt is not None else None
    )
    if ge is not None and high is None:
        return f"{_number_text(ge)} or more"
    if le is not None and low is None:
        return f"{_number_text(le)} or less"
    return " and ".join(part for part in (low, high) if part) or "a number"
