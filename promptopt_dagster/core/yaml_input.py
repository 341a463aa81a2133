"""User YAML, read with bounds, and validation errors, said in one line.

A config file is input like any other: a billion-laughs alias chain or a hundred thousand nested
brackets must not hang the CLI or fill the terminal with a RecursionError. Files are read up to a size;
composing stops at a nesting depth, before Python's recursion limit is near; and the values aliases
expand to are counted while composing (PyYAML shares an alias's node, so composing is cheap, but the
validation that follows walks every copy). Every refusal is one line: the file, what is wrong, the fix.

The second half is the one formatter of pydantic errors for data/manifest.yaml and
data/optimizations.yaml: `FILE: datasets.sst2.lables: not a known key; did you mean 'labels'?`.
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from promptopt_dagster.core.errors import PromptOptError

MAX_BYTES = 1024 * 1024
#: no setting nests deeper than a handful of levels
MAX_DEPTH = 50
#: values (scalars, lists, mappings) a document may hold once every alias is expanded
MAX_VALUES = 100_000


class _Refused(Exception):
    def __init__(self, problem: str, mark=None) -> None:
        super().__init__(problem)
        self.problem, self.mark = problem, mark


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts, while composing, how deep it is and how many values the document holds with
    every alias expanded; it stops at the first bound passed, long before the constructor or a validator
    walks the expansion."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._depth = 0
        self._composed = 0  # nodes composed, each alias counted once: stops a long flat list early
        self._aliases = 0
        self._sizes: dict[int, int] = {}  # id(node) -> values under it, aliases expanded (a node outlives the load)

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = self.anchors.get(event.anchor)
            if node is not None and id(node) not in self._sizes:
                raise _Refused(
                    f"the alias *{event.anchor} is used inside its own anchor &{event.anchor}, which makes "
                    "an endless value; write the value out instead",
                    event.start_mark,
                )
            self._aliases += 1
            return super().compose_node(parent, index)  # the anchor's node, already counted
        self._composed += 1
        if self._composed > MAX_VALUES:
            raise _Refused(self._too_many(), event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(
                    f"values are nested more than {MAX_DEPTH} levels deep; no setting nests that deep, so "
                    "check the brackets and indentation",
                    event.start_mark,
                )
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self._sizes[id(child)] for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            size = 1 + sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
            self._check_duplicates(node)
        else:
            size = 1
        if size > MAX_VALUES:
            raise _Refused(self._too_many(), node.start_mark)
        self._sizes[id(node)] = size
        return node

    def _too_many(self) -> str:
        if self._aliases:
            return (
                f"holds more than {MAX_VALUES:,} values once its aliases (*name) are expanded; write the values "
                "out instead of repeating aliases of aliases"
            )
        return f"holds more than {MAX_VALUES:,} values, more than any settings file needs; keep rows in the CSV files"

    @staticmethod
    def _check_duplicates(node: yaml.MappingNode) -> None:
        """PyYAML keeps the last of two equal keys without a word: one of them is a mistake."""
        seen = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if (key.tag, key.value) in seen:
                    raise _Refused(f"the key {key.value!r} appears twice in one mapping; keep one", key.start_mark)
                seen.add((key.tag, key.value))


def _where(mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


def _load(text: str, where: str, error: type[PromptOptError], fix: str):
    try:
        loader = _BoundedLoader(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except _Refused as exc:
        raise error(f"{where}: {_where(exc.mark)}{exc.problem}.") from None
    except yaml.MarkedYAMLError as exc:
        problem = ", ".join(str(p) for p in (exc.context, exc.problem) if p)
        mark = exc.problem_mark or exc.context_mark
        raise error(f"{where}: {_where(mark)}not valid YAML ({' '.join(problem.split())}). {fix}".rstrip()) from None
    except yaml.YAMLError as exc:
        raise error(f"{where}: not valid YAML ({' '.join(str(exc).split())}). {fix}".rstrip()) from None
    except RecursionError:  # a bound above should have stopped it; never a 3,000-line traceback
        raise error(f"{where}: values are nested too deeply to read. {fix}".rstrip()) from None


def load_yaml_file(path: Path, error: type[PromptOptError], fix: str):
    """The file's one YAML document (None when empty), within the bounds above, else `error` in one line.
    `fix` ends a syntax error's message (what the file needs). A missing file raises FileNotFoundError."""
    path = Path(path)
    with path.open("rb") as handle:
        data = handle.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise error(
            f"{path}: larger than {MAX_BYTES // (1024 * 1024)} MiB, too large for a settings file; keep rows "
            "in the CSV files and prompts under prompts/, and only settings here."
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(
            f"{path}: line {line} has the byte 0x{data[exc.start]:02x}, which is not UTF-8. Re-save the file as UTF-8."
        ) from None
    return _load(text, str(path), error, fix)


def load_yaml_text(text: str, where: str, error: type[PromptOptError] = PromptOptError, fix: str = ""):
    """One YAML value given inline (a command-line flag's), with the same bounds as a file."""
    if len(text.encode("utf-8")) > MAX_BYTES:
        raise error(f"{where}: larger than {MAX_BYTES // (1024 * 1024)} MiB. {fix}".rstrip())
    return _load(text, where, error, fix)


# --- validation errors, one line ---------------------------------------------------------------------------


def _models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys the mapping at `loc` (below `model`) takes: the fields of the model found there."""
    models = [model]
    for part in loc:
        if isinstance(part, int):
            continue  # a list index: the same item model
        models = [
            m for model in models if part in model.model_fields for m in _models_in(model.model_fields[part].annotation)
        ]
    return sorted({name for model in models for name in model.model_fields})


def unknown_key_message(key: str, known: typing.Iterable[str]) -> str:
    """`not a known key; did you mean 'labels'?`, or the list of known keys when none is close."""
    known = sorted(known)
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    if close:
        return f"not a known key; did you mean {close[0]!r}?"
    return f"not a known key; the known keys are {', '.join(known)}"


def _key(part) -> str:
    """One step of a dotted key; a name that is not a plain word is quoted, so its dots cannot mislead."""
    return str(part) if re.fullmatch(r"[A-Za-z0-9_-]+", str(part)) else repr(str(part))


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def sentence(text: str) -> str:
    """`text` ending as a sentence does (a message that ends with a question keeps its question mark)."""
    return text if text.endswith((".", "?", "!")) else text + "."


def validation_message(
    exc: ValidationError,
    prefix: tuple,
    model: type[BaseModel],
    hidden: typing.Container[str] = ("name",),
    limit: int = 5,
) -> str:
    """Every error of `exc` as `prefix.key: what is wrong (got VALUE)`, joined by `; `, on one line.

    `model` is the validated class, so an unknown key can be answered with the closest known one;
    `hidden` are its top-level fields the file does not spell (the entry's name is its key)."""
    parts = []
    errors = exc.errors(include_url=False)
    for err in errors[:limit]:
        loc = tuple(err["loc"])
        shown_loc = () if len(loc) == 1 and loc[0] in hidden else loc  # the entry's own key: its name
        key = ".".join(_key(part) for part in (*prefix, *shown_loc))
        message = " ".join(err["msg"].removeprefix("Value error, ").split()).replace("Input should be", "should be")
        if err["type"] == "extra_forbidden":
            known = [k for k in _known_keys(model, loc[:-1]) if len(loc) > 1 or k not in hidden]
            message = unknown_key_message(str(loc[-1]), known)
        elif err["type"] == "missing":
            message = "required; add it"
        elif not isinstance(err.get("input"), dict):
            message += f" (got {_shown(err.get('input'))})"
        parts.append(f"{key}: {message}")
    if len(errors) > limit:
        parts.append(f"and {len(errors) - limit} more")
    return "; ".join(parts)
