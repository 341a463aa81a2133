"""The reference pages of docs/reference/, generated from the models' fields.

Every key of `optimizations.yaml` and of the dataset manifest, and every PROMPTOPT_* setting, is a pydantic
field; its type, its bounds (ge/gt/le/lt), its choices (a Literal) and its default are read from the field,
and its description is the field's own `description=`. The text lives on the field, so a key documented
here cannot drift from the key the loader takes; a field without a description is refused here, so a new
key cannot go undocumented. `test_docs_reference.py` keeps the checked-in pages equal to what this writes.

    python -m promptopt_dagster.app.reference           # rewrite docs/reference/*.md
    python -m promptopt_dagster.app.reference --check   # exit 1 if a page is stale
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from promptopt_dagster.app.datasets import MANIFEST_KEYS, DatasetSpec
from promptopt_dagster.app.optimizations import OptimizationSpec
from promptopt_dagster.app.settings import PROJECT_ROOT, Settings
from promptopt_dagster.optimizers.registry import optimizer_classes

REFERENCE_DIR = PROJECT_ROOT / "docs" / "reference"
COMMAND = "python -m promptopt_dagster.app.reference"

#: The manifest's top level is not a model (load_manifest reads it key by key); what each key holds.
MANIFEST_TOP_LEVEL = {
    "datasets": "one entry per dataset, by name (the keys below); a name becomes a Dagster partition key",
    "scorers": "your own scorers, by name: a dotted path (`package.module:function`) to a function or an "
    "`evaluate.Metric` subclass, or the path of an `evaluate` module file relative to the manifest's folder; "
    "optional",
}


@dataclass(frozen=True)
class Row:
    """One line of a reference table: the key(s), and what the field says about itself."""

    keys: tuple[str, ...]
    type: str
    default: str
    description: str


@dataclass(frozen=True)
class Table:
    """A block of fields shared by several keys (every model of an optimization) gets its own table."""

    title: str
    rows: list[Row]


# ---- one field, in words


def plain(annotation: Any) -> Any:
    """`X | None` -> X: None is what a default of none already says."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _model(annotation: Any) -> type[BaseModel] | None:
    kind = plain(annotation)
    return kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None


def _item_model(annotation: Any) -> type[BaseModel] | None:
    """The model of a list of models (a dataset's `scorers:`)."""
    kind = plain(annotation)
    if typing.get_origin(kind) is list:
        return _model(typing.get_args(kind)[0])
    return None


_NAMES = {str: ("string", "strings"), int: ("int", "ints"), float: ("float", "floats"), bool: ("boolean", "booleans")}
_NAMES[Path] = ("path", "paths")


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


_BOUNDS = (annotated_types.Interval, annotated_types.Ge, annotated_types.Gt, annotated_types.Le, annotated_types.Lt)


def bounds_text(metadata: list[Any]) -> str:
    """pydantic's ge/gt/le/lt as a reader writes them: `≥ 1`, `in [0, 1]`, `in (0, 1]`, `< 10`."""
    found: dict[str, float] = {}
    sizes = []
    for rule in metadata:
        if isinstance(rule, annotated_types.MinLen):
            sizes.append(f"with at least {rule.min_length} item{'s' if rule.min_length != 1 else ''}")
        elif isinstance(rule, _BOUNDS):
            found.update({k: getattr(rule, k) for k in ("ge", "gt", "le", "lt") if getattr(rule, k, None) is not None})
        else:  # a rule the reference cannot put in words would be left out silently: say it instead
            raise TypeError(f"the reference has no words for the constraint {rule!r}; teach bounds_text")
    low = ("[", found["ge"]) if "ge" in found else ("(", found["gt"]) if "gt" in found else None
    high = ("]", found["le"]) if "le" in found else (")", found["lt"]) if "lt" in found else None
    text = ""
    if low and high:
        text = f"in {low[0]}{_number(low[1])}, {_number(high[1])}{high[0]}"
    elif low:
        text = f"{'≥' if low[0] == '[' else '>'} {_number(low[1])}"
    elif high:
        text = f"{'≤' if high[0] == ']' else '<'} {_number(high[1])}"
    return ", ".join(part for part in (text, *sizes) if part)


def type_text(annotation: Any, metadata: list[Any] = ()) -> str:
    """A field's type as the reader writes it: `int ≥ 1`, `one of local, gcs`, `list of strings`, `mapping`."""
    kind = plain(annotation)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    bounds = bounds_text(list(metadata))
    if origin is Literal:
        text = "one of " + ", ".join(str(a) for a in args)
    elif kind in _NAMES:
        text = _NAMES[kind][0]
    elif kind is Any:
        text = "any"
    elif _model(kind) is not None:
        text = "mapping (keys below)"
    elif origin in (list, tuple) and (origin is list or (len(args) == 2 and args[1] is Ellipsis)):
        item = args[0] if args else Any
        if _model(item) is not None:
            text = "list of mappings (keys below)"
        elif item in _NAMES:
            text = f"list of {_NAMES[item][1]}"
        else:
            text = "list"
    elif origin is dict:
        key, value = args if args else (Any, Any)
        text = "mapping" if value is Any else f"mapping of {type_text(key)} to {type_text(value)}"
    else:
        raise TypeError(f"the reference has no words for the type {annotation!r}; teach type_text")
    return f"{text} {bounds}" if bounds else text


