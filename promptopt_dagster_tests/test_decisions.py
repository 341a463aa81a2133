"""decide(): the single accept/stop rule shared by the sensor and the CLI."""

from __future__ import annotations

import pytest

from promptopt_dagster.core.decisions import Budget, Decision, LoopState, Spend, StopPolicy, decide

# Scores are multiples of 1/8 so every comparison below is exact in binary floating point.
POLICY = StopPolicy(target_score=0.875, patience=2, max_iterations=5, min_improvement=0.0)
FRESH = LoopState()


def test_accept_on_strict_improvement():
    d = decide(0, 0.5, 0.625, FRESH, POLICY)
    assert d.accepted
    assert d.best_score == 0.625
    assert d.iterations_without_improvement == 0
    assert d.stop_reason is None and d.should_continue
    assert d.why.startswith("accepted") and "0.6250" in d.why and "0.5000" in d.why
    assert (d.iteration, d.baseline_score, d.refined_score) == (0, 0.5, 0.625)


def test_reject_on_tie():
    d = decide(0, 0.5, 0.5, FRESH, POLICY)
    assert not d.accepted
    assert d.best_score == 0.5
    assert d.iterations_without_improvement == 1
    assert d.why.startswith("rejected") and "does not beat" in d.why


def test_reject_when_worse():
    d = decide(0, 0.5, 0.25, FRESH, POLICY)
    assert not d.accepted and d.best_score == 0.5


def test_reject_when_refined_score_is_none():
    d = decide(1, 0.5, None, LoopState(best_score=0.5), POLICY)
    assert not d.accepted
    assert d.refined_score is None
    assert d.best_score == 0.5
    assert d.iterations_without_improvement == 1
    assert "the optimizer proposed nothing" in d.why


def test_min_improvement():
    policy = POLICY.model_copy(update={"min_improvement": 0.125})
    # Improving by exactly min_improvement is not enough: it must be more.
    d = decide(0, 0.5, 0.625, FRESH, policy)
    assert not d.accepted and d.best_score == 0.5 and d.iterations_without_improvement == 1
    d = decide(0, 0.5, 0.75, FRESH, policy)
    assert d.accepted and d.best_score == 0.75 and d.iterations_without_improvement == 0


def test_streak_increments_on_rejection():
    d = decide(
        2,
        0.5,
        0.5,
        LoopState(best_score=0.5, iterations_without_improvement=3),
        POLICY.model_copy(update={"patience": 10, "max_iterations": 10}),
    )
    assert d.iterations_without_improvement == 4
    assert d.stop_reason is None


def test_streak_resets_on_acceptance():
    d = decide(2, 0.5, 0.75, LoopState(best_score=0.5, iterations_without_improvement=1), POLICY)
    assert d.accepted
    assert d.iterations_without_improvement == 0
    assert d.stop_reason is None


def test_stop_on_threshold_by_accepted_refinement():
    d = decide(0, 0.5, 0.875, FRESH, POLICY)
    assert d.accepted and d.stop_reason == "threshold" and not d.should_continue


def test_stop_on_threshold_by_baseline():
    # The refinement is worse, but the prompt we keep already reaches the target.
    d = decide(0, 0.875, 0.5, FRESH, POLICY)
    assert not d.accepted and d.best_score == 0.875
    assert d.stop_reason == "threshold"


def test_just_below_threshold_continues():
    d = decide(0, 0.5, 0.75, FRESH, POLICY)
    assert d.stop_reason is None


def test_stop_on_patience():
    d = decide(1, 0.5, 0.5, LoopState(best_score=0.5, iterations_without_improvement=1), POLICY)
    assert d.iterations_without_improvement == 2
    assert d.stop_reason == "patience"


def test_patience_not_reached_continues():
    d = decide(0, 0.5, 0.5, FRESH, POLICY)
    assert d.iterations_without_improvement == 1
    assert d.stop_reason is None


def test_stop_on_max_iterations():
    d = decide(4, 0.5, 0.625, LoopState(best_score=0.5), POLICY)
    assert d.accepted
    assert d.stop_reason == "max_iterations"


def test_before_last_iteration_continues():
    d = decide(3, 0.5, 0.625, LoopState(best_score=0.5), POLICY)
    assert d.stop_reason is None and d.should_continue


def test_continue_otherwise():
    d = decide(1, 0.25, 0.5, LoopState(best_score=0.25, iterations_without_improvement=1), POLICY)
    assert d.accepted and d.stop_reason is None and d.should_continue


