"""Ensembles of static demo sets: label scores summed over sets, built from the race's leaders."""

from __future__ import annotations

import numpy as np
import pandas as pd

from promptopt_dagster.app.quality import leakage_gate
from promptopt_dagster.core.prompts import Demo, PromptVersion
from promptopt_dagster.llm.base import LLMClient, LLMResponse
from promptopt_dagster.llm.cache import CachedClient, ResponseCache, cache_key
from promptopt_dagster.llm.fake import FakeLLM
from promptopt_dagster.llm.inference import build_request, predict
from promptopt_dagster.optimizers import Evaluation, get_optimizer
from promptopt_dagster_tests.test_search import SELECT, SPARE, _input

LABELS = ["positive", "negative"]
A = [Demo(user_input="great fun", ground_truth_output="positive")]
B = [Demo(user_input="a bore", ground_truth_output="negative")]
PROMPT = PromptVersion(
    system_prompt="Classify.",
    output_prompt="Review: {user_input}\nSentiment:",
    demos=A,
    answer="label",
    labels=LABELS,
    ensemble=[B],
)


class Scoring(LLMClient):
    """Ranks labels like llama.cpp: set A leans positive a little, set B negative a lot."""

    backend, mode, ranks_labels = "scoring", "completion", True

    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[str] = []

    @property
    def model(self) -> str:
        return "scoring-1"

    def _generate(self, requests):
        out = []
        for r in requests:
            self.prompts.append(r.prompt)
            lean = [-0.5, -0.9] if "great fun" in r.prompt else [-3.0, -0.05]
            out.append(
                LLMResponse(
                    text=r.choices[int(np.argmax(lean))],
                    prompt_tokens=10,
                    completion_tokens=1,
                    label_scores=dict(zip(r.choices, lean)),
                )
            )
        return out


ROWS = pd.DataFrame({"row_id": [0, 1], "user_input": ["row 1", "row 2"], "ground_truth_output": ["negative"] * 2})


def test_an_ensemble_is_one_plain_prompt_per_set_and_is_checked_for_leaks():
    members = PROMPT.ensemble_members()
    assert [m.demos for m in members] == [A, B] and not any(m.ensemble for m in members)
    assert members[1].render_completion("ok") == PROMPT.child(demos=B, ensemble=[]).render_completion("ok")
    assert PROMPT.child(answer="free").ensemble_members() == []
    assert "x 2 sets" in PROMPT.describe()
    assert PromptVersion.model_validate_json(PROMPT.to_json()).ensemble == [B]
    held_out = {"test": pd.DataFrame({"row_id": [0], "user_input": ["a bore"]})}
    assert not leakage_gate(PROMPT, held_out).passed  # a held-out row in the second set


def test_answers_sum_normalized_label_scores_over_sets_and_members_come_from_the_cache(tmp_path):
    inner = Scoring()
    client = CachedClient(inner, ResponseCache(tmp_path / "cache.sqlite"))
    alone = predict(client, PROMPT.child(ensemble=[]), ROWS, max_tokens=4)  # the race scores set A first
    assert alone["prediction"].tolist() == ["positive", "positive"] and inner.usage.requests == 2
    summed = predict(client, PROMPT, ROWS, max_tokens=4)
    assert summed["prediction"].tolist() == ["negative", "negative"]  # B's strong lean outweighs A's weak one
    assert inner.usage.requests == 4  # only set B's rows were new
    assert summed["prompt_tokens"].tolist() == [20, 20] and not summed["cached"].any()
    again = predict(client, PROMPT, ROWS, max_tokens=4)
    assert again["prediction"].tolist() == ["negative", "negative"] and again["cached"].all()
    assert inner.usage.requests == 4


def test_a_cached_answer_without_label_scores_is_asked_again(tmp_path):
    cache = ResponseCache(tmp_path / "cache.sqlite")
    request = build_request(Scoring(), PROMPT.child(ensemble=[]), "row 1", max_tokens=4)  # as predict builds it
    cache.put_many(
        [
            (
                cache_key({"backend": "scoring", "model": "scoring-1"}, request),
                {"backend": "scoring", "model": "scoring-1"},
                request,
                LLMResponse(text="positive"),
            )
        ]
    )
    inner = Scoring()
    client = CachedClient(inner, cache)
    assert predict(client, PROMPT.child(ensemble=[]), ROWS.head(1), max_tokens=4)["cached"].all()  # plain: a hit
    assert predict(client, PROMPT, ROWS.head(1), max_tokens=4)["prediction"].tolist() == ["negative"]
    assert inner.usage.requests == 2  # both sets: the stored answer had no scores
    assert cache.get_many([cache_key({"backend": "scoring", "model": "scoring-1"}, request)]).popitem()[1].label_scores


def test_a_backend_without_label_scores_answers_with_the_first_set(caplog):
    client = FakeLLM(lambda r: "negative" if "a bore" in r.prompt else "positive")
    out = predict(client, PROMPT, ROWS, max_tokens=4)
    assert out["prediction"].tolist() == ["positive", "positive"] and len(client.requests) == 2
    assert "answers with the first set alone" in caplog.text


def test_the_race_tries_the_leaders_summed_and_proposes_the_sum_when_it_wins():
    def evaluate(prompt, rows):
        ids = rows["row_id"].tolist()
        if prompt.retrieval is not None or not prompt.demos:
            per_row = [0.5 if prompt.retrieval else 0.0] * len(rows)
        elif prompt.ensemble:  # a sum is right where any member is
            per_row = [1.0] * len(rows)
        elif len(prompt.demos) == 16:
            per_row = [float(i % 2 == 0) if i >= 1000 else float(i - 100 >= 4) for i in ids]
        else:
            per_row = [float(i % 20 != 0) if i >= 1000 else float(not 4 <= i - 100 < 10) for i in ids]
        return Evaluation(rows, per_row, float(np.mean(per_row)))

    inp = _input()
    inp.spare_rows, inp.calibration = SPARE, True
    proposal = get_optimizer("fewshot", num_candidates=6, minibatch_size=10).propose(inp, evaluate)
    assert len(proposal.prompt.ensemble) in (1, 2) and proposal.prompt.answer == "label"
    ensembles = [c for c in proposal.pool if c.kind == "ensemble"]
    assert len(ensembles) == 2 and all(set(c.scores) == set(SELECT["row_id"]) for c in ensembles)
    inp.calibration = False  # a backend without label scores cannot sum them
    plain = get_optimizer("fewshot", num_candidates=6, minibatch_size=10).propose(inp, evaluate)
    assert not plain.prompt.ensemble and not any(c.kind == "ensemble" for c in plain.pool)


def test_a_static_parent_switches_to_retrieval_at_its_cheapest_k():
    import random

    from promptopt_dagster.core.prompts import Demo as D
    from promptopt_dagster_tests.test_search import POOL

    optimizer = get_optimizer("fewshot")
    parent = PROMPT.child(ensemble=[], demos=[D(user_input=f"d{i}", ground_truth_output="positive") for i in range(16)])
    switched = [
        child
        for child, why in (optimizer.mutate(parent, _input(), POOL, random.Random(seed)) for seed in range(100))
        if child.retrieval is not None and not child.demos
    ]
    assert switched and {c.retrieval.k for c in switched} == {min(optimizer.options.retrieved_counts)}
