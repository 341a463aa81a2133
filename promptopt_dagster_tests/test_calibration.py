"""Contextual calibration of label answers: a property of the prompt version, applied by the backends
that rank labels, searched by the fewshot optimizer on static demo sets."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from promptopt_dagster.core.prompts import CONTENT_FREE_INPUTS, Demo, PromptVersion, Retrieval
from promptopt_dagster.llm.base import LLMRequest
from promptopt_dagster.llm.cache import cache_key
from promptopt_dagster.llm.inference import build_request
from promptopt_dagster.llm.label_ranking import first_best
from promptopt_dagster.llm.local import calibrated_choice
from promptopt_dagster.optimizers import Evaluation, OptimizerContext, get_optimizer

LABELS = ["positive", "negative"]
DEMOS = [
    Demo(user_input="great fun", ground_truth_output="positive"),
    Demo(user_input="a bore", ground_truth_output="negative"),
]
PROMPT = PromptVersion(
    system_prompt="Classify.",
    output_prompt="Review: {user_input}\nSentiment:",
    demos=DEMOS,
    answer="label",
    labels=LABELS,
    calibrate=True,
)


class _Client:
    def __init__(self, mode: str, ranks_labels: bool) -> None:
        self.mode, self.ranks_labels = mode, ranks_labels


def test_calibration_prompts_are_the_rows_own_demos_with_each_content_free_input():
    found = PROMPT.calibration_prompts("a fine film")
    assert len(found) == len(CONTENT_FREE_INPUTS)
    for text, free in zip(found, CONTENT_FREE_INPUTS):
        assert text == PROMPT.render_completion(free)
    retrieved = PROMPT.child(demos=[], retrieval=Retrieval(k=1, pool=DEMOS))
    for row in ("great fun indeed", "such a bore"):  # the retrieved demo follows the row, not "N/A"
        assert retrieved.calibration_prompts(row)[0] == retrieved.render_completion(row).replace(row, "N/A")
    assert PROMPT.child(calibrate=False).calibration_prompts("x") == ()
    assert PROMPT.child(answer="free").calibration_prompts("x") == ()  # only label answers can be
    assert "calibrated" in PROMPT.describe() and "calibrated" not in PROMPT.child(answer="free").describe()
    assert PromptVersion.model_validate_json(PROMPT.to_json()).calibrate  # exported as measured
    assert not PROMPT.content_equals(PROMPT.child(calibrate=False))


def test_only_a_backend_that_ranks_labels_gets_calibration_prompts_and_old_cache_keys_stay_valid():
    local = build_request(_Client("completion", True), PROMPT, "a fine film", 4)
    assert local.calibration_prompts == PROMPT.calibration_prompts("a fine film")
    assert build_request(_Client("completion", False), PROMPT, "a fine film", 4).calibration_prompts == ()
    assert build_request(_Client("chat", False), PROMPT, "a fine film", 4).calibration_prompts == ()
    identity = {"backend": "local", "model": "m"}
    plain = LLMRequest(prompt="p", choices=("a", "b"))
    assert cache_key(identity, plain) != cache_key(
        identity, LLMRequest(prompt="p", choices=("a", "b"), calibration_prompts=("q",))
    )
    import hashlib
    import json

    before = json.dumps(
        {
            "identity": identity,
            "request": {
                "prompt": "p",
                "messages": None,
                "max_tokens": 16,
                "temperature": 0.0,
                "stop": [],
                "choices": ["a", "b"],
            },
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    assert cache_key(identity, plain) == hashlib.sha256(before.encode()).hexdigest()


def test_calibration_removes_the_lean_a_demo_set_gives_and_keeps_what_the_input_adds():
    # The demos make `positive` likely whatever the input: 0.9 for a content-free input, 0.8 here.
    lean = {"positive": -0.105, "negative": -2.303}
    row = {"positive": -0.223, "negative": -1.609}
    assert max(row, key=row.get) == "positive"
    assert calibrated_choice(LABELS, row, [lean]) == "negative"  # the input moved it toward negative
    assert calibrated_choice(LABELS, lean, [lean]) == "positive"  # no evidence either way: the first label
    even = {"positive": -0.693, "negative": -0.693}
    assert calibrated_choice(LABELS, row, [even]) == "positive"  # an unbiased prompt changes nothing
    # scores that are not normalized (label log-likelihoods) give the same answer
    assert (
        calibrated_choice(LABELS, {k: v - 5 for k, v in row.items()}, [{k: v - 3 for k, v in lean.items()}])
        == "negative"
    )


def test_a_tie_in_exact_arithmetic_goes_to_the_first_label_whatever_the_last_bits_say():
    # log(mean(exp(x))) == x in exact arithmetic; numpy's vector exp and log leave the last bits to the CPU
    # (this test's calibration case above picked the second label on an AVX2 machine before first_best)
    assert first_best([-1.0, np.nextafter(-1.0, 0.0)]) == 0  # the second is one unit in the last place higher
    assert first_best([-0.105, -0.105 + 1e-6]) == 1  # a real difference still wins
    assert first_best([-np.inf, -np.inf]) == 0 and first_best([-np.inf, -3.0]) == 1


def _input(calibration: bool, prompt: PromptVersion) -> OptimizerContext:
    train = pd.DataFrame(
        {"user_input": [f"train row {i}" for i in range(40)], "ground_truth_output": ["positive", "negative"] * 20}
    )
    select = pd.DataFrame(
        {"row_id": range(40), "user_input": [f"row {i}" for i in range(40)], "ground_truth_output": ["positive"] * 40}
    )
    return OptimizerContext(
        prompt=prompt,
        baseline=Evaluation(select.assign(prediction=""), [0.0] * len(select), 0.0),
        metric="accuracy",
        train=train,
        labels=LABELS,
        iteration=1,
        seed=0,
        select_rows=select,
        calibration=calibration,
    )


@pytest.mark.parametrize("calibration", [True, False])
def test_the_search_toggles_calibration_on_static_label_prompts_only_where_the_backend_ranks(calibration):
    optimizer = get_optimizer("fewshot")
    static = PROMPT.child(calibrate=False)
    moves = set()
    for seed in range(200):
        child, why = optimizer.mutate(static, _input(calibration, static), DEMOS, random.Random(seed))
        moves.add(why)
        if why == "calibrated answers":
            assert child.calibrated and child.demos == static.demos
        if child.retrieval is not None:
            assert not child.calibrate  # content-free prompts for every row would double its cost
    assert ("calibrated answers" in moves) is calibration


@pytest.mark.slow
def test_calibration_undoes_a_lopsided_demo_set_with_the_real_model():
    from promptopt_dagster.app.settings import get_settings
    from promptopt_dagster.llm.inference import predict
    from promptopt_dagster.llm.local import LlamaCppClient

    data = get_settings().data_dir / "sst2"
    train, test = pd.read_csv(data / "train.csv"), pd.read_csv(data / "test.csv")
    lopsided = pd.concat(
        [
            train[train["ground_truth_output"] == "negative"].head(1),
            train[train["ground_truth_output"] == "positive"].head(7),
        ]
    )
    prompt = PromptVersion(
        system_prompt="Classify the sentiment of the review.",
        output_prompt="Review: {user_input}\nSentiment:",
        answer="label",
        labels=LABELS,
        demos=[Demo(user_input=r.user_input, ground_truth_output=r.ground_truth_output) for r in lopsided.itertuples()],
    )
    rows = test.groupby("ground_truth_output").head(12).reset_index(drop=True)
    rows["row_id"] = range(len(rows))
    client = LlamaCppClient(get_settings().model_dir, n_threads=2)

    def recall(calibrate: bool) -> dict[str, float]:
        out = predict(client, prompt.child(calibrate=calibrate), rows, 4)
        assert out["error"].isna().all() and set(out["prediction"]) <= set(LABELS)
        return (out["prediction"] == out["ground_truth_output"]).groupby(out["ground_truth_output"]).mean().to_dict()

    raw, calibrated = recall(False), recall(True)
    assert raw["negative"] <= 0.25  # seven positive demos of eight: the model says positive to nearly all
    assert calibrated["negative"] >= raw["negative"] + 0.3
    assert calibrated["positive"] >= 0.75
