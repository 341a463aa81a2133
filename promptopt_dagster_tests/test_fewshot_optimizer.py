"""The fewshot optimizer with a scripted evaluator: label mix, order, determinism, selection, mutation."""

from __future__ import annotations

import collections
import random
import re

import pandas as pd
import pytest

from promptopt_dagster.core.prompts import Demo, PromptVersion
from promptopt_dagster.llm.fake import FakeLLM
from promptopt_dagster.llm.inference import predict
from promptopt_dagster.optimizers import Evaluation, OptimizerContext, get_optimizer
from promptopt_dagster.optimizers.fewshot import Choice, label_quotas, spread
from promptopt_dagster.scoring import score

TRAIN = pd.DataFrame(
    {
        "row_id": range(40),
        "user_input": [f"review {i}" for i in range(40)],
        "ground_truth_output": ["positive" if i % 4 == 0 else "negative" for i in range(40)],
    }
)
ROWS = pd.DataFrame(
    {
        "row_id": range(30),
        "user_input": [f"dev {i}" for i in range(30)],
        "ground_truth_output": ["positive"] * 30,
        "prediction": [""] * 30,
        "score": [0.0] * 30,
    }
)
SEED = PromptVersion(system_prompt="Classify the review.", output_prompt="Review: {user_input}\nSentiment:")


def _input(prompt: PromptVersion = SEED, iteration: int = 0) -> OptimizerContext:
    return OptimizerContext(
        prompt=prompt,
        baseline=Evaluation(ROWS, ROWS["score"].tolist(), 0.0),
        select_rows=ROWS,
        metric="accuracy",
        train=TRAIN,
        labels=["positive", "negative"],
        iteration=iteration,
        seed=7,
    )


def _by_demo_count(prompt: PromptVersion, rows: pd.DataFrame) -> Evaluation:
    value = len(prompt.demos) / 20  # scores stay in [0, 1], as every scorer's do
    return Evaluation(rows, [value] * len(rows), value)


def _train(counts: dict[str, int], long: set[str] = frozenset()) -> pd.DataFrame:
    """Rows grouped by label; labels in `long` get inputs too long to be preferred as demos."""
    rows = [
        (label, f"{label} text {i}" + ("!" * 300 if label in long else ""))
        for label, n in counts.items()
        for i in range(n)
    ]
    return pd.DataFrame(
        {"row_id": range(len(rows)), "user_input": [r[1] for r in rows], "ground_truth_output": [r[0] for r in rows]}
    )


def _picks(train: pd.DataFrame, labels: list[str], count: int, seeds=range(40)) -> list[list[str]]:
    optimizer = get_optimizer("fewshot")
    return [
        [d.ground_truth_output for d in optimizer.pick_demos(train, labels, count, random.Random(s))] for s in seeds
    ]


def test_demo_labels_follow_the_train_label_mix():
    # TRAIN is 25% positive: balanced demos would teach the model that half the answers are positive.
    for count, positives in ((4, 1), (8, 2)):
        for labels in _picks(TRAIN, ["positive", "negative"], count):
            assert len(labels) == count and labels.count("positive") == positives


def test_every_label_gets_a_demo_however_rare():
    train = _train({"ham": 950, "spam": 40, "phish": 10})
    for labels in _picks(train, ["ham", "spam", "phish"], 4):
        assert collections.Counter(labels) == {"ham": 2, "spam": 1, "phish": 1}
    many = _train({f"l{i}": 10 for i in range(6)})  # more labels than demos: one each, never a label left out
    for labels in _picks(many, [f"l{i}" for i in range(6)], 4):
        assert sorted(labels) == [f"l{i}" for i in range(6)]


def test_balanced_sets_show_every_label_equally_whatever_train_holds():
    optimizer = get_optimizer("fewshot")
    train = _train({"airfare": 365, "ground_service": 218, "airline": 131, "abbreviation": 96, "aircraft": 70})
    for seed in range(20):
        demos = optimizer.pick_demos(
            train, list(train["ground_truth_output"].unique()), 10, random.Random(seed), balanced=True
        )
        assert set(collections.Counter(d.ground_truth_output for d in demos).values()) == {2}