def test_threshold_wins_over_patience_and_max_iterations():
    # Rejected (streak reaches patience), last iteration, and the baseline already meets the target.
    d = decide(4, 0.875, 0.875, LoopState(best_score=0.875, iterations_without_improvement=1), POLICY)
    assert d.iterations_without_improvement >= POLICY.patience
    assert d.stop_reason == "threshold"


def test_patience_wins_over_max_iterations():
    d = decide(4, 0.5, None, LoopState(best_score=0.5, iterations_without_improvement=1), POLICY)
    assert d.stop_reason == "patience"


def test_max_iterations_of_one_stops_after_first():
    d = decide(0, 0.25, 0.5, FRESH, POLICY.model_copy(update={"max_iterations": 1}))
    assert d.stop_reason == "max_iterations"


@pytest.mark.parametrize(
    "iteration, baseline, refined, streak, expected",
    [
        (0, 0.25, 0.375, 0, None),
        (0, 0.25, 0.25, 0, None),
        (1, 0.25, 0.25, 1, "patience"),
        (1, 0.25, 0.875, 1, "threshold"),
        (4, 0.25, 0.375, 0, "max_iterations"),
        (4, 0.25, 0.25, 1, "patience"),
        (4, 0.25, 1.0, 1, "threshold"),
    ],
)
def test_stop_reason_table(iteration, baseline, refined, streak, expected):
    d = decide(iteration, baseline, refined, LoopState(iterations_without_improvement=streak), POLICY)
    assert d.stop_reason == expected


def test_to_dict_round_trip():
    d = decide(0, 0.5, 0.625, FRESH, POLICY)
    data = d.to_dict()
    assert data["accepted"] is True and data["stop_reason"] is None
    assert data["spent"] == {
        "requests": 0,
        "tokens": 0,
        "cost_usd": 0.0,
        "llm_calls": 0,
        "cache_hits": 0,
        "metric_calls": 0,
    }
    assert Decision(**{**data, "spent": Spend(**data["spent"])}) == d


def test_spend_written_before_call_counts_existed_still_reads():
    old = Spend.from_json('{"requests": 5, "tokens": 50, "cost_usd": 0.5}')
    assert old == Spend(requests=5, tokens=50, cost_usd=0.5) and old.llm_calls == old.cache_hits == 0
    assert (old + Spend(llm_calls=2, cache_hits=3)).to_json() == Spend(5, 50, 0.5, 2, 3).to_json()


# --- budget ------------------------------------------------------------------------------------------


def test_budget_counts_earlier_iterations_and_this_one():
    policy = StopPolicy(target_score=0.99, patience=5, max_iterations=10, budget=Budget(max_requests=1000))
    state = LoopState(best_score=0.5, spent=Spend(requests=600, tokens=10, cost_usd=0.01))
    under = decide(3, 0.5, 0.6, state, policy, spent=Spend(requests=399))
    assert under.stop_reason is None and under.spent == Spend(999, 10, 0.01)
    over = decide(3, 0.5, 0.6, state, policy, spent=Spend(requests=400))
    assert over.stop_reason == "budget" and over.accepted  # the paid-for refinement still counts
    assert "requests 1000 reached the budget of 1000" in over.why


def test_each_budget_unit_stops_the_loop_and_zero_means_no_cap():
    base = dict(target_score=0.99, patience=5, max_iterations=10)
    spent = Spend(requests=10, tokens=5000, cost_usd=0.25)
    assert decide(0, 0.5, None, LoopState(), StopPolicy(**base), spent).stop_reason is None
    assert (
        decide(0, 0.5, None, LoopState(), StopPolicy(**base, budget=Budget(max_tokens=4000)), spent).stop_reason
        == "budget"
    )
    assert (
        decide(0, 0.5, None, LoopState(), StopPolicy(**base, budget=Budget(max_cost_usd=0.2)), spent).stop_reason
        == "budget"
    )
    assert (
        decide(0, 0.5, None, LoopState(), StopPolicy(**base, budget=Budget(max_cost_usd=0.3)), spent).stop_reason
        is None
    )


def test_threshold_outranks_budget():
    policy = StopPolicy(target_score=0.9, budget=Budget(max_requests=1))
    assert decide(0, 0.5, 0.95, LoopState(), policy, Spend(requests=5)).stop_reason == "threshold"


def test_spend_round_trips_through_its_stored_json():
    spent = Spend(requests=3, tokens=120, cost_usd=0.0125)
    assert Spend.from_json(spent.to_json()) == spent and Spend() + spent == spent
