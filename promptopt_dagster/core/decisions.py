"""The one place where the loop decides to accept a refinement and whether to go on.

Both the sensor (under `dagster dev`) and the CLI (headless) act on the Decision made here, so
the stop rule cannot drift between the two ways of running.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from promptopt_dagster.core.intervals import PairedGain


@dataclass(frozen=True)
class Spend:
    """What an optimization has used so far, in the units a budget is given in."""

    requests: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    # Not budgeted, reported: rows the model answered, and rows the response cache answered (a rerun
    # makes no calls but still needs every answer; both totals show what the optimization consumed).
    llm_calls: int = 0
    cache_hits: int = 0
    metric_calls: int = 0  # rows scored (answered and measured), by candidates and by the comparison alike

    def __add__(self, other: Spend) -> Spend:
        return Spend(*(getattr(self, f) + getattr(other, f) for f in self.__dataclass_fields__))

    def to_json(self) -> str:
        """The form stored in the warehouse's `spent_json` columns."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Spend:
        """Rows written before llm_calls and cache_hits existed read as 0 for those."""
        return cls(**json.loads(text))


class Budget(BaseModel):
    """Caps on one whole optimization (optimizations.yaml's `budget:`); 0 means no cap. Checked after each
    iteration, so the iteration that crosses a cap finishes (its answers are paid for) and then the loop stops.

    The one declaration of the budget: the YAML entry, `decide` and the CLI's --max-* flags all read it."""

    model_config = ConfigDict(extra="forbid")  # a misspelt cap would otherwise be no cap at all

    max_requests: int = Field(
        0, ge=0, description="cap on the optimization's model calls, retries included (0: no cap)"
    )
    max_tokens: int = Field(0, ge=0, description="cap on the optimization's prompt + completion tokens (0: no cap)")
    max_cost_usd: float = Field(
        0.0,
        ge=0.0,
        description="cap on the optimization's estimated cost in US dollars, priced by llm/prices.yaml (0: no cap)",
    )
    max_metric_calls: int = Field(
        0,
        ge=0,
        description="cap on the rows the optimization scores, by candidates and "
        "comparisons, cached answers included (0: no cap)",
    )

    def exceeded(self, spent: Spend) -> str | None:
        """Which cap `spent` has reached, as a sentence, or None."""
        for name, cap, used in (
            ("requests", self.max_requests, spent.requests),
            ("tokens", self.max_tokens, spent.tokens),
            ("cost_usd", self.max_cost_usd, spent.cost_usd),
            ("metric_calls", self.max_metric_calls, spent.metric_calls),
        ):
            if cap and used >= cap:
                return f"{name} {used:g} reached the budget of {cap:g}"
        return None


class StopRules(BaseModel):
    """When the loop stops and what it accepts (optimizations.yaml's `stop:`). The one declaration of these
    rules: the YAML entry, `decide` (through StopPolicy) and the CLI's flags all read it, so a default
    cannot differ between them."""

    model_config = ConfigDict(extra="forbid")

    max_iterations: int = Field(5, ge=1, description="stop after this many iterations")
    target_score: float = Field(
        0.95, ge=0.0, description="stop once the best dev score reaches this; above 1: never stop on the score"
    )
    patience: int = Field(
        2, ge=1, description="stop after this many iterations in a row without an accepted refinement"
    )
    min_improvement: float = Field(
        0.0,
        ge=0.0,
        description="a refinement must beat the baseline by more than this, "
        "and the paired test's interval of its gain must lie "
        "above it",
    )


def confidence_field() -> Any:
    """The confidence knob, declared once for the optimization's settings and for StopPolicy (a function,
    so each model gets its own FieldInfo)."""
    return Field(
        0.9,
        ge=0.5,
        le=0.999,
        description="a refinement is accepted only if its gain on the confirm rows holds at this confidence "
        "(paired bootstrap); fewshot also picks a costlier candidate (retrieved demos) over a "
        "cheaper one only if it is better on the select rows at this confidence",
    )


class StopPolicy(StopRules):
    """What `decide` applies: the stop rules, with the optimization's confidence and budget beside them.
    A subclass rather than a wrapper, so `policy.patience` reads as the rule it is."""

    confidence: float = confidence_field()
    budget: Budget = Field(default_factory=Budget)


@dataclass(frozen=True)
class LoopState:
    """What an iteration inherits from the previous one."""

    best_score: float | None = None
    iterations_without_improvement: int = 0
    spent: Spend = Spend()  # by all earlier iterations of this optimization


@dataclass(frozen=True)
class Decision:
    iteration: int
    baseline_score: float
    refined_score: float | None
    accepted: bool
    best_score: float
    iterations_without_improvement: int
    stop_reason: str | None  # None: run the next iteration; else threshold | budget | patience | max_iterations
    why: str
    spent: Spend = Spend()  # by this optimization up to and including this iteration
    gain: PairedGain | None = None  # the paired test on the confirm rows, when one was made

    @property
    def should_continue(self) -> bool:
        return self.stop_reason is None

    def to_dict(self) -> dict:
        return asdict(self)


def decide(
    iteration: int,
    baseline_score: float,
    refined_score: float | None,
    state: LoopState,
    policy: StopPolicy,
    spent: Spend = Spend(),
    gain: PairedGain | None = None,
) -> Decision:
    """Accept the refinement only if it strictly improves on the baseline and, when `gain` (the paired
    test on the confirm rows) is given, its interval lies above min_improvement; then apply the stop rules.

    refined_score is None when the optimizer produced nothing usable; that counts as a rejection.
    `spent` is what this iteration used; it is added to what earlier ones did before the budget
    check. Stop rules are checked in order threshold, budget, patience, max_iterations, so the
    reported reason is the most informative one when several hold at once.
    """
    total_spent = state.spent + spent
    # The tolerance keeps a gain of exactly min_improvement (0.8 - 0.7 == 0.1000000000000001) a rejection.
    accepted = refined_score is not None and refined_score - baseline_score > policy.min_improvement + 1e-12
    noise = accepted and gain is not None and not gain.holds(policy.min_improvement)
    accepted = accepted and not noise
    best = refined_score if accepted else baseline_score
    streak = 0 if accepted else state.iterations_without_improvement + 1
    if accepted:
        why = f"accepted: refined {refined_score:.4f} > baseline {baseline_score:.4f}"
    elif refined_score is None:
        why = "rejected: the optimizer proposed nothing (no candidate beat the baseline on its select rows, or none was usable; see its note)"
    elif noise:
        why = (
            f"rejected: refined {refined_score:.4f} > baseline {baseline_score:.4f}, but the paired test's "
            f"interval reaches {gain.low:+.4f}, not above {policy.min_improvement:g}: the gain may be noise"
        )
    else:
        why = f"rejected: refined {refined_score:.4f} does not beat baseline {baseline_score:.4f}"

    over_budget = policy.budget.exceeded(total_spent)
    if best >= policy.target_score:
        stop = "threshold"
    elif over_budget:
        stop = "budget"
        why += f"; stopping: {over_budget}"
    elif streak >= policy.patience:
        stop = "patience"
    elif iteration + 1 >= policy.max_iterations:
        stop = "max_iterations"
    else:
        stop = None
    if gain is not None:
        why += f" ({gain.text()})"
    return Decision(iteration, baseline_score, refined_score, accepted, best, streak, stop, why, total_spent, gain)
