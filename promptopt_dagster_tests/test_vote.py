"""The retrieved rows' label vote: a label answer weighed by the labels of the rows a prompt retrieved."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from promptopt_dagster.core.prompts import VOTE_SMOOTHING, Demo, PromptVersion, Retrieval
from promptopt_dagster.llm.base import LLMClient, LLMResponse
from promptopt_dagster.llm.cache import CachedClient, ResponseCache
from promptopt_dagster.llm.fake import FakeLLM
from promptopt_dagster.llm.inference import predict
from promptopt_dagster.optimizers import Evaluation, get_optimizer
from promptopt_dagster.optimizers.fewshot import VOTE_GRID
from promptopt_dagster_tests.test_search import SELECT, _input

LABELS = ["alarm", "music", "weather"]
POOL = [
    Demo(user_input="wake me up at seven", ground_truth_output="alarm"),
    Demo(user_input="set an alarm for seven", ground_truth_output="alarm"),
    Demo(user_input="play some jazz", ground_truth_output="music"),
    Demo(user_input="will it rain tomorrow", ground_truth_output="weather"),
]
PROMPT = PromptVersion(
    system_prompt="Classify.",
    output_prompt="Request: {user_input}\nIntent:",
    answer="label",
    labels=LABELS,
    retrieval=Retrieval(k=2, pool=POOL, vote=1.0),
)


class Leaning(LLMClient):
    """Ranks labels like llama.cpp, leaning to `music` by `margin` nats over the other two labels."""

    backend, mode, ranks_labels = "leaning", "completion", True

    def __init__(self, margin: float) -> None:
        super().__init__()
        self.margin = margin
        self.asked_for_scores: list[bool] = []

    @property
    def model(self) -> str:
        return "leaning-1"

    def _generate(self, requests):
        out = []
        for r in requests:
            self.asked_for_scores.append(r.want_label_scores)
            scores = {c: (self.margin if c == "music" else 0.0) - 2.0 for c in r.choices}
            out.append(
                LLMResponse(
                    text=max(scores, key=scores.get),
                    prompt_tokens=10,
                    completion_tokens=1,
                    label_scores=scores if r.want_label_scores else None,
                )
            )
        return out


ROWS = pd.DataFrame({"row_id": [0], "user_input": ["set an alarm at seven please"], "ground_truth_output": ["alarm"]})


def test_vote_shares_count_the_retrieved_rows_labels_and_keep_a_little_for_the_rest():
    shares = PROMPT.vote_shares("set an alarm at seven please")  # both nearest rows are alarms
    total = 2 + VOTE_SMOOTHING * len(LABELS)
    expected = {"alarm": 2 + VOTE_SMOOTHING, "music": VOTE_SMOOTHING, "weather": VOTE_SMOOTHING}
    assert shares == pytest.approx({label: n / total for label, n in expected.items()})
    assert PROMPT.voted and "vote 1" in PROMPT.describe()
    assert PromptVersion.model_validate_json(PROMPT.to_json()).retrieval.vote == 1.0
    # no vote where it means nothing: free answers, or one retrieved row per label (every label one vote)
    assert not PROMPT.child(answer="free").voted
    assert not PROMPT.child(retrieval=PROMPT.retrieval.model_copy(update={"per_label": True})).voted


def test_more_rows_can_vote_than_are_shown_and_the_requests_stay_those_of_the_k_shown():
    # one row shown (the nearest alarm), all four voting: alarm 2, music 1, weather 1
    one = PROMPT.child(retrieval=PROMPT.retrieval.model_copy(update={"k": 1, "voters": 4}))
    shares = one.vote_shares("set an alarm at seven please")
    total = 4 + VOTE_SMOOTHING * len(LABELS)
    assert shares == pytest.approx(
        {
            "alarm": (2 + VOTE_SMOOTHING) / total,
            "music": (1 + VOTE_SMOOTHING) / total,
            "weather": (1 + VOTE_SMOOTHING) / total,
        }
    )
    assert len(one.demos_for("set an alarm at seven please")) == 1
    assert one.render_completion("x") == one.child(
        retrieval=one.retrieval.model_copy(update={"voters": None})
    ).render_completion("x")
    assert "vote 1 of 4" in one.describe()
    assert PromptVersion.model_validate_json(one.to_json()).retrieval.voters == 4


def test_the_vote_overrules_a_weak_lean_of_the_model_and_not_a_strong_one(tmp_path):
    weak, strong = Leaning(margin=1.0), Leaning(margin=6.0)
    assert predict(weak, PROMPT.child(retrieval=PROMPT.retrieval.model_copy(update={"vote": 0.0})), ROWS, 4)[
        "prediction"
    ].tolist() == ["music"]  # no vote: the model's answer
    assert weak.asked_for_scores == [False]
    assert predict(weak, PROMPT, ROWS, 4)["prediction"].tolist() == ["alarm"]  # log share ratio 3.0 > 1.0
    assert weak.asked_for_scores[-1] is True  # every label's score, to weigh
    assert predict(strong, PROMPT, ROWS, 4)["prediction"].tolist() == ["music"]  # 6.0 > 3.0
    heavy = PROMPT.child(retrieval=PROMPT.retrieval.model_copy(update={"vote": 2.0}))
    assert predict(strong, heavy, ROWS, 4)["prediction"].tolist() == ["alarm"]  # 6.0 < 2 x 3.0


def test_a_voted_prompt_asks_what_the_plain_prompt_asked_and_reads_it_from_the_cache(tmp_path):
    inner = Leaning(margin=1.0)
    client = CachedClient(inner, ResponseCache(tmp_path / "cache.sqlite"))
    plain = PROMPT.child(retrieval=PROMPT.retrieval.model_copy(update={"vote": 0.0}))
    scored = predict(client, plain.child(), ROWS, 4)  # stored without label scores: the vote asks once more
    assert scored["prediction"].tolist() == ["music"] and inner.usage.requests == 1
    assert predict(client, PROMPT, ROWS, 4)["prediction"].tolist() == ["alarm"] and inner.usage.requests == 2
    again = predict(client, PROMPT.child(retrieval=PROMPT.retrieval.model_copy(update={"vote": 2.0})), ROWS, 4)
    assert again["cached"].all() and inner.usage.requests == 2  # another weight: the stored scores suffice


def test_a_backend_without_label_scores_answers_without_the_vote(caplog):
    client = FakeLLM(lambda r: "music")
    assert predict(client, PROMPT, ROWS, 4)["prediction"].tolist() == ["music"]
    assert "answers without the vote" in caplog.text


def _voting_helps(evaluated):
    """Retrieved demos with label answers are right on 6 of every 10 rows, 9 with the vote; the rest on half."""

    def evaluate(prompt, rows):
        evaluated.append((prompt.describe(), len(rows)))
        if prompt.retrieval is not None and prompt.answer == "label":
            right = 9 if prompt.voted else 6
            per_row = [float(i % 10 < right) for i in rows["row_id"]]
        else:
            per_row = [float(i % 2 == 0) for i in rows["row_id"]]
        return Evaluation(rows.assign(prompt_tokens=100), per_row, float(np.mean(per_row)))

    return evaluate


def test_the_search_tries_the_best_retrieved_seed_with_the_vote_and_proposes_it_when_it_wins():
    evaluated = []
    inp = _input()
    inp.calibration = True  # the backend ranks labels
    proposal = get_optimizer("fewshot", num_candidates=8, minibatch_size=10).propose(inp, _voting_helps(evaluated))
    by_id = {c.id: c for c in proposal.pool}
    voted = [c for c in proposal.candidates if "with the retrieved rows' vote" in c["change"]]
    assert len(voted) == 1
    parent = by_id[voted[0]["parent"]].prompt
    assert parent.retrieval is not None and not parent.voted  # it faced the retrieved seed it votes on
    assert by_id[voted[0]["candidate"]].prompt.retrieval.k == parent.retrieval.k
    assert voted[0]["select_score"] is not None and proposal.prompt.voted
    # the pick scored on all select rows once, and the grid's other points read the same rows (in a run, from the
    # response cache: test_a_voted_prompt_asks_what_the_plain_prompt_asked_and_reads_it_from_the_cache)
    assert sum(n == len(SELECT) for p, n in evaluated if "vote" in p) == len(VOTE_GRID)

    # a backend without label scores: never tried
    inp.calibration = False
    proposal = get_optimizer("fewshot", num_candidates=8, minibatch_size=10).propose(inp, _voting_helps([]))
    assert not any("vote" in c["change"] for c in proposal.candidates) and not proposal.prompt.voted


def _graded(voted_right, evaluated: list):
    """An evaluator: retrieved label prompts with the vote right on the rows `voted_right(prompt, rows, row_id)`
    says, without it on 3 rows of 10; every other prompt on 2 of 10. Records (description, row count) per call."""

    def evaluate(prompt, rows):
        evaluated.append((prompt.describe(), len(rows)))
        if prompt.retrieval is not None and prompt.answer == "label":
            right = (lambda i: voted_right(prompt, rows, i)) if prompt.voted else (lambda i: i % 10 < 3)
        else:
            right = lambda i: i % 10 < 2  # noqa: E731
        per_row = [float(right(i)) for i in rows["row_id"]]
        return Evaluation(rows.assign(prompt_tokens=100), per_row, float(np.mean(per_row)))

    return evaluate


def _wide_x2(prompt: PromptVersion) -> bool:
    """The grid's last point: weight 2, a panel wider than the k shown."""
    return prompt.retrieval.vote == 2 and prompt.retrieval.panel > prompt.retrieval.k


