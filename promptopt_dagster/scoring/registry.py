"""Scorers by name: the built-in `evaluate` modules, the LLM judge, and user scorers.

Built-ins are `evaluate` metric modules on disk (`metrics/<name>/<name>.py`), loaded with
`evaluate.load(path)` because loading by Hub name needs the network. Users add scorers without
forking: by dotted path under `scorers:` in data/manifest.yaml, or as a Python entry point in the
group `promptopt_dagster.scorers` of an installed package. A user scorer that takes a built-in's
name is an error when the registry is built: silently preferring either would score a prompt with
a metric nobody chose.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from promptopt_dagster.core.errors import ScorerError

METRICS_DIR = Path(__file__).parent / "metrics"
ENTRY_POINT_GROUP = "promptopt_dagster.scorers"
JUDGE = "llm_judge"  # built in, but not an evaluate module: it needs a model client
RESERVED = {"aggregate", "score", "rationale", "row_id"}  # column and row names of the score tables


def available_metrics() -> list[str]:
    """The built-in evaluate modules shipped in the package."""
    return sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").exists())


@cache
def load_metric(name: str):
    """A built-in module loaded offline; cached because loading copies the module into HF's cache."""
    if name not in available_metrics():
        raise ScorerError(f"Unknown metric {name!r}; built-ins are {', '.join(available_metrics())}.")
    import evaluate  # start-up: ~1.5 s import, paid only when something is scored

    return evaluate.load(str(METRICS_DIR / name))


@dataclass
class ScoreResult:
    metric: str
    value: float  # the scorer's aggregate (corpus-level for bleu and chrf, a mean for the rest)
    per_row: list[float]
    details: dict[str, Any] = field(default_factory=dict)
    rationales: list[str] | None = None  # per row, from scorers that explain themselves (the LLM judge)


@dataclass(frozen=True)
class ScorerEntry:
    """Where a scorer name comes from; `source` is what error messages and the UI show."""

    name: str
    target: str  # a module directory, a dotted path, or JUDGE
    source: str

    @property
    def builtin(self) -> bool:
        return self.source.startswith("built-in")


class ScorerRegistry:
    """Every scorer name usable in a manifest, resolved once; lookups fail with the known names."""

    def __init__(
        self,
        user_scorers: Mapping[str, str] | None = None,
        config_source: str = "config",
        use_entry_points: bool = True,
    ) -> None:
        self._entries: dict[str, ScorerEntry] = {
            name: ScorerEntry(name, str(METRICS_DIR / name), f"built-in evaluate module {METRICS_DIR / name}")
            for name in available_metrics()
        }
        self._entries[JUDGE] = ScorerEntry(JUDGE, JUDGE, "built-in LLM judge (promptopt_dagster.scoring.judge)")
        user: list[ScorerEntry] = []
        if use_entry_points:
            user += [
                ScorerEntry(
                    ep.name,
                    ep.value,
                    f"entry point '{ep.name} = {ep.value}' in group "
                    f"{ENTRY_POINT_GROUP} of package "
                    f"{ep.dist.name if ep.dist else 'unknown'}",
                )
                for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)
            ]
        user += [
            ScorerEntry(str(name), str(target), f"'{name}: {target}' under scorers: in {config_source}")
            for name, target in (user_scorers or {}).items()
        ]
        for entry in user:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", entry.name) or entry.name in RESERVED:
                raise ScorerError(
                    f"Scorer name '{entry.name}' ({entry.source}) is not allowed: use letters, digits "
                    f"and underscores, and none of {', '.join(sorted(RESERVED))} (the score tables "
                    "use those words)."
                )
            known = self._entries.get(entry.name)
            if known is not None and known.target != entry.target:
                what = "the built-in scorer" if known.builtin else "the user scorer"
                raise ScorerError(
                    f"Scorer name '{entry.name}' is taken twice: {entry.source} would shadow {what} "
                    f"'{known.name}' ({known.source}). A user scorer cannot reuse a "
                    f"{'built-in' if known.builtin else 'registered'} name; rename it, e.g. "
                    f"'my_{entry.name}', and use that name in the dataset's scorers."
                )
            self._entries[entry.name] = entry

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entry(self, name: str) -> ScorerEntry:
        if name not in self._entries:
            raise ScorerError(
                f"Unknown scorer {name!r}. Known scorers: {', '.join(self.names())}. Use one of "
                "them, or register yours by dotted path under `scorers:` in data/manifest.yaml."
            )
        return self._entries[name]

    def load(self, name: str) -> Scorer:
        entry = self.entry(name)
        if entry.target == JUDGE:
            raise ScorerError(f"Scorer '{JUDGE}' needs a judge model; build it with ScoringSuite, which gets one.")
        if entry.builtin:
            return ModuleScorer(name, load_metric(name), fast=True)
        return _load_user_scorer(entry)


class Scorer:
    """One scoring function behind a uniform call: answers in, a ScoreResult out."""

    name: str

    def accepts(self) -> set[str] | None:
        """Keyword options the scorer takes (None: any)."""
        raise NotImplementedError

    def __call__(
        self,
        predictions: Sequence[str | None],
        references: Sequence[str],
        *,
        inputs: Sequence[str] | None = None,
        labels: Sequence[str] | None = None,
        **options: Any,
    ) -> ScoreResult:
        raise NotImplementedError