def test_a_rare_label_with_only_long_rows_still_gets_a_demo():
    labels = _picks(_train({"ham": 90, "spam": 10}, long={"spam"}), ["ham", "spam"], 4)
    assert all(l.count("spam") == 1 for l in labels)


def test_last_demo_has_the_most_common_label_in_every_order():
    # A small model leans to the last demo's label; on imbalanced data that must be the common one,
    # also in the shuffled candidates. Label order puts the rare label last, as sms_spam's [ham, spam] does.
    picks = _picks(_train({"ham": 87, "spam": 13}), ["ham", "spam"], 8, seeds=range(100))
    assert all(l[-1] == "ham" for l in picks)
    assert len({tuple(l) for l in picks}) > 1  # shuffled orders are still tried
    picks = _picks(_train({"a": 60, "b": 25, "c": 15}), ["c", "b", "a"], 6, seeds=range(100))
    assert all(l[-1] == "a" for l in picks)


def test_balanced_train_still_gives_balanced_interleaved_demos():
    train = _train({"positive": 50, "negative": 50})
    picks = _picks(train, ["positive", "negative"], 6)
    assert all(l.count("positive") == 3 for l in picks)
    assert ["positive", "negative"] * 3 in picks  # the unshuffled order alternates
    assert {l[-1] for l in picks} == {"positive", "negative"}  # a tie leaves the last label free


@pytest.mark.parametrize(
    "sizes, count, expected",
    [
        ([87, 13], 4, [3, 1]),
        ([87, 13], 8, [7, 1]),
        ([99, 1], 4, [3, 1]),  # the rare label takes its demo from the most common one
        ([52, 48], 6, [3, 3]),
        ([60, 20, 10, 5, 5], 8, [3, 2, 1, 1, 1]),
        ([1, 1, 1, 1, 1], 3, [1, 1, 1, 1, 1]),
    ],
)
def test_label_quotas(sizes, count, expected):
    assert label_quotas(sizes, count) == expected


def test_spread_spaces_rare_items_and_ends_on_the_largest_group():
    order = "".join(item for _, item in spread([list("aaaaaa"), list("bb")]))
    assert order.count("b") == 2 and "bb" not in order and order[-1] == "a"
    assert "".join(item for _, item in spread([list("bbb"), list("aaa")])) == "bababa"


def _copies_the_demo_majority(request) -> str:
    """A stand-in for a small base model: it answers the label most of its demos show (ties: the last
    demo's), whatever the input; what the real one did with balanced demos on imbalanced data."""
    demo_labels = re.findall(r"Sentiment: (\w+)", request.prompt)
    if not demo_labels:
        return " maybe"
    counts = collections.Counter(demo_labels)
    top = max(counts.values())
    return " " + next(l for l in reversed(demo_labels) if counts[l] == top)


def test_no_candidate_does_worse_than_the_majority_label_on_imbalanced_data():
    llm = FakeLLM(_copies_the_demo_majority)
    labels = ["positive", "negative"]

    def evaluate(prompt: PromptVersion, rows: pd.DataFrame) -> Evaluation:
        answers = predict(llm, prompt, rows, max_tokens=4)
        result = score("accuracy", answers["prediction"].tolist(), answers["ground_truth_output"].tolist(), labels)
        return Evaluation(answers, result.per_row, result.value)

    dev = ROWS.assign(ground_truth_output=["negative" if i % 5 else "positive" for i in range(30)])
    inp = OptimizerContext(
        prompt=SEED,
        baseline=Evaluation(dev, dev["score"].tolist(), 0.0),
        select_rows=dev,
        metric="accuracy",
        train=TRAIN,
        labels=["negative", "positive"],
        iteration=0,
        seed=7,
    )
    proposal = get_optimizer("fewshot", minibatch_size=30).propose(inp, evaluate, None)
    # sets drawn in train's label mix; the balanced ones are the other region of the space, which may
    # lose here (the select rows drop them) and wins where the smaller labels matter
    static = [
        c["minibatch_score"]
        for c in proposal.candidates
        if "retrieved" not in c["choices"] and "balanced" not in c["change"]
    ]
    assert len(static) >= 3 and static == [0.8] * len(static)
    assert proposal.prompt.metadata["select_score"] >= 0.8


