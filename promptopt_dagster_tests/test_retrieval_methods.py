"""BM25 beside TF-IDF, and retrieved demos that cover the labels: what the search may try on many labels."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from promptopt_dagster.core.prompts import Demo, PromptVersion, Retrieval
from promptopt_dagster.core.retrieval import Bm25Retriever, TfidfRetriever, fingerprint, nearest, tfidf_vectorizer
from promptopt_dagster.optimizers.base import Evaluation, OptimizerContext
from promptopt_dagster.optimizers.fewshot import Choice, FewShotOptimizer, FewShotOptions

POOL = [
    Demo(user_input="wake me up at seven tomorrow", ground_truth_output="alarm_set"),
    Demo(user_input="set an alarm for seven", ground_truth_output="alarm_set"),
    Demo(user_input="set an alarm for six thirty", ground_truth_output="alarm_set"),
    Demo(user_input="remove the alarm for seven", ground_truth_output="alarm_remove"),
    Demo(user_input="play some jazz music", ground_truth_output="play_music"),
    Demo(user_input="turn the lights off", ground_truth_output="iot_hue_lightoff"),
]


@pytest.mark.parametrize("retriever", [TfidfRetriever, Bm25Retriever])
def test_each_retriever_ranks_the_rows_that_share_the_query_words_first(retriever):
    ranked = retriever([d.user_input for d in POOL]).top("set an alarm for seven", 3)
    assert ranked[0] == 1 and set(ranked) <= {0, 1, 2, 3}
    # deterministic: a tie keeps pool order, and asking again gives the same
    assert retriever([d.user_input for d in POOL]).top("zzz", 6) == list(range(6))


def test_bm25_weighs_a_repeated_word_less_than_tfidf_on_a_long_row():
    texts = ["alarm " * 30 + "garden", "set the alarm for seven in the morning", "jazz"]
    assert Bm25Retriever(texts).top("set alarm seven morning", 1) == [1]


def test_per_label_retrieval_shows_the_nearest_row_of_each_of_the_nearest_labels():
    near = Retrieval(k=3, pool=POOL).pick("set an alarm for seven")
    assert [d.ground_truth_output for d in near].count("alarm_set") >= 2  # the nearest rows share a label
    cover = Retrieval(k=3, pool=POOL, per_label=True).pick("set an alarm for seven")
    labels = [d.ground_truth_output for d in cover]
    assert len(set(labels)) == 3 and labels[-1] == "alarm_set"  # the nearest label's row is last, by the input
    assert cover[-1].user_input == "set an alarm for seven" and "alarm_remove" in labels
    assert (
        "one per label"
        in PromptVersion(
            system_prompt="", output_prompt="{user_input}", retrieval=Retrieval(k=3, pool=POOL, per_label=True)
        ).describe()
    )


def test_an_unknown_retriever_is_refused_with_the_known_ones():
    with pytest.raises(ValidationError, match="unknown retriever 'bm26'; known: bm25, tfidf"):
        FewShotOptions(retrievers=("bm26",))


def test_the_search_switches_retriever_and_covers_labels_only_when_asked():
    train = pd.DataFrame(
        {
            "row_id": range(len(POOL)),
            "user_input": [d.user_input for d in POOL],
            "ground_truth_output": [d.ground_truth_output for d in POOL],
        }
    )
    labels = sorted({d.ground_truth_output for d in POOL})
    parent = PromptVersion(system_prompt="Intent?", output_prompt="{user_input}", retrieval=Retrieval(k=2, pool=POOL))
    context = OptimizerContext(
        prompt=parent,
        baseline=Evaluation(train.assign(prediction=""), [0.0] * len(train), 0.0),
        metric="accuracy",
        train=train,
        select_rows=train,
        labels=labels,
        iteration=1,
    )

    def changes(**options) -> set[str]:
        optimizer = FewShotOptimizer(**options)
        rng = random.Random(0)
        return {optimizer.mutate(parent, context, POOL, rng)[1] for _ in range(200)}

    default = changes()
    assert not any("bm25" in c or "per label" in c for c in default)
    wider = changes(retrievers=("tfidf", "bm25"), per_label_retrieval=True)
    assert {"bm25 retrieval", "one retrieved demo per label"} <= wider
    optimizer = FewShotOptimizer(retrievers=("bm25", "tfidf"))
    grown = [
        optimizer.mutate(parent.child(retrieval=None, demos=POOL[:2]), context, POOL, random.Random(s))[0]
        for s in range(50)
    ]
    assert {p.retrieval.method for p in grown if p.retrieval} == {"bm25"}  # a new retrieval starts from the first


def test_long_retrieved_demos_are_cut_at_a_word_and_short_pools_are_left_whole():
    from promptopt_dagster.core.prompts import shorten

    paragraph = "Stocks rallied on Monday as investors weighed the central bank's decision " * 10
    assert shorten(paragraph, 60).endswith("…") and len(shorten(paragraph, 60)) <= 60
    assert shorten(paragraph, 60)[:-1] == paragraph[: len(shorten(paragraph, 60)) - 1]  # a prefix, cut at a space
    pool = [Demo(user_input=f"{i} " + paragraph, ground_truth_output="business") for i in range(5)]
    cut = Retrieval(k=2, pool=pool, max_chars=100).pick("stocks rallied")
    assert all(len(d.user_input) <= 100 for d in cut) and cut[0].ground_truth_output == "business"
    assert pool[0].user_input == "0 " + paragraph  # the pool (what the leakage gate checks) is untouched

    optimizer = FewShotOptimizer()
    assert optimizer.cut_length(pool) == 100 and optimizer.cut_length(POOL) is None
    assert FewShotOptimizer(long_demo_chars=0).cut_length(pool) is None


def test_paragraphs_are_cut_at_every_k_and_shorter_rows_or_free_answers_never():
    """Retrieved demos are cut to long_demo_chars (100) where the pool's median row is over twice that, whatever k
    (a resized retrieval keeps its cut, and a parent the "cut" mutation made whole keeps whole demos); rows up to
    twice the cut are shown whole, and so are free-form answers (a cut word problem would lose its question)."""

    def pool_of(length: int) -> list[Demo]:
        return [Demo(user_input=f"{i:03d} " + "w" * (length - 4), ground_truth_output="sports") for i in range(40)]

    optimizer = FewShotOptimizer()
    assert [optimizer.cut_length(pool_of(n)) for n in (750, 250, 201, 200, 99)] == [100, 100, 100, None, None]
    assert optimizer.cut_length(pool_of(750), labelled=False) is None
    assert FewShotOptimizer(long_demo_chars=5).cut_length(pool_of(750)) == 20  # Retrieval.max_chars' floor

    pool = pool_of(250)
    four = Retrieval(k=4, pool=pool, max_chars=optimizer.cut_length(pool))
    parent = PromptVersion(version=1, system_prompt="Classify.", output_prompt="{user_input}", retrieval=four)
    choice = Choice("retrieved", 16, "label")
    inp = SimpleNamespace(labels=["sports"], train=pd.DataFrame(columns=["user_input", "ground_truth_output"]))
    grown = optimizer.build(parent, choice, "Classify.", inp, pool, random.Random(0)).retrieval
    assert grown.k == 16 and grown.max_chars == 100
    assert all(len(d.user_input) <= 100 for d in grown.pick("w"))
    whole = parent.child(retrieval=four.model_copy(update={"max_chars": None}))
    assert optimizer.build(whole, choice, "Classify.", inp, pool, random.Random(0)).retrieval.max_chars is None


def test_no_dataset_in_data_has_its_retrieved_demos_cut():
    """The default long_demo_chars leaves the search over every shipped dataset as it was: their demo pools'
    median rows are no longer than twice the cut (sst2's is 99 characters), and gsm8k's answers are free-form."""
    from promptopt_dagster.app.datasets import load_manifest, load_splits
    from promptopt_dagster_tests.dagster_helpers import DATA_DIR

    optimizer = FewShotOptimizer()
    for name, spec in load_manifest(DATA_DIR / "manifest.yaml").items():
        pool = optimizer.demo_pool(load_splits(spec, DATA_DIR).train)
        assert optimizer.cut_length(pool, labelled=bool(spec.labels)) is None, name


def test_nearest_is_a_stable_sort_of_the_whole_pool_cut_to_n_ties_at_the_cut_included():
    rng = np.random.default_rng(0)
    for _ in range(200):
        size = int(rng.integers(1, 60))
        similarities = rng.integers(0, 5, size).astype(float) / 4  # many exact ties, at the cut too
        if rng.random() < 0.5:  # most rows at the floor, as a large pool's rows that share no word with a query
            similarities[rng.random(size) < 0.8] = similarities.min() - float(rng.integers(0, 2))
        n = int(rng.integers(1, 70))
        assert nearest(similarities, n).tolist() == np.argsort(-similarities, kind="stable")[:n].tolist()


def test_pools_share_a_retriever_only_when_their_texts_are_the_same():
    """The retriever cache's key: a copy of a pool (as every prompt read from storage brings) finds the same
    retriever; pools whose texts only join to the same string do not."""
    pool = ["set an alarm", "play jazz"]
    assert fingerprint(list(pool)) == fingerprint(tuple(pool))
    assert fingerprint(["ab", "c"]) != fingerprint(["a", "bc"])
    assert fingerprint(["a", ""]) != fingerprint(["a"]) != fingerprint(["a", "b"])
    assert fingerprint(["naïve"]) != fingerprint(["naive"])


def test_tfidf_similarities_are_the_cosine_of_the_rows_and_equal_rows_tie_to_the_lower_index():
    from sklearn.metrics.pairwise import cosine_similarity

    texts = [
        "you have 1 new message please call 08715205273",
        "set an alarm for seven",
        "you have 1 new message please call 08712400200",
        "play some jazz music please",
    ]
    retriever = TfidfRetriever(texts)
    query = "you have a new message please call us"
    fitted = tfidf_vectorizer().fit(texts)
    expected = cosine_similarity(fitted.transform([query]), fitted.transform(texts)).ravel()
    similarities = retriever._similarities(query)
    assert np.allclose(similarities, expected, atol=1e-12)
    # the two messages differ only by a number seen once each: equal similarity, to the last bit
    assert similarities[0] == similarities[2] > similarities[3] > 0
    assert retriever.top(query, 2) == [0, 2]
    assert TfidfRetriever(texts[::-1]).top(query, 2) == [1, 3]  # the lower index first, whichever message it holds