def _parameters(func: Callable) -> set[str] | None:
    params = inspect.signature(func).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _context_kwargs(accepted: set[str] | None, inputs, labels, options: dict) -> dict:
    """Hand `inputs` and `labels` to scorers that declare them; the dataset's labels are the default."""
    kwargs = dict(options)
    if labels and "labels" not in kwargs and (accepted is None or "labels" in accepted):
        kwargs["labels"] = list(labels)
    if inputs is not None and accepted is not None and "inputs" in accepted:
        kwargs["inputs"] = list(inputs)
    return kwargs


class ModuleScorer(Scorer):
    """An `evaluate` module. Built-ins call `_compute` directly (fast=True): `compute()` first stages
    the inputs in an Arrow file for distributed accumulation, which costs about 2.4 s per million
    rows and buys nothing for in-memory lists. Tests check both paths give the same numbers."""

    def __init__(self, name: str, module: Any, fast: bool = False) -> None:
        self.name, self.module, self.fast = name, module, fast

    def accepts(self) -> set[str] | None:
        accepted = _parameters(self.module._compute)
        return None if accepted is None else accepted - {"self", "predictions", "references"}

    def __call__(self, predictions, references, *, inputs=None, labels=None, **options) -> ScoreResult:
        kwargs = _context_kwargs(self.accepts(), inputs, labels, options)
        preds = ["" if p is None else p for p in predictions]
        if self.fast:
            out = self.module._compute(predictions=preds, references=list(references), **kwargs)
        else:
            out = self.module.compute(predictions=preds, references=list(references), **kwargs)
        return _result(self.name, out, len(preds))


class CallableScorer(Scorer):
    """A user function `f(predictions, references, **options)` returning per-row scores, or a dict
    with `scores` and the aggregate under its name or `score` (the evaluate module convention)."""

    def __init__(self, name: str, func: Callable) -> None:
        self.name, self.func = name, func

    def accepts(self) -> set[str] | None:
        accepted = _parameters(self.func)
        return None if accepted is None else accepted - {"predictions", "references"}

    def __call__(self, predictions, references, *, inputs=None, labels=None, **options) -> ScoreResult:
        kwargs = _context_kwargs(self.accepts(), inputs, labels, options)
        out = self.func(["" if p is None else p for p in predictions], list(references), **kwargs)
        if not isinstance(out, Mapping):
            out = {"scores": list(out)}
        return _result(self.name, out, len(predictions))


def _result(name: str, out: Mapping[str, Any], n: int) -> ScoreResult:
    """Check a scorer's output once, here, so a user scorer's mistake names the scorer and the fix."""
    out = dict(out)
    scores = out.pop("scores", None)
    if scores is None or len(scores) != n:
        raise ScorerError(
            f"Scorer '{name}' returned {'no' if scores is None else len(scores)} per-row scores for "
            f"{n} rows. It must return one score per row under 'scores' (or a list of scores)."
        )
    per_row = np.asarray(scores, dtype=float)
    if n and not np.isfinite(per_row).all():
        bad = int(np.flatnonzero(~np.isfinite(per_row))[0])
        raise ScorerError(f"Scorer '{name}' returned a non-finite score ({per_row[bad]}) for row index {bad}.")
    value = out.pop(name, out.pop("score", None))
    value = float(per_row.mean()) if value is None and n else float(value or 0.0)
    rationales = out.pop("rationales", None)
    return ScoreResult(name, value, per_row.tolist(), out, None if rationales is None else list(rationales))


def _load_user_scorer(entry: ScorerEntry) -> Scorer:
    target = entry.target
    if target.endswith(".py") or Path(target).is_dir():
        import evaluate  # start-up: ~1.5 s import, paid only when a scorer is an evaluate module

        try:
            return ModuleScorer(entry.name, evaluate.load(target))
        except Exception as exc:
            raise ScorerError(
                f"Scorer '{entry.name}' ({entry.source}): evaluate could not load {target}: {type(exc).__name__}: {exc}"
            ) from None
    module_name, sep, attr = target.partition(":")
    if not sep:
        module_name, _, attr = target.rpartition(".")
    if not module_name or not attr:
        raise ScorerError(
            f"Scorer '{entry.name}' ({entry.source}): {target!r} is not a dotted path. Write "
            "'package.module:function' (or package.module.function), or a path to an evaluate module."
        )
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ScorerError(
            f"Scorer '{entry.name}' ({entry.source}): cannot import {target}: {exc}. Check the "
            "module is installed or on PYTHONPATH and the name is spelled right."
        ) from None
    import evaluate  # start-up: ~1.5 s import, paid only when something is scored

    if inspect.isclass(obj) and issubclass(obj, evaluate.EvaluationModule):
        return ModuleScorer(entry.name, obj())
    if isinstance(obj, evaluate.EvaluationModule):
        return ModuleScorer(entry.name, obj)
    if callable(obj):
        return CallableScorer(entry.name, obj)
    raise ScorerError(
        f"Scorer '{entry.name}' ({entry.source}): {target} is a {type(obj).__name__}, not a function "
        "or an evaluate module."
    )


def score(
    metric: str,
    predictions: Sequence[str | None],
    references: Sequence[str],
    labels: Sequence[str] | None = None,
    **options: Any,
) -> ScoreResult:
    """One built-in metric on one set of answers; a failed row (None) scores as an empty answer."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return ScoreResult(metric, 0.0, [])
    return ScorerRegistry(use_entry_points=False).load(metric)(predictions, references, labels=labels, **options)