def test_picks_the_best_candidate_and_records_every_try():
    optimizer = get_optimizer("fewshot", num_candidates=3, minibatch_size=10)
    proposal = optimizer.propose(_input(), _by_demo_count, None)
    assert len(proposal.prompt.demos) == 12 and proposal.prompt.retrieval is None  # the only static seed of three
    assert [c["choices"].split(",")[0] for c in proposal.candidates] == [
        "0 static demos",
        "12 static demos",
        "0 static demos",
    ]
    assert proposal.prompt.parent_id == SEED.id and proposal.prompt.version == SEED.version + 1
    assert proposal.prompt.metadata["select_rows"] == len(ROWS)


def test_same_seed_and_iteration_give_the_same_proposal():
    a = get_optimizer("fewshot").propose(_input(), _by_demo_count, None).prompt
    b = get_optimizer("fewshot").propose(_input(), _by_demo_count, None).prompt
    c = get_optimizer("fewshot").propose(_input(iteration=1), _by_demo_count, None).prompt
    assert a.content_equals(b)
    assert not a.content_equals(c)


def test_later_iterations_mutate_the_best_demo_set():
    from promptopt_dagster.optimizers.pool import Candidate

    demos = [
        Demo(user_input=f"review {i}", ground_truth_output="positive" if i % 4 == 0 else "negative")
        for i in (0, 1, 4, 5)
    ]
    best = SEED.child(demos=demos)
    pool = [Candidate(best, 0, "seed", {i: 0.4 for i in ROWS["row_id"]}, 0.4)]
    inp = _input(best, iteration=1)
    inp.history = pool
    proposal = get_optimizer("fewshot", num_candidates=4).propose(inp, _by_demo_count, None)
    assert proposal.candidates and all(c["kind"] == "mutate" and c["parent"] == best.id for c in proposal.candidates)
    mutated = get_optimizer("fewshot").mutate_demos(demos, TRAIN, random.Random(1))
    changed = [(a, b) for a, b in zip(demos, mutated) if a != b]
    assert 1 <= len(changed) <= 2
    assert all(a.ground_truth_output == b.ground_truth_output for a, b in changed)  # labels and order kept
    assert len({d.user_input for d in mutated}) == len(mutated)


def _retrieval_vs_static(won: int, lost: int):
    """An evaluator under which the static prompt gets 20 of every 30 rows right, and retrieved demos also
    `won` of the other 10 and `lost` of those 20; retrieved prompts send 3 times the tokens."""

    def evaluate(prompt: PromptVersion, rows: pd.DataFrame) -> Evaluation:
        retrieved = prompt.retrieval is not None
        ids = rows["row_id"].astype(int) % 30
        right = [
            1.0 if (i < 20 and not (retrieved and i < lost)) or (retrieved and 20 <= i < 20 + won) else 0.0 for i in ids
        ]
        answers = rows.assign(prompt_tokens=300 if retrieved else 100)
        return Evaluation(answers, right, sum(right) / len(right))

    return evaluate


@pytest.mark.parametrize("won, lost, proposed", [(6, 5, False), (10, 0, True)])
def test_a_costlier_candidate_is_proposed_only_when_the_race_sees_it_ahead_of_the_current_prompt(won, lost, proposed):
    from promptopt_dagster.core.objective import RowCost
    from promptopt_dagster.optimizers.pool import Candidate

    demos = [
        Demo(user_input=f"review {i}", ground_truth_output="positive" if i % 4 == 0 else "negative") for i in range(8)
    ]
    current = SEED.child(demos=demos, answer="label", labels=["positive", "negative"])
    inp = _input(current, iteration=1)
    inp.history = [
        Candidate(current, 0, "seed", {i: 1.0 if i < 20 else 0.0 for i in range(30)}, 20 / 30, cost=RowCost(100, None))
    ]
    inp.spare_rows = pd.DataFrame(
        {"row_id": range(1000, 1300), "user_input": [f"spare {i}" for i in range(300)], "ground_truth_output": "x"}
    )
    optimizer = get_optimizer("fewshot", num_candidates=6, minibatch_size=30)

    def to_retrieved(parent, inp, pool, rng):  # every mutation: retrieved demos
        choice = Choice("retrieved", rng.choice((4, 8, 16)), "label")
        return optimizer.build(parent, choice, parent.system_prompt, inp, pool, rng), "retrieved"

    optimizer.mutate = to_retrieved
    proposal = optimizer.propose(inp, _retrieval_vs_static(won, lost), None)
    assert any(c["select_score"] is not None for c in proposal.candidates)  # one was scored on all select rows
    if proposed:  # 10 rows in 30 ahead: no tie, whatever it costs (so clear on the select rows that no race runs)
        assert proposal.prompt is not None and proposal.prompt.retrieval is not None
    else:  # +6 -5 rows in 30: a tie on the raced rows, and the current prompt costs a third: it stays
        # in the race past the halving though behind, and wins the last rung's tie
        assert any("race_score" in c for c in proposal.candidates)
        assert proposal.prompt is None and "baseline won the race" in proposal.rejected_reason


