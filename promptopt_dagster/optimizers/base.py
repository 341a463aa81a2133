"""The optimizer protocol: what an optimizer is given, what it may call, what it returns.

An optimizer gets one context (the prompt to beat, its evaluation on the select rows, the rows it may
use, labels, seed, budget and its own state from the previous iteration), one evaluator (a prompt on
rows -> an Evaluation) and the writer model (the optimizer model, or None). It returns a Proposal: a
prompt, or why there is none, and the state the next iteration of the same optimization receives.

What an optimizer needs is declared on its class: `capabilities` (does it ask a model to write prompts,
which backend must that model be) and `Options` (a pydantic model of its settings). `propose` applies
the writer-model rule before any optimizer code runs, so no optimizer checks it itself, and every
refusal is a Proposal without a prompt (`Proposal.refusal`). The registry (registry.py) finds optimizers
by name; this module imports none of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from promptopt_dagster.core.objective import Objective
from promptopt_dagster.core.prompts import PromptVersion
from promptopt_dagster.llm.base import LLMClient
from promptopt_dagster.optimizers.capabilities import Capabilities, writer_refusal


@dataclass(frozen=True)
class Evaluation:
    """A prompt's answers on some rows and their scores under the optimization's objective."""

    answers: pd.DataFrame  # the rows (row_id, user_input, ground_truth_output) with the model's `prediction`
    per_row: list[float]  # one score per row of `answers`, in its order
    value: float  # the objective's aggregate over these rows
    rationales: list[str] | None = None  # per row, from scorers that explain themselves (the LLM judge)
    # The objective recomputed on some of these rows (positions into `answers`), for a target that is not
    # the mean of its row scores (macro F1): a paired bootstrap of row scores would misjudge its noise.
    # None: the mean of per_row is the target (or recomputing would call a judge model).
    recompute: Callable[[np.ndarray], float] | None = None

    @property
    def scored_rows(self) -> pd.DataFrame:
        """The answers with their `score` and `rationale` (None where no scorer explains)."""
        return self.answers.assign(score=list(self.per_row), rationale=self.rationales or None)


#: Scores a prompt on rows with the task model: the one way an optimizer learns how a prompt does.
Evaluator = Callable[[PromptVersion, pd.DataFrame], Evaluation]


@dataclass
class OptimizerContext:
    """Everything one iteration of an optimizer may use; never the confirm rows that accept its proposal."""

    prompt: PromptVersion  # the best prompt so far, which this iteration tries to beat
    baseline: Evaluation  # that prompt's evaluation on the select rows
    metric: str  # what the scores measure, for prompts that tell a model
    train: pd.DataFrame  # labeled rows usable as demos and feedback; never dev or test rows
    select_rows: pd.DataFrame  # row_id, user_input, ground_truth_output: the rows that choose among candidates
    labels: list[str]
    iteration: int
    seed: int = 0
    label_descriptions: dict[str, str] = field(default_factory=dict)  # label -> what it means (manifest)
    # Rows in neither select nor confirm (spare dev rows, then train rows held out of the demo pool): an
    # optimizer may race its leading candidates on them, to tell apart what 100 select rows cannot
    # (never rows that accept a candidate).
    spare_rows: pd.DataFrame | None = None
    # More spare dev rows, none of them in spare_rows: where a race's leader is ahead of a cheaper prompt by
    # a margin its rows cannot confirm, the two may be raced again on these before the tie goes to the cheaper.
    deciding_rows: pd.DataFrame | None = None
    history: list = field(default_factory=list)  # the candidate pool of earlier iterations (pool.Candidate)
    calibration: bool = False  # the task backend ranks labels, so calibrated label answers can be tried
    metric_call_budget: int | None = None  # rows this iteration may still score; None: no cap
    # What this optimizer returned as Proposal.state in the previous iteration of the same optimization
    # (generation); None at iteration 0. Opaque to everyone else.
    state: bytes | None = None
    # What the user values when candidates differ in cost (optimizations.yaml's `objective:`): ceilings
    # on tokens or seconds per row, or the cheapest prompt within some points of the best. Empty: the
    # best score. Optimizers that compare candidates apply it through pool.best.
    objective: Objective = field(default_factory=Objective)


@dataclass
class Proposal:
    prompt: PromptVersion | None  # None: nothing usable, see rejected_reason
    rejected_reason: str | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)  # what was tried, with scores
    raw_output: str | None = None  # the optimizer LLM's text, kept for inspection
    pool: list = field(default_factory=list)  # candidates scored this iteration (pool.Candidate), for the pool table
    state: bytes | None = None  # what the next iteration's OptimizerContext.state is; None: nothing to keep

    @classmethod
    def refusal(cls, reason: str, context: OptimizerContext | None = None) -> Proposal:
        """No proposal, and why, before any search: a wrong model, too small a budget, nothing to work on.
        The state given is handed on unchanged, so a refused iteration loses no earlier search."""
        return cls(prompt=None, rejected_reason=reason, state=context.state if context is not None else None)


class OptimizerOptions(BaseModel):
    """An optimizer's settings (`options:` in optimizations.yaml); unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Optimizer(ABC):
    #: the name optimizations.yaml and `--optimizer` use; the registry keys on it
    name: ClassVar[str] = "abstract"
    #: which optimizer model it needs (the writer-model rule reads this)
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: its options (a subclass of OptimizerOptions); the registry validates optimizations.yaml's `options:` with it
    Options: ClassVar[type[OptimizerOptions]] = OptimizerOptions
    #: options that default to a setting of the optimization (option -> OptimizationSpec field)
    defaults_from_optimization: ClassVar[dict[str, str]] = {}

    def __init__(self, **options: Any) -> None:
        self.options = self.Options(**options)  # a pydantic ValidationError (a ValueError) names what is wrong

    def propose(self, context: OptimizerContext, evaluate: Evaluator, writer: LLMClient | None = None) -> Proposal:
        """The proposal of one iteration. `writer` is the optimizer model (None: none configured); an
        optimizer whose capabilities it does not meet is refused here, before any of its code runs."""
        refused = self.refusal(writer)
        if refused is not None:
            return Proposal.refusal(refused, context)
        return self._propose(context, evaluate, writer)

    def refusal(self, writer: LLMClient | None) -> str | None:
        """Why this optimizer cannot run with this writer model, or None."""
        return writer_refusal(self.name, self.capabilities, writer.backend if writer is not None else None)

    @abstractmethod
    def _propose(self, context: OptimizerContext, evaluate: Evaluator, writer: LLMClient | None) -> Proposal:
        """The search itself; called only with a writer model the capabilities accept."""

    def demo_pool(self, train: pd.DataFrame) -> list | None:
        """The rows retrieved demos come from, re-attached to pool candidates read back from the warehouse
        (the table stores a pool's size, not its rows); None for optimizers that do not retrieve."""
        return None
