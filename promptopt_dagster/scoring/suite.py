"""A dataset's objectives: several scorers with weights, and the one number the loop optimizes.

Real tasks are judged on more than one axis (right answer, right format, judged helpfulness), so a
dataset names several scorers; each keeps its own per-row and aggregate scores, and a weighted
aggregate combines them. Which number decides acceptance and stopping (`target`) is configurable:
the aggregate, or one scorer when the others are only there to watch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from promptopt_dagster.core.errors import ScorerError
from promptopt_dagster.core.intervals import Interval, bootstrap_interval
from promptopt_dagster.llm.base import LLMClient
from promptopt_dagster.scoring.registry import JUDGE, Scorer, ScoreResult, ScorerRegistry

AGGREGATE = "aggregate"
#: Options of the LLM judge; everything else in its `options` is a mistake worth naming.
JUDGE_OPTIONS = {"rubric", "scale_min", "scale_max", "max_tokens", "use_reference"}


class ScorerSpec(BaseModel):
    """One entry of a dataset's `scorers:` list in data/manifest.yaml."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="a built-in scorer (accuracy, exact_match, f1, llm_judge, ...) or one the manifest's top-level "
        "`scorers:` registers"
    )
    weight: float = Field(
        1.0,
        ge=0.0,
        description="its weight in the aggregate; 0: computed and reported, but it does not move the aggregate",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="the scorer's own options (exact_match's first_line, llm_judge's rubric, ...)"
    )


@dataclass
class SuiteResult:
    results: dict[str, ScoreResult]  # per scorer, in manifest order
    weights: dict[str, float]
    target: str  # a scorer name or AGGREGATE

    @property
    def aggregate(self) -> float:
        total = sum(self.weights.values())
        return sum(self.weights[n] * r.value for n, r in self.results.items()) / total

    def per_row_aggregate(self) -> np.ndarray:
        total = sum(self.weights.values())
        rows = sum(self.weights[n] * np.asarray(r.per_row, dtype=float) for n, r in self.results.items())
        return np.asarray(rows, dtype=float) / total

    @property
    def value(self) -> float:
        """The number the loop compares and stops on."""
        return self.aggregate if self.target == AGGREGATE else self.results[self.target].value

    def objective(self) -> ScoreResult:
        """The target as one ScoreResult, which is what optimizers rank candidates by."""
        if self.target == AGGREGATE:
            return ScoreResult(AGGREGATE, self.aggregate, self.per_row_aggregate().tolist(), {}, self.rationales())
        result = self.results[self.target]
        return ScoreResult(result.metric, result.value, result.per_row, result.details, self.rationales())

    def summary(self) -> dict[str, float]:
        """Aggregate per scorer plus the weighted aggregate: what reports and metadata show."""
        out = {name: float(r.value) for name, r in self.results.items()}
        out[AGGREGATE] = float(self.aggregate)
        return out

    def rationales(self) -> list[str] | None:
        """Per row, every explaining scorer's rationale ("llm_judge: ..."); None when no scorer explains."""
        explained = [(n, r.rationales) for n, r in self.results.items() if r.rationales is not None]
        if not explained:
            return None
        n_rows = len(next(iter(self.results.values())).per_row)
        return ["\n".join(f"{name}: {why[i]}" for name, why in explained) for i in range(n_rows)]

    def to_frame(self, row_ids: Sequence[int]) -> pd.DataFrame:
        """Long form, one row per (row, scorer) plus `aggregate` when there are several scorers, so
        the warehouse table keeps one schema whatever scorers a dataset uses."""
        parts = []
        for name, r in self.results.items():
            parts.append(
                pd.DataFrame(
                    {
                        "row_id": list(row_ids),
                        "scorer": name,
                        "score": r.per_row,
                        "value": r.value,
                        "weight": self.weights[name],
                        "is_target": name == self.target,
                        "rationale": r.rationales if r.rationales is not None else None,
                    }
                )
            )
        if len(self.results) > 1:
            parts.append(
                pd.DataFrame(
                    {
                        "row_id": list(row_ids),
                        "scorer": AGGREGATE,
                        "score": self.per_row_aggregate(),
                        "value": self.aggregate,
                        "weight": sum(self.weights.values()),
                        "is_target": self.target == AGGREGATE,
                        "rationale": None,
                    }
                )
            )
        frame = pd.concat(parts, ignore_index=True)
        return frame.astype({"rationale": "string", "score": float, "value": float, "weight": float})