def _retrieved_right(static_right):
    """Retrieved prompts answer every row right; static ones the rows whose id `static_right` accepts. Prompts
    with demos send ten times the initial prompt's tokens, so a seed faces both minibatches."""

    def evaluate(prompt: PromptVersion, rows: pd.DataFrame) -> Evaluation:
        ids = rows["row_id"].astype(int)
        right = [1.0 if prompt.retrieval is not None or static_right(i) else 0.0 for i in ids]
        answers = rows.assign(prompt_tokens=200 if prompt.demos or prompt.retrieval else 20)
        return Evaluation(answers, right, sum(right) / len(right))

    return evaluate


@pytest.mark.parametrize(
    "options, objective, gated",
    [
        # static right on rows 0, 10, 20 only: 7 or more minibatch rows lost, none won, surely behind (p <= 1/128)
        ({}, None, True),
        ({"seed_gate": 0}, None, False),  # the gate off: every seed that beats the initial prompt is scored
        ({}, {"within_points": 0.05}, False),  # a stated objective: the cheap seed may be the one it wants
    ],
)
def test_a_seed_surely_behind_the_best_seed_on_its_minibatches_is_not_scored_on_the_rest(options, objective, gated):
    """In the first iteration, a seed the best seed so far beats for sure on the minibatch rows it answered stops
    there: it is neither scored on the other select rows nor drawn as a later parent (no select score)."""
    from promptopt_dagster.core.objective import Objective

    inp = _input()
    if objective:
        inp.objective = Objective(**objective)
    asked: list[tuple[bool, int]] = []
    evaluate = _retrieved_right(lambda i: i % 10 == 0)

    def counting(prompt: PromptVersion, rows: pd.DataFrame) -> Evaluation:
        asked.append((prompt.retrieval is not None, len(rows)))
        return evaluate(prompt, rows)

    proposal = get_optimizer("fewshot", num_candidates=2, minibatch_size=10, **options).propose(inp, counting, None)
    first, static = proposal.candidates[:2]
    assert "retrieved 4" in first["change"] and first["select_score"] == 1.0
    assert "static 12" in static["change"]  # it tied or beat the initial prompt (0 right) on the minibatch
    assert (static["select_score"] is None) is gated
    assert (static.get("stopped_by") == first["candidate"]) is gated
    static_rows = sum(n for retrieved, n in asked if not retrieved)
    assert static_rows == (10 if gated else 40)  # the minibatch, then (not gated) the 30 select rows


