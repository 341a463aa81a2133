"""The fewshot optimizer with a scripted evaluator: balance, determinism, selection, mutation."""

from __future__ import annotations

import random

import pandas as pd

from promptopt_dagster.core.prompts import Demo, PromptVersion
from promptopt_dagster.optimizers import OptimizerInput, get_optimizer
from promptopt_dagster.scoring.registry import ScoreResult

TRAIN = pd.DataFrame({"row_id": range(40), "user_input": [f"review {i}" for i in range(40)],
                      "ground_truth_output": ["positive" if i % 4 == 0 else "negative" for i in range(40)]})
ROWS = pd.DataFrame({"row_id": range(30), "user_input": [f"dev {i}" for i in range(30)],
                     "ground_truth_output": ["positive"] * 30, "prediction": [""] * 30, "score": [0.0] * 30})
SEED = PromptVersion(system_prompt="Classify the review.", output_prompt="Review: {user_input}\nSentiment:")


def _input(prompt: PromptVersion = SEED, iteration: int = 0) -> OptimizerInput:
    return OptimizerInput(prompt=prompt, scored_rows=ROWS, baseline_score=0.0, metric="accuracy", train=TRAIN,
                          labels=["positive", "negative"], iteration=iteration, seed=7)


def _by_demo_count(prompt: PromptVersion, rows: pd.DataFrame) -> ScoreResult:
    value = len(prompt.demos) / 10
    return ScoreResult("accuracy", value, [value] * len(rows))


def test_demos_are_label_balanced_though_train_is_not():
    proposal = get_optimizer("fewshot", num_candidates=3).propose(_input(), _by_demo_count, None)
    labels = [d.ground_truth_output for d in proposal.prompt.demos]
    assert labels.count("positive") == labels.count("negative") == len(labels) // 2


def test_picks_the_best_candidate_and_records_every_try():
    optimizer = get_optimizer("fewshot", num_candidates=3, demo_counts=(2, 8, 4), minibatch_size=10)
    proposal = optimizer.propose(_input(), _by_demo_count, None)
    assert len(proposal.prompt.demos) == 8
    assert [c["demos"] for c in proposal.candidates] == [2, 8, 4]
    assert proposal.prompt.parent_id == SEED.id and proposal.prompt.version == SEED.version + 1
    assert proposal.prompt.metadata["minibatch_size"] == 10


def test_same_seed_and_iteration_give_the_same_proposal():
    a = get_optimizer("fewshot").propose(_input(), _by_demo_count, None).prompt
    b = get_optimizer("fewshot").propose(_input(), _by_demo_count, None).prompt
    c = get_optimizer("fewshot").propose(_input(iteration=1), _by_demo_count, None).prompt
    assert a.content_equals(b)
    assert not a.content_equals(c)


def test_later_iterations_mutate_the_best_demo_set():
    demos = [Demo(user_input=f"review {i}", ground_truth_output="positive" if i % 4 == 0 else "negative")
             for i in (0, 1, 4, 5)]
    best = SEED.child(demos=demos)
    proposal = get_optimizer("fewshot", num_candidates=4).propose(_input(best, iteration=1), _by_demo_count, None)
    mutations = [c for c in proposal.candidates if c["kind"] == "mutate"]
    assert len(mutations) == 2 and all(c["demos"] == 4 for c in mutations)
    mutated = get_optimizer("fewshot").mutate_demos(demos, TRAIN, random.Random(1))
    changed = [(a, b) for a, b in zip(demos, mutated) if a != b]
    assert 1 <= len(changed) <= 2
    assert all(a.ground_truth_output == b.ground_truth_output for a, b in changed)  # labels and order kept
    assert len({d.user_input for d in mutated}) == len(mutated)