def _vote_seed(proposal) -> tuple[dict, object]:
    """The vote seed's entry in the tried candidates, and its pool candidate."""
    voted = [c for c in proposal.candidates if "with the retrieved rows' vote" in c["change"]]
    assert len(voted) == 1
    return voted[0], {c.id: c for c in proposal.pool}[voted[0]["candidate"]]


def _propose(evaluate):
    inp = _input()
    inp.calibration = True  # the backend ranks labels
    return get_optimizer("fewshot", num_candidates=8, minibatch_size=10).propose(inp, evaluate)


def test_the_vote_seed_takes_the_grid_point_best_on_the_select_rows_where_the_minibatch_cannot_tell_them_apart():
    evaluated = []

    def select_tells(prompt, rows, i):
        # every point alike on the 10 minibatch rows; on the select rows the nearest 16 voting x2 is right on more
        return i % 2 == 0 or (_wide_x2(prompt) and len(rows) > 10 and i % 4 == 1)

    proposal = _propose(_graded(select_tells, evaluated))
    entry, chosen = _vote_seed(proposal)
    assert _wide_x2(chosen.prompt) and chosen.prompt.retrieval.voters == max(16, 2 * chosen.prompt.retrieval.k)
    assert "vote 2 of" in entry["change"] and entry["choices"] == chosen.prompt.describe()
    first = chosen.prompt.child(retrieval=chosen.prompt.retrieval.model_copy(update={"vote": 1.0, "voters": None}))
    assert chosen.select_score == entry["select_score"] > _graded(select_tells, [])(first, SELECT).value
    assert proposal.prompt.id == chosen.prompt.id
    # each grid point read the select rows once (in a run only the first asks the model); the choice's minibatch
    # score comes from those rows, not another read
    assert sum(n == len(SELECT) and "vote" in p for p, n in evaluated) == len(VOTE_GRID)
    assert sum(n == 10 and "vote" in p for p, n in evaluated) == 0

    # equal points on the select rows: the first of the grid
    kept = _vote_seed(_propose(_graded(lambda prompt, rows, i: i % 2 == 0, [])))[1].prompt.retrieval
    assert (kept.vote, kept.voters) == (VOTE_GRID[0][0], None)


