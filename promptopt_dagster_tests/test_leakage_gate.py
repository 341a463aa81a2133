"""The leakage gate: held-out rows may be neither demos nor copied into a prompt's instructions."""

from __future__ import annotations

import pandas as pd

from promptopt_dagster.app.quality import leakage_gate
from promptopt_dagster.core.prompts import Demo, PromptVersion

TEST = pd.DataFrame(
    {
        "row_id": [0, 1, 2],
        "user_input": [
            "the film is a charming, funny and moving tale of two brothers",
            "dull",
            "an utterly pointless exercise in style",
        ],
        "ground_truth_output": ["positive", "negative", "negative"],
    }
)
BASE = PromptVersion(system_prompt="Classify the review.", output_prompt="Review: {user_input}\nSentiment:")


def test_a_clean_prompt_passes():
    prompt = BASE.child(demos=[Demo(user_input="a fine film", ground_truth_output="positive")])
    assert leakage_gate(prompt, {"test": TEST}).passed


def test_a_test_row_as_a_demo_fails_with_its_row_number():
    prompt = BASE.child(demos=[Demo(user_input="DULL ", ground_truth_output="negative")])
    result = leakage_gate(prompt, {"test": TEST})
    assert not result.passed and "demo(s) or demo-pool rows that are test rows (data rows 2)" in result.message


def test_a_long_verbatim_span_in_the_instruction_fails():
    prompt = BASE.child(
        system_prompt="Classify. For example: The film is a charming,  funny and moving tale is positive."
    )
    result = leakage_gate(prompt, {"test": TEST})
    assert not result.passed and "copied verbatim from test row(s) 1" in result.message


def test_short_rows_and_short_overlaps_do_not_fire():
    prompt = BASE.child(system_prompt="Answer dull reviews with negative; an utterly pointless answer is wrong.")
    assert leakage_gate(prompt, {"test": TEST}).passed  # "dull" is shorter than a span; overlap < 40 chars


def test_the_demo_pool_drops_train_rows_that_repeat_a_held_out_row_up_to_case():
    from promptopt_dagster.app.quality import drop_held_out

    train = pd.DataFrame(
        {
            "row_id": [0, 1, 2],
            "user_input": ["Dull", "a fine film", "AN utterly  pointless exercise in style"],
            "ground_truth_output": ["negative", "positive", "negative"],
        }
    )
    kept = drop_held_out(train, {"test": TEST})
    assert kept["user_input"].tolist() == ["a fine film"]  # sms_spam has 5 such rows; a demo from them would leak