class ScoringSuite:
    """Scorers resolved and options checked up front, so a typo fails before any model call."""

    def __init__(
        self,
        specs: Sequence[ScorerSpec],
        target: str | None = None,
        registry: ScorerRegistry | None = None,
        labels: Sequence[str] = (),
        judge_client: Callable[[], LLMClient] | None = None,
        where: str = "the dataset's scorers",
    ) -> None:
        if not specs:
            raise ScorerError(f"{where}: no scorers. Name at least one, e.g. `scorers: [{{name: exact_match}}]`.")
        names = [s.name for s in specs]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ScorerError(
                f"{where}: scorer(s) {', '.join(repeated)} listed twice. List each once; give one the weight you want."
            )
        if sum(s.weight for s in specs) <= 0:
            raise ScorerError(
                f"{where}: the weights add up to 0, so there is no aggregate. Give one scorer a weight above 0."
            )
        self.specs = list(specs)
        self.target = target or (AGGREGATE if len(specs) > 1 else specs[0].name)
        if self.target != AGGREGATE and self.target not in names:
            raise ScorerError(
                f"{where}: target_metric {self.target!r} is neither '{AGGREGATE}' nor one of the "
                f"scorers ({', '.join(names)}). Set it to one of those."
            )
        self.labels = list(labels)
        self.registry = registry or ScorerRegistry()
        self._judge_client = judge_client
        self._scorers: dict[str, Scorer] = {}
        for spec in self.specs:
            try:  # unknown names and unloadable user scorers fail here, with the known ones listed
                self.registry.entry(spec.name)
                if spec.name != JUDGE:
                    self._scorers[spec.name] = self.registry.load(spec.name)
            except ScorerError as exc:
                raise ScorerError(f"{where}: {exc}") from None
            if spec.name == JUDGE:
                unknown = set(spec.options) - JUDGE_OPTIONS
            else:
                accepted = self._scorers[spec.name].accepts()
                unknown = set() if accepted is None else set(spec.options) - accepted
            if unknown:
                accepted_text = ", ".join(sorted(JUDGE_OPTIONS if spec.name == JUDGE else accepted or ())) or "none"
                raise ScorerError(
                    f"{where}: scorer '{spec.name}' has no option(s) {', '.join(sorted(unknown))}; "
                    f"it accepts: {accepted_text}."
                )

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def uses_judge(self) -> bool:
        return JUDGE in self.names

    def describe(self) -> str:
        """One line for logs and the optimizer: what is measured and what the loop optimizes."""
        parts = [f"{s.name} (weight {s.weight:g})" for s in self.specs]
        return f"{' + '.join(parts)}; optimizing {self.target}" if len(parts) > 1 else self.specs[0].name

    def score(
        self, predictions: Sequence[str | None], references: Sequence[str], inputs: Sequence[str] | None = None
    ) -> SuiteResult:
        if len(predictions) != len(references) or (inputs is not None and len(inputs) != len(predictions)):
            raise ValueError(
                f"{len(predictions)} predictions, {len(references)} references and "
                f"{'no' if inputs is None else len(inputs)} inputs: they must match row for row"
            )
        results = {}
        for spec in self.specs:
            if not len(predictions):
                results[spec.name] = ScoreResult(spec.name, 0.0, [])
            elif spec.name == JUDGE:
                results[spec.name] = self._judge(spec, predictions, references, inputs)
            else:
                results[spec.name] = self._scorers[spec.name](
                    predictions, references, inputs=inputs, labels=self.labels, **spec.options
                )
        return SuiteResult(results, {s.name: s.weight for s in self.specs}, self.target)

    def target_interval(
        self, predictions: Sequence[str | None], references: Sequence[str], confidence: float = 0.95, seed: int = 0
    ) -> Interval:
        """A percentile bootstrap of the target recomputed on resampled rows, so a target that is not a
        mean of row scores (macro F1, corpus BLEU) gets an interval too. Needs no model call unless the
        suite has a judge, which would be asked again on every resample."""
        p, r = np.array(predictions, dtype=object), np.array(references, dtype=object)
        return bootstrap_interval(len(p), lambda ix: self.score(list(p[ix]), list(r[ix])).value, confidence, seed=seed)

    def _judge(self, spec: ScorerSpec, predictions, references, inputs) -> ScoreResult:
        # start-up: ~4 ms on every import of the suite (`promptopt --help` too); only a suite with the judge pays it
        from promptopt_dagster.scoring.judge import LLMJudge

        if self._judge_client is None:
            raise ScorerError(
                f"Scorer '{JUDGE}' needs a judge model and none is configured here. Set "
                "PROMPTOPT_JUDGE__BACKEND / __MODEL (or the judge_model resource)."
            )
        out = LLMJudge(self._judge_client(), **spec.options).compute(predictions, references, inputs=inputs)
        scores, rationales = out.pop("scores"), out.pop("rationales")
        value = out.pop(JUDGE)
        return ScoreResult(JUDGE, float(value), [float(s) for s in scores], out, list(rationales))


# --- reading the long table back (what downstream assets and reports need) -------------------------


def objective_value(frame: pd.DataFrame) -> float:
    """The target's aggregate from a `SuiteResult.to_frame()` table (0.0 when nothing was scored)."""
    target = frame[frame["is_target"].astype(bool)]
    return float(target["value"].iloc[0]) if len(target) else 0.0


def summary_from_frame(frame: pd.DataFrame) -> dict[str, float]:
    """Aggregate per scorer plus `aggregate`, as `SuiteResult.summary()` gave it."""
    values = frame.groupby("scorer", sort=False)["value"].first()
    out = {str(k): float(v) for k, v in values.items()}
    if AGGREGATE not in out and len(out) == 1:
        out[AGGREGATE] = next(iter(out.values()))
    return out


def wide_scores(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per row_id: `score` (the target), a column per scorer, and the joined rationales."""
    scores = frame.pivot(index="row_id", columns="scorer", values="score")
    target = frame[frame["is_target"].astype(bool)].set_index("row_id")["score"].rename("score")
    explained = frame.dropna(subset=["rationale"])
    why = (
        explained.assign(line=explained["scorer"] + ": " + explained["rationale"])
        .groupby("row_id")["line"]
        .agg("\n".join)
        .rename("rationale")
    )
    out = scores.join(target).join(why) if len(why) else scores.join(target).assign(rationale=pd.NA)
    out.columns.name = None
    return out.reset_index()