def test_a_vote_seed_no_better_than_its_seed_on_the_select_rows_stops_however_it_does_on_the_minibatch():
    # right on every minibatch row if it were asked there, and on the select rows exactly where its seed is (3 of 10)
    evaluated = []
    entry, seed = _vote_seed(_propose(_graded(lambda prompt, rows, i: len(rows) == 10 or i % 10 < 3, evaluated)))
    assert entry["select_score"] is None and seed.select_score is None
    # the minibatch is never asked: its score is the select rows' on those rows
    assert not any(n == 10 and "vote" in p for p, n in evaluated) and entry["minibatch_score"] < 1.0


def test_the_vote_mutation_moves_the_weight_or_widens_and_narrows_the_panel():
    import random

    optimizer = get_optimizer("fewshot")
    inp = _input()
    inp.calibration = True
    parent = PROMPT.child(labels=inp.labels, retrieval=PROMPT.retrieval.model_copy(update={"k": 4, "vote": 2.0}))
    seen = set()
    for seed in range(60):
        child, change = optimizer.mutate(parent, inp, POOL, random.Random(seed))
        if child.retrieval is not None and child.retrieval.model_dump(
            exclude={"vote", "voters"}
        ) == parent.retrieval.model_dump(exclude={"vote", "voters"}):
            seen.add((child.retrieval.vote, child.retrieval.voters, change))
    assert (2.0, 16, "the nearest 16 rows vote") in seen  # a wide panel: max(16, 2k)
    assert {w for w, v, _ in seen if v is None} - {2.0} <= {0.0, 0.5, 1.0, 4.0} and len(seen) >= 3
    wide = parent.child(retrieval=parent.retrieval.model_copy(update={"voters": 16}))
    narrowed = {
        child.retrieval.voters
        for child, change in (optimizer.mutate(wide, inp, POOL, random.Random(s)) for s in range(60))
        if change == "the rows shown vote"
    }
    assert narrowed == {None}
