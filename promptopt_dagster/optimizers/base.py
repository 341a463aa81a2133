"""The interface every optimization strategy implements, and the lookup by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from promptopt_dagster.core.prompts import PromptVersion
from promptopt_dagster.llm.base import LLMClient
from promptopt_dagster.scoring.registry import ScoreResult

#: Scores a prompt on a set of rows with the task model; optimizers that search use it.
Evaluator = Callable[[PromptVersion, pd.DataFrame], ScoreResult]


@dataclass
class OptimizerInput:
    prompt: PromptVersion  # the best prompt so far, which this iteration tries to beat
    scored_rows: pd.DataFrame  # its dev answers: row_id, user_input, ground_truth_output, prediction, score
    baseline_score: float
    metric: str
    train: pd.DataFrame  # labeled rows usable as demos; never the test split
    labels: list[str]
    iteration: int
    seed: int = 0
    # Rows that choose among candidates (never the confirm rows that accept them): row_id, user_input,
    # ground_truth_output. scored_rows are the baseline's answers on these same rows.
    select_rows: pd.DataFrame | None = None
    history: list = field(default_factory=list)  # the candidate pool of earlier iterations (pool.Candidate)
    label_descriptions: dict[str, str] = field(default_factory=dict)  # label -> what it means (manifest)
    # Dev rows in neither select nor confirm: the optimizer may score its leading cheap candidates on
    # some of them too, to tell apart what 100 select rows cannot (never rows that accept a candidate).
    spare_rows: pd.DataFrame | None = None
    calibration: bool = False  # the task backend ranks labels, so calibrated label answers can be tried
    # Answers and scores of a prompt on rows: (answers frame with `prediction`, ScoreResult). For
    # optimizers that show the model's answers back to a reflection model (gepa).
    answer_and_score: Callable[[PromptVersion, pd.DataFrame], tuple] | None = None
    run_dir: Path | None = None  # where a search keeps its state between iterations (one per optimization generation)
    metric_call_budget: int | None = None  # rows this iteration may still score; None: no cap


@dataclass
class Proposal:
    prompt: PromptVersion | None  # None: nothing usable, see rejected_reason
    rejected_reason: str | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)  # what was tried, with scores
    raw_output: str | None = None  # the optimizer LLM's text, kept for inspection
    pool: list = field(default_factory=list)  # candidates scored this iteration (pool.Candidate), for the pool table


class Optimizer(ABC):
    name: str = "abstract"

    @abstractmethod
    def propose(self, inp: OptimizerInput, evaluate: Evaluator, optimizer_llm: LLMClient | None) -> Proposal: ...

    def demo_pool(self, train: pd.DataFrame) -> list | None:
        """The rows retrieved demos come from, re-attached to pool candidates read back from the warehouse
        (the table stores a pool's size, not its rows); None for optimizers that do not retrieve."""
        return None


def optimizer_classes() -> dict[str, type[Optimizer]]:
    """Every optimizer by the name optimizations.yaml and `--optimizer` use."""
    from promptopt_dagster.optimizers.fewshot import FewShotOptimizer
    from promptopt_dagster.optimizers.gepa_search import GEPAOptimizer
    from promptopt_dagster.optimizers.metaprompt import MetaPromptOptimizer
    from promptopt_dagster.optimizers.reflective import ReflectiveOptimizer
    from promptopt_dagster.optimizers.vertex_prompt import VertexOptimizer

    return {
        cls.name: cls
        for cls in (FewShotOptimizer, ReflectiveOptimizer, GEPAOptimizer, MetaPromptOptimizer, VertexOptimizer)
    }


def get_optimizer(name: str, **options: Any) -> Optimizer:
    known = optimizer_classes()
    if name not in known:
        raise ValueError(f"Unknown optimizer {name!r}; choose one of {', '.join(sorted(known))}.")
    return known[name](**options)
