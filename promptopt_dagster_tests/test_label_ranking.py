"""Label ranking on the real embedded model at 64 labels (hwu64), and the pruned ranking's identity with the
complete one: the client stops scoring once no other label can win, which must never change the answer."""

from __future__ import annotations

import dataclasses
import random

import pandas as pd
import pytest

from promptopt_dagster.app.datasets import load_manifest
from promptopt_dagster.app.settings import PROJECT_ROOT, get_settings
from promptopt_dagster.core.prompts import PromptVersion, Retrieval
from promptopt_dagster.optimizers.fewshot import FewShotOptimizer

pytestmark = pytest.mark.slow

DATA_DIR = PROJECT_ROOT / "data"


def dataset(name: str, dev_rows: int):
    spec = load_manifest(DATA_DIR / "manifest.yaml")[name]
    read = lambda split: pd.read_csv(DATA_DIR / spec.files[split], dtype=str, keep_default_na=False)  # noqa: E731
    dev = read("dev").head(dev_rows).reset_index(drop=True)
    dev.insert(0, "row_id", range(len(dev)))
    return spec, read("train"), dev, PromptVersion.load(PROJECT_ROOT / "prompts" / spec.initial_prompt)


@pytest.fixture(scope="module")
def client():
    from promptopt_dagster.llm.local import LlamaCppClient

    return LlamaCppClient(get_settings().model_dir, n_threads=2)


def test_ranking_over_hwu64s_64_labels_answers_one_of_them_and_the_prompts_fit_the_context(client):
    from promptopt_dagster.llm.inference import predict

    spec, train, dev, initial = dataset("hwu64", 16)
    opt = FewShotOptimizer()
    prompts = {
        "initial": initial.child(answer="label", labels=spec.labels),
        "retrieved": initial.child(
            answer="label", labels=spec.labels, retrieval=Retrieval(k=8, pool=opt.demo_pool(train))
        ),
        # 8 asked, one per label given: a label never shown is one a small model rarely answers
        "balanced": initial.child(
            answer="label",
            labels=spec.labels,
            demos=opt.pick_demos(train, spec.labels, 8, random.Random(0), balanced=True),
        ),
    }
    assert len(prompts["balanced"].demos) == 64
    for name, prompt in prompts.items():
        tokens = client.count_tokens([prompt.render_completion(text) for text in dev["user_input"]])
        assert max(tokens) + spec.max_output_tokens <= client.context_window(), name
    out = predict(client, prompts["retrieved"], dev, spec.max_output_tokens)
    assert out["error"].isna().all()
    assert set(out["prediction"]) <= set(spec.labels)
    assert (out["prediction"] == out["ground_truth_output"]).mean() >= 0.4  # measured 0.70 on 20 rows: not chance


@pytest.mark.parametrize(("name", "rows"), [("sst2", 12), ("atis_intent", 12), ("hwu64", 8)])
def test_pruned_ranking_chooses_what_the_complete_ranking_chooses(client, name, rows):
    """Same choice and, for every label the pruned ranking scored to the end, the same score, bit for bit.

    Both start from the same cache state: a row's first prompt evaluation reuses the previous row's KV cache, and
    llama.cpp rounds differently for a different split of the prompt, so a row's scores depend on the row before."""
    from promptopt_dagster.llm.label_ranking import LabelRanker

    spec, train, dev, initial = dataset(name, rows)
    retrieved = initial.child(retrieval=Retrieval(k=4, pool=FewShotOptimizer().demo_pool(train)))
    texts = [p.render_completion(text) for p in (initial, retrieved) for text in dev["user_input"]]
    llm, _lock = client._llama()
    ranker = LabelRanker(llm)
    ranked = {}
    for complete in (True, False):
        ranker.rank("Warm up: a prompt no row shares", spec.labels)
        ranked[complete] = [ranker.rank(text, spec.labels, complete=complete) for text in texts]
    for full, pruned in zip(ranked[True], ranked[False]):
        assert pruned.choice == full.choice
        assert set(full.scores) == set(spec.labels)
        assert pruned.scores and all(pruned.scores[c] == full.scores[c] for c in pruned.scores)
        assert pruned.evaluations <= full.evaluations
    if name == "hwu64":  # 64 labels part ways at 19 points; the pruned ranking visits a few of them
        assert sum(r.evaluations for r in ranked[False]) < sum(r.evaluations for r in ranked[True]) / 3


def test_the_client_returns_every_label_score_when_asked_and_keeps_those_a_ranking_completed_anyway(client):
    """An ensemble sums each label's score over demo sets, so a request that wants them gets all 64; one that
    does not gets none when the ranking stopped early (64 labels), and all of them when it scored every label
    anyway (two labels): stored in the cache, they spare an ensemble built on those rows asking again."""
    from promptopt_dagster.llm.base import LLMRequest

    spec, _train, dev, initial = dataset("hwu64", 1)
    request = LLMRequest(
        prompt=initial.render_completion(dev["user_input"][0]), max_tokens=8, choices=tuple(spec.labels)
    )
    plain, wanted = client.generate([request, dataclasses.replace(request, want_label_scores=True)])
    assert plain.error is None and wanted.error is None
    assert plain.text in spec.labels
    assert wanted.text == max(spec.labels, key=lambda c: wanted.label_scores[c])
    assert plain.label_scores is None
    assert set(wanted.label_scores) == set(spec.labels)

    spec, _train, dev, initial = dataset("sst2", 1)
    request = LLMRequest(
        prompt=initial.render_completion(dev["user_input"][0]), max_tokens=8, choices=tuple(spec.labels)
    )
    plain, wanted = client.generate([request, dataclasses.replace(request, want_label_scores=True)])
    assert plain.text == wanted.text and plain.label_scores == wanted.label_scores
    assert set(plain.label_scores) == {"positive", "negative"}
