"""Scorers by name. Each built-in is an `evaluate` module on disk, so loading needs no network."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

METRICS_DIR = Path(__file__).parent / "metrics"


def available_metrics() -> list[str]:
    return sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").exists())


@lru_cache(maxsize=None)
def load_metric(name: str):
    if name not in available_metrics():
        raise ValueError(f"Unknown metric {name!r}; built-ins are {', '.join(available_metrics())}. "
                         "Set target_metric in data/manifest.yaml to one of them.")
    import evaluate  # ~1.5 s import: paid only when something is scored

    return evaluate.load(str(METRICS_DIR / name))


@dataclass
class ScoreResult:
    metric: str
    value: float
    per_row: list[float]
    details: dict[str, Any] = field(default_factory=dict)


#: Metrics that take the dataset's label set.
LABEL_AWARE = {"accuracy"}


def score(metric: str, predictions: Sequence[str | None], references: Sequence[str],
          labels: Sequence[str] | None = None, **kwargs: Any) -> ScoreResult:
    """Aggregate and per-row scores; a failed row (None prediction) scores as an empty answer."""
    if labels and metric in LABEL_AWARE:
        kwargs["labels"] = list(labels)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return ScoreResult(metric, 0.0, [])
    result = load_metric(metric).compute(predictions=[p or "" for p in predictions], references=list(references),
                                         **kwargs)
    per_row = [float(s) for s in result.pop("scores")]
    return ScoreResult(metric, float(result.pop(metric)), per_row, result)