def test_a_costlier_seed_surely_behind_after_its_first_minibatch_does_not_pay_the_second():
    """A seed that costs more a row than the initial prompt must stay ahead on a second minibatch; one the best
    seed is already surely ahead of on the first stops there, before paying the second (on long inputs each such
    row is a paragraph-length prompt). One not surely behind on the first still faces the second."""

    def run(static_right) -> tuple[dict, dict, int]:
        inp = _input()
        inp.baseline = Evaluation(ROWS.assign(prompt_tokens=20), ROWS["score"].tolist(), 0.0)  # measured: 20 a row
        asked: list[int] = []
        evaluate = _retrieved_right(static_right)

        def counting(prompt: PromptVersion, rows: pd.DataFrame) -> Evaluation:
            if prompt.retrieval is None:
                asked.append(len(rows))
            return evaluate(prompt, rows)

        proposal = get_optimizer("fewshot", num_candidates=2, minibatch_size=10).propose(inp, counting, None)
        first, static = proposal.candidates[:2]
        assert "retrieved 4" in first["change"] and "static 12" in static["change"]
        return first, static, sum(asked)

    first, behind, rows = run(lambda i: False)  # 10 rows lost, none won, on the first minibatch: p = 1/1024
    assert behind["stopped_by"] == first["candidate"] and "both_minibatches_score" not in behind
    assert rows == 10  # the first minibatch only
    _, close, rows = run(lambda i: i % 10 != 0)  # one row in ten lost: not surely behind, so it faces the second
    assert "stopped_by" not in close and 0.8 <= close["both_minibatches_score"] < 1  # 1 to 3 of its 20 rows lost
    assert rows == 50  # both minibatches (20), then the 30 select rows (this evaluator keeps no answers)


def test_a_seed_close_to_the_best_seed_is_scored_on_every_select_row():
    """One row in ten wrong against none (at most 3 rows lost, none won) is not surely behind at 0.99: the select
    rows decide."""
    evaluate = _retrieved_right(lambda i: i % 10 != 0)
    proposal = get_optimizer("fewshot", num_candidates=2, minibatch_size=10).propose(_input(), evaluate, None)
    static = proposal.candidates[1]
    assert "static 12" in static["change"] and static["select_score"] == 0.9


def test_label_descriptions_become_an_instruction_variant_once():
    optimizer = get_optimizer("fewshot")
    descriptions = {"positive": "the reviewer liked the film"}
    variants = optimizer.instruction_variants(SEED, ["positive", "negative"], descriptions)
    assert len(variants) == 3 and variants[0] == SEED.system_prompt
    assert "- positive: the reviewer liked the film\n- negative" in variants[2]
    described = SEED.child(system_prompt=variants[2])
    assert all(
        v.count("the reviewer liked") <= 1
        for v in optimizer.instruction_variants(described, ["positive", "negative"], descriptions)
    )
    assert len(optimizer.instruction_variants(SEED, ["positive", "negative"])) == 2  # none given: no such variant


def test_after_iteration_0_only_candidates_above_the_current_prompt_race_it():
    """A mutation that ties the current prompt on the select rows does not race it on the spare rows (it could
    be accepted only on a sure gain on the confirm rows); one above it does, and in iteration 0 a tie races."""
    from promptopt_dagster.optimizers.pool import Candidate

    def static(n: int) -> PromptVersion:
        return SEED.child(demos=[Demo(user_input=f"review {i}", ground_truth_output="negative") for i in range(n)])

    def right(rows: range) -> dict[int, float]:
        return {i: 1.0 if i in rows else 0.0 for i in range(30)}

    current = Candidate(static(4), 0, "seed", right(range(20)), 20 / 30)
    tie = Candidate(static(5), 1, "mutate", right(range(10, 30)), 20 / 30)
    above = Candidate(static(6), 1, "mutate", right(range(21)), 21 / 30)
    spare = pd.DataFrame({"row_id": range(100, 400), "user_input": [f"s {i}" for i in range(300)]})
    spare["ground_truth_output"] = "negative"
    raced: list[str] = []

    def evaluate(prompt: PromptVersion, rows: pd.DataFrame) -> Evaluation:
        raced.append(prompt.id)
        per_row = [1.0 if i % 3 else 0.0 for i in rows["row_id"]]
        return Evaluation(rows, per_row, sum(per_row) / len(per_row))

    def race(iteration: int, contenders: list[Candidate]) -> dict[str, float]:
        inp = _input(current.prompt, iteration=iteration)
        inp.history = [current] if iteration else []
        inp.spare_rows = spare
        rungs, _ = get_optimizer("fewshot").racer().run(current, contenders, ROWS, inp, evaluate, [], set(), [])
        return rungs[0] if rungs else {}

    assert race(1, [tie]) == {} and raced == []  # nobody to race: no spare row answered
    assert set(race(1, [tie, above])) == {current.id, above.id}
    current.kind = "baseline"  # iteration 0: the initial prompt, and the seeds that tie it race
    assert set(race(0, [tie])) == {current.id, tie.id}
