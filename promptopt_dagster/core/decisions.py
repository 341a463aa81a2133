"""The one place where the loop decides to accept a refinement and whether to go on.

Both the sensor (under `dagster dev`) and the CLI (headless) act on the Decision made here, so
the stop rule cannot drift between the two ways of running.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from pydantic import BaseModel, Field

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

    def __add__(self, other: "Spend") -> "Spend":
        return Spend(*(getattr(self, f) + getattr(other, f) for f in self.__dataclass_fields__))

    def to_json(self) -> str:
        """The form stored in the warehouse's `spent_json` columns."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Spend":
        """Rows written before llm_calls and cache_hits existed read as 0 for those."""
        return cls(**json.loads(text))


class Budget(BaseModel):
    """Caps on one whole optimization; 0 means no cap. Checked after each iteration, so the
    iteration that crosses a cap finishes (its answers are paid for) and then the loop stops."""

    max_requests: int = 0
    max_tokens: int = 0
    max_cost_usd: float = 0.0
    max_metric_calls: int = 0  # rows scored: what a search spends whether or not the answers were cached

    def exceeded(self, spent: Spend) -> str | None:
        """Which cap `spent` has reached, as a sentence, or None."""
        for name, cap, used in (("requests", self.max_requests, spent.requests),
                                ("tokens", self.max_tokens, spent.tokens),
                                ("cost_usd", self.max_cost_usd, spent.cost_usd),
                                ("metric_calls", self.max_metric_calls, spent.metric_calls)):
            if cap and used >= cap:
                return f"{name} {used:g} reached the budget of {cap:g}"
        return None


class StopPolicy(BaseModel):
    target_score: float = 0.95  # stop when the best dev score reaches this
    patience: int = 2  # stop after this many iterations in a row without an accepted refinement
    max_iterations: int = 5  # iterations 0..max_iterations-1 at most
    min_improvement: float = 0.0  # a refinement must beat the baseline by more than this
    # ...and the paired test's interval of the gain, at this confidence, must lie above min_improvement
    confidence: float = Field(0.9, gt=0.0, lt=1.0)
    budget: Budget = Budget()


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
        why = (f"rejected: refined {refined_score:.4f} > baseline {baseline_score:.4f}, but the paired test's "
               f"interval reaches {gain.low:+.4f}, not above {policy.min_improvement:g}: the gain may be noise")
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