def _value_text(value: Any) -> str:
    if isinstance(value, Path):
        value = value.expanduser()
        if value.is_relative_to(PROJECT_ROOT):  # never the path of the machine that generated the page
            return f"`<repository>/{value.relative_to(PROJECT_ROOT).as_posix()}`"
        if value.is_relative_to(Path.home()):
            return f"`~/{value.relative_to(Path.home()).as_posix()}`"
        return f"`{value}`"
    if value is None:
        return "none"
    if isinstance(value, BaseModel):
        return "its keys' defaults"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (int, float)):
        return f"`{_number(value)}`"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    if isinstance(value, (list, tuple, dict)):
        return f"`{json.dumps(value, ensure_ascii=False)}`"
    raise TypeError(f"the reference has no words for the default {value!r}; teach _value_text")


def default_text(field: FieldInfo) -> str:
    """The default as the reader meets it; a default whose value would mislead (None standing for "the
    manifest's", the machine's core count) is said in the words of the field's `default_text`."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "default_text" in extra:
        return str(extra["default_text"])
    if field.is_required():
        return "required"
    return _value_text(field.get_default(call_default_factory=True, validated_data={}))


def description_text(model: type[BaseModel], name: str, field: FieldInfo) -> str:
    if not (field.description or "").strip():
        raise ValueError(
            f"{model.__name__}.{name} has no description: add Field(description=...) to it, then run `{COMMAND}`"
        )
    return " ".join(field.description.split())


# ---- a model, as tables


def model_tables(
    model: type[BaseModel], key: typing.Callable[[tuple[str, ...]], str], block: str = "mapping"
) -> list[Table]:
    """The model's fields, nested models' fields after their block's row. A model that several fields share
    (an optimization's task_model, source_model, ...) is one table after the first, whose key column names
    every path, so its fields are said once."""
    main: list[Row] = []
    shared: list[Table] = []

    def walk(model: type[BaseModel], path: tuple[str, ...], out: list[Row]) -> None:
        groups: dict[type[BaseModel], list[str]] = {}
        for name, field in model.model_fields.items():
            sub = _model(field.annotation)
            if sub is not None:
                groups.setdefault(sub, []).append(name)
        for name, field in model.model_fields.items():
            sub, item = _model(field.annotation), _item_model(field.annotation)
            row_type = type_text(field.annotation, field.metadata)
            if sub is not None and len(groups[sub]) > 1:
                row_type = f"{block} (keys in the shared table below)"
            elif sub is not None or item is not None:
                row_type = row_type.replace("mapping", block, 1)
            out.append(Row((key((*path, name)),), row_type, default_text(field), description_text(model, name, field)))
            if item is not None:
                walk(item, (*path, f"{name}[]"), out)
            elif sub is not None and len(groups[sub]) == 1:
                walk(sub, (*path, name), out)
        for sub, names in groups.items():
            if len(names) > 1:
                per_name = []
                for name in names:
                    rows: list[Row] = []
                    walk(sub, (*path, name), rows)
                    per_name.append(rows)
                merged = [
                    Row(tuple(k for r in same for k in r.keys), same[0].type, same[0].default, same[0].description)
                    for same in zip(*per_name)
                ]
                shared.append(Table(", ".join(f"`{key((*path, n))}`" for n in names), merged))

    walk(model, (), main)
    return [Table("", main), *shared]


def yaml_key(path: tuple[str, ...]) -> str:
    return ".".join(path).replace(".[]", "[]")


def env_key(path: tuple[str, ...]) -> str:
    config = Settings.model_config
    return config["env_prefix"] + config["env_nested_delimiter"].join(p.upper() for p in path)


def render_table(rows: list[Row], key_header: str = "key") -> str:
    lines = [f"| {key_header} | type | default | description |", "|---|---|---|---|"]
    for row in rows:
        keys = ", ".join(f"`{k}`" for k in row.keys)
        lines.append("| " + " | ".join(_cell(c) for c in (keys, row.type, row.default, row.description)) + " |")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _tables_text(tables: list[Table], key_header: str, shared_intro: str) -> str:
    parts = [render_table(tables[0].rows, key_header)]
    for table in tables[1:]:
        parts += [f"## {table.title}", shared_intro, render_table(table.rows, key_header)]
    return "\n\n".join(parts)


def _header(title: str, source: str) -> str:
    return (
        f"<!-- Generated by `{COMMAND}` from the models' fields; do not edit: change the field, then rerun it. -->\n"
        f"# {title}\n\n"
        f"_Generated from {source} by `{COMMAND}`; `test_docs_reference.py` fails when this page and the fields "
        "differ. To change a key's text, edit its `Field(description=...)` and regenerate._"
    )


# ---- the pages


def optimizer_options_rows() -> list[tuple[str, str, str, str, str]]:
    """(optimizer, option, type, default, description) for every option of every registered optimizer, from
    its Options model. An option the entry fills in (fewshot's race_confidence follows `confidence`) says
    which key it follows."""
    rows = []
    for name, cls in optimizer_classes().items():
        for option, field in cls.Options.model_fields.items():
            follows = cls.defaults_from_optimization.get(option)
            shown = f"the entry's `{follows}`" if follows else default_text(field)
            rows.append(
                (
                    f"`{name}`",
                    f"`{option}`",
                    type_text(field.annotation, field.metadata),
                    shown,
                    description_text(cls.Options, option, field),
                )
            )
    return rows


def optimizations_page() -> str:
    tables = model_tables(OptimizationSpec, yaml_key)
    options = ["| optimizer | option | type | default | description |", "|---|---|---|---|---|"]
    options += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in optimizer_options_rows()]
    return "\n\n".join(
        [
            _header(
                "`optimizations.yaml` reference",
                "`OptimizationSpec` (`app/optimizations.py`), its stop rules and budget (`core/decisions.py`) "
                "and `ModelSpec` (`llm/model_settings.py`)",
            ),
            "`data/optimizations.yaml` holds one mapping, `optimizations:`, of names to entries. The keys of an "
            "entry are below; a dotted key is a nested mapping (`stop.patience: 1` is written `stop: {patience: "
            "1}`). An unknown key, or a value outside its type, is refused when the file loads, naming the key. "
            "`promptopt optimize`'s flags override the keys they are named after for one run. How optimizations, "
            "generations and fingerprints work: [Configuration](../configuration.md).",
            _tables_text(
                tables,
                "key",
                "Each of these keys takes a model block with the keys below. An API key is never among them: it is "
                "read from the environment variable `api_key_env` names.",
            ),
            "## `options`, by optimizer",
            "Each optimizer's options, from its `Options` model (`optimizers/`), with their types and defaults; "
            "an option another optimizer takes is refused. What each does: [Optimizers](../optimizers.md).",
            "\n".join(options),
        ]
    )


def manifest_page() -> str:
    if tuple(MANIFEST_TOP_LEVEL) != tuple(MANIFEST_KEYS):
        raise ValueError(f"MANIFEST_TOP_LEVEL must describe the manifest's keys {MANIFEST_KEYS}, in that order")
    top = ["| key | holds |", "|---|---|"]
    top += [f"| `{name}.NAME` | {_cell(text)} |" for name, text in MANIFEST_TOP_LEVEL.items()]
    return "\n\n".join(
        [
            _header(
                "Dataset manifest reference (`data/manifest.yaml`)",
                "`DatasetSpec` (`app/datasets.py`) and `ScorerSpec` (`scoring/suite.py`)",
            ),
            "\n".join(top),
            "## A dataset's entry (`datasets.NAME`)",
            "A dotted key is a nested mapping; `scorers[].weight` is the `weight` of an item of the `scorers` "
            "list. An unknown key, or a value outside its type, is refused when the manifest loads, naming the "
            "key. Every key but `description` is fingerprinted: editing it opens a new generation of every "
            "optimization of the dataset. How to add a dataset and how scoring works: "
            "[Datasets and scoring](../datasets-and-scoring.md).",
            _tables_text(model_tables(DatasetSpec, yaml_key), "key", ""),
        ]
    )


def settings_page() -> str:
    config = Settings.model_config
    return "\n\n".join(
        [
            _header(
                "Settings reference (`PROMPTOPT_*`)",
                "`Settings` (`app/settings.py`) and `ModelSettings` (`llm/model_settings.py`)",
            ),
            f"Each setting is an environment variable or a line of `{config['env_file']}` in the folder the command "
            "runs in (the environment wins). A `PROMPTOPT_*` line of `.env` that names no setting is refused, with "
            "the closest name. `<repository>` is the checkout the package runs from; directory settings are taken "
            "relative to the folder the command starts in, and made absolute. More: "
            "[Configuration](../configuration.md).",
            _tables_text(
                model_tables(Settings, env_key, block="model settings"),
                "variable",
                "Each model is set on its own, with the same knobs. An API key is never a setting: it is read from "
                "the environment variable `…__API_KEY_ENV` names.",
            ),
        ]
    )


PAGES: dict[str, typing.Callable[[], str]] = {
    "optimizations-yaml.md": optimizations_page,
    "manifest.md": manifest_page,
    "settings.md": settings_page,
}


def generate() -> dict[str, str]:
    """Every page's text, by file name under docs/reference/."""
    return {name: page().rstrip("\n") + "\n" for name, page in PAGES.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page differs")
    args = parser.parse_args(argv)
    stale = []
    for name, text in generate().items():
        path = REFERENCE_DIR / name
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'} {path.relative_to(PROJECT_ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
