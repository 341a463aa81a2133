"""The scorer registry (built-ins, dotted paths, entry points, clashes) and weighted scoring suites."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from promptopt_dagster.app.datasets import load_manifest, load_user_scorers
from promptopt_dagster.core.errors import ManifestError, ScorerError
from promptopt_dagster.llm.fake import FakeLLM
from promptopt_dagster.scoring.registry import JUDGE, ScorerRegistry, available_metrics, load_metric
from promptopt_dagster.scoring.suite import (
    AGGREGATE,
    ScorerSpec,
    ScoringSuite,
    objective_value,
    summary_from_frame,
    wide_scores,
)
from promptopt_dagster_tests import custom_scorers

USER = "promptopt_dagster_tests.custom_scorers"


# --- registry ------------------------------------------------------------------------------------


def test_builtins_are_every_module_on_disk_plus_the_judge():
    names = ScorerRegistry(use_entry_points=False).names()
    assert set(available_metrics()) | {JUDGE} == set(names)
    assert {
        "exact_match",
        "accuracy",
        "f1",
        "rouge",
        "bleu",
        "chrf",
        "numeric_match",
        "regex_match",
        "json_valid",
        "label_set",
    } <= set(names)


@pytest.mark.parametrize("target", [f"{USER}:first_word_match", f"{USER}.first_word_match"])
def test_a_function_by_dotted_path_scores_rows(target):
    scorer = ScorerRegistry({"first_word": target}, use_entry_points=False).load("first_word")
    result = scorer(["Positive, clearly", "nah", None], ["positive", "negative", "positive"])
    assert result.per_row == [1.0, 0.0, 0.0] and result.value == pytest.approx(1 / 3)


def test_a_dict_returning_function_keeps_its_aggregate_details_and_options():
    scorer = ScorerRegistry({"brevity": f"{USER}:brevity"}, use_entry_points=False).load("brevity")
    assert scorer.accepts() == {"max_words"}
    result = scorer(["one two", "one two three four"], ["x", "y"], max_words=2)
    assert result.per_row == [1.0, 0.0] and result.value == 0.5 and result.details == {"max_words": 2}


def test_an_evaluate_module_class_by_dotted_path_goes_through_evaluate_compute():
    scorer = ScorerRegistry({"contains_reference": f"{USER}:ContainsReference"}, use_entry_points=False).load(
        "contains_reference"
    )
    result = scorer(["it was Paris", "Rome"], ["paris", "oslo"])
    assert result.per_row == [1.0, 0.0] and result.value == 0.5 and not scorer.fast


def test_an_evaluate_module_file_by_path(tmp_path):
    module = tmp_path / "shouting" / "shouting.py"
    module.parent.mkdir()
    module.write_text(
        textwrap.dedent("""
        import datasets
        import evaluate
        class Shouting(evaluate.Metric):
            def _info(self):
                return evaluate.MetricInfo(description="", citation="", inputs_description="",
                    features=datasets.Features({"predictions": datasets.Value("string"),
                                                "references": datasets.Value("string")}))
            def _compute(self, predictions, references):
                s = [float(p.isupper()) for p in predictions]
                return {"shouting": sum(s) / len(s), "scores": s}
    """)
    )
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text("scorers: {shouting: shouting/shouting.py}\ndatasets: {}\n")
    user = load_user_scorers(manifest)
    assert user == {"shouting": str(module)}  # relative to the manifest's folder
    result = ScorerRegistry(user, use_entry_points=False).load("shouting")(["HEY", "hey"], ["a", "b"])
    assert result.per_row == [1.0, 0.0]


@pytest.mark.parametrize("builtin", ["accuracy", "llm_judge"])
def test_a_config_scorer_that_shadows_a_builtin_names_both(builtin):
    with pytest.raises(ScorerError) as info:
        ScorerRegistry(
            {builtin: f"{USER}:first_word_match"}, config_source="data/manifest.yaml", use_entry_points=False
        )
    message = str(info.value)
    assert f"'{builtin}'" in message and f"{USER}:first_word_match" in message and "data/manifest.yaml" in message
    assert "built-in" in message and ("metrics/accuracy" in message or "scoring.judge" in message)
    assert "rename" in message


def _install_entry_point(tmp_path: Path, monkeypatch, name: str, value: str) -> None:
    """A real installed distribution (a .dist-info on sys.path), as `pip install` of a plugin leaves it."""
    dist = tmp_path / "acme_scorers-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-scorers\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[promptopt_dagster.scorers]\n{name} = {value}\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_an_entry_point_scorer_is_found_by_name(tmp_path, monkeypatch):
    _install_entry_point(tmp_path, monkeypatch, "acme_first_word", f"{USER}:first_word_match")
    registry = ScorerRegistry()
    assert "acme_first_word" in registry.names()
    assert "acme-scorers" in registry.entry("acme_first_word").source
    assert registry.load("acme_first_word")(["yes"], ["yes"]).value == 1.0


def test_an_entry_point_that_shadows_a_builtin_fails_at_load_time(tmp_path, monkeypatch):
    _install_entry_point(tmp_path, monkeypatch, "exact_match", f"{USER}:first_word_match")
    with pytest.raises(ScorerError) as info:
        ScorerRegistry()
    message = str(info.value)
    assert "'exact_match'" in message and "entry point" in message and "acme-scorers" in message
    assert "metrics/exact_match" in message


def test_an_entry_point_and_a_config_scorer_may_not_share_a_name(tmp_path, monkeypatch):
    _install_entry_point(tmp_path, monkeypatch, "first_word", f"{USER}:first_word_match")
    with pytest.raises(ScorerError, match="first_word.*brevity|brevity.*first_word"):
        ScorerRegistry({"first_word": f"{USER}:brevity"})
    assert ScorerRegistry({"first_word": f"{USER}:first_word_match"}).load("first_word")  # same target: no clash


@pytest.mark.parametrize(
    "target, fragment",
    [
        ("no_such_module_xyz:f", "cannot import no_such_module_xyz:f"),
        (f"{USER}:missing", "cannot import"),
        ("justaname", "not a dotted path"),
        (f"{USER}:CALLS", "not a function"),
    ],
)
def test_a_bad_dotted_path_names_the_scorer_and_the_fix(target, fragment):
    registry = ScorerRegistry({"mine": target}, config_source="m.yaml", use_entry_points=False)
    with pytest.raises(ScorerError) as info:
        registry.load("mine")
    assert "'mine'" in str(info.value) and fragment in str(info.value) and "m.yaml" in str(info.value)


@pytest.mark.parametrize("name", ["aggregate", "score", "has space"])
def test_reserved_or_odd_names_are_refused(name):
    with pytest.raises(ScorerError, match="not allowed"):
        ScorerRegistry({name: f"{USER}:first_word_match"}, use_entry_points=False)


def test_a_scorer_with_the_wrong_number_of_scores_is_named():
    scorer = ScorerRegistry({"short": f"{USER}:wrong_length"}, use_entry_points=False).load("short")
    with pytest.raises(ScorerError, match="'short' returned 1 per-row scores for 2 rows"):
        scorer(["a", "b"], ["a", "b"])


def test_unknown_scorer_lists_the_known_ones():
    with pytest.raises(ScorerError) as info:
        ScorerRegistry(use_entry_points=False).entry("acuracy")
    assert "acuracy" in str(info.value) and "accuracy" in str(info.value) and "manifest.yaml" in str(info.value)


def test_the_fast_path_equals_evaluate_compute():
    """Built-ins skip compute()'s Arrow staging; the numbers must be the same as through compute()."""
    preds = ["Positive.", "negative", "", "positive\nbecause", "NEUTRAL", "neg"]
    refs = ["positive", "positive", "negative", "positive", "negative", "negative"]
    registry = ScorerRegistry(use_entry_points=False)
    for name, kwargs in (
        ("exact_match", {}),
        ("accuracy", {"labels": ["positive", "negative"]}),
        ("f1", {"labels": ["positive", "negative"]}),
    ):
        fast = registry.load(name)(preds, refs, **kwargs)
        slow = load_metric(name).compute(predictions=preds, references=refs, **kwargs)
        assert fast.value == pytest.approx(slow[name], abs=1e-12)
        assert fast.per_row == pytest.approx(slow["scores"], abs=1e-12)


# --- suites ----------------------------------------------------------------------------------------


def _suite(specs, target=None, **kw):
    return ScoringSuite(
        [ScorerSpec(**s) for s in specs],
        target,
        ScorerRegistry(
            {"first_word": f"{USER}:first_word_match", "brevity": f"{USER}:brevity"}, use_entry_points=False
        ),
        **kw,
    )


PREDS = ["positive", "Positive, the acting is great", "negative", "no idea"]
REFS = ["positive", "positive", "positive", "negative"]


def test_weighted_aggregate_keeps_every_scorer_and_uses_the_target():
    suite = _suite(
        [{"name": "exact_match", "weight": 3}, {"name": "brevity", "weight": 1, "options": {"max_words": 2}}]
    )
    assert suite.target == AGGREGATE
    result = suite.score(PREDS, REFS)
    em, br = result.results["exact_match"], result.results["brevity"]
    assert em.per_row == [1.0, 0.0, 0.0, 0.0] and br.per_row == [1.0, 0.0, 1.0, 1.0]
    assert result.aggregate == pytest.approx((3 * 0.25 + 1 * 0.75) / 4)
    assert result.per_row_aggregate().tolist() == pytest.approx([1.0, 0.0, 0.25, 0.25])
    assert result.value == result.aggregate
    assert result.summary() == pytest.approx({"exact_match": 0.25, "brevity": 0.75, AGGREGATE: 0.375})

    one = _suite([{"name": "exact_match", "weight": 3}, {"name": "brevity"}], target="brevity").score(PREDS, REFS)
    assert one.value == 0.75 and one.objective().per_row == br.per_row


def test_the_long_table_round_trips_to_summaries_and_wide_rows():
    suite = _suite([{"name": "exact_match"}, {"name": "first_word", "weight": 0}], target="first_word")
    result = suite.score(PREDS, REFS)
    frame = result.to_frame([10, 11, 12, 13])
    assert set(frame["scorer"]) == {"exact_match", "first_word", AGGREGATE}
    assert objective_value(frame) == result.value == 0.5
    assert summary_from_frame(frame) == pytest.approx(result.summary())
    wide = wide_scores(frame)
    assert wide["row_id"].tolist() == [10, 11, 12, 13]
    assert wide["score"].tolist() == [1.0, 1.0, 0.0, 0.0]  # the target's per-row score
    assert wide["exact_match"].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_a_single_scorer_is_its_own_target_and_adds_no_aggregate_rows():
    frame = _suite([{"name": "exact_match"}]).score(PREDS, REFS).to_frame(range(4))
    assert set(frame["scorer"]) == {"exact_match"} and frame["is_target"].all()


@pytest.mark.parametrize(
    "specs, target, fragment",
    [
        ([{"name": "exact_match"}, {"name": "exact_match"}], None, "listed twice"),
        ([{"name": "exact_match", "weight": 0}], None, "add up to 0"),
        ([{"name": "exact_match"}], "accuracy", "neither 'aggregate' nor one of the scorers"),
        ([{"name": "exact_match", "options": {"ignore_cas": True}}], None, "no option(s) ignore_cas"),
        ([{"name": "llm_judge", "options": {"temperature": 1}}], None, "no option(s) temperature"),
        ([{"name": "bleurt"}], None, "Unknown scorer 'bleurt'"),
        ([], None, "no scorers"),
    ],
)
def test_suite_mistakes_fail_before_scoring(specs, target, fragment):
    with pytest.raises(ScorerError) as info:
        _suite(specs, target, where="data/manifest.yaml, dataset 'toy'")
    assert fragment in str(info.value)
    if specs:
        assert "dataset 'toy'" in str(info.value)


def test_dataset_labels_reach_label_aware_scorers_only():
    suite = _suite([{"name": "accuracy"}, {"name": "exact_match"}], labels=["positive", "negative"])
    result = suite.score(["positive sentiment", "negative"], ["positive", "negative"])
    assert result.results["accuracy"].per_row == [1.0, 1.0]
    assert result.results["exact_match"].per_row == [0.0, 1.0]


def _verdict(request):
    answer = request.messages[-1][1].split("Answer to judge (JSON string): ")[1].splitlines()[0]
    right = json.loads(answer) == "Paris"
    return json.dumps({"score": 5 if right else 1, "rationale": "names the capital" if right else "wrong city"})


def test_judge_rationales_reach_the_objective_and_the_table():
    judge = FakeLLM(responder=_verdict, mode="chat")
    suite = _suite(
        [{"name": "exact_match"}, {"name": "llm_judge", "options": {"rubric": "Is the capital right?"}}],
        judge_client=lambda: judge,
    )
    assert suite.uses_judge
    result = suite.score(["Paris", "Lyon"], ["Paris", "Paris"], inputs=["Capital of France?", "Capital of France?"])
    assert result.results["llm_judge"].per_row == [1.0, 0.0]
    assert len(judge.requests) == 2 and "Is the capital right?" in judge.requests[0].messages[0][1]
    why = result.objective().rationales
    assert why[0] == "llm_judge: names the capital" and why[1] == "llm_judge: wrong city"
    wide = wide_scores(result.to_frame([0, 1]))
    assert wide["rationale"].tolist() == why


def test_a_judge_without_a_model_says_how_to_configure_one():
    suite = _suite([{"name": "llm_judge"}])
    with pytest.raises(ScorerError, match="PROMPTOPT_JUDGE__BACKEND"):
        suite.score(["a"], ["a"], inputs=["q"])


# --- manifest ---------------------------------------------------------------------------------------


def _manifest(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "manifest.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def test_manifest_scorers_weights_and_target(tmp_path):
    path = _manifest(
        tmp_path,
        """
        scorers: {first_word: promptopt_dagster_tests.custom_scorers:first_word_match}
        datasets:
          toy:
            files: {train: a.csv, dev: b.csv, test: c.csv}
            initial_prompt: p.json
            scorers:
              - {name: exact_match, weight: 2}
              - {name: first_word, weight: 1}
              - {name: regex_match, weight: 0, options: {pattern: '^\\w+$'}}
          legacy:
            files: {train: a.csv, dev: b.csv, test: c.csv}
            initial_prompt: p.json
            target_metric: exact_match
    """,
    )
    specs = load_manifest(path)
    toy = specs["toy"]
    assert [(s.name, s.weight) for s in toy.scorers] == [("exact_match", 2), ("first_word", 1), ("regex_match", 0)]
    assert toy.target_metric == AGGREGATE and toy.scorers[2].options == {"pattern": "^\\w+$"}
    assert [s.name for s in specs["legacy"].scorers] == ["exact_match"] and specs[
        "legacy"
    ].target_metric == "exact_match"
    assert load_user_scorers(path) == {"first_word": "promptopt_dagster_tests.custom_scorers:first_word_match"}


def test_manifest_scorer_entries_are_checked(tmp_path):
    path = _manifest(
        tmp_path,
        """
        datasets:
          toy:
            files: {train: a.csv, dev: b.csv, test: c.csv}
            initial_prompt: p.json
            scorers: [{name: exact_match, wieght: 2}]
    """,
    )
    with pytest.raises(
        ManifestError, match=r"datasets\.toy\.scorers\.0\.wieght: not a known key; did you mean 'weight'\?"
    ):
        load_manifest(path)
    bad = _manifest(tmp_path, "scorers: [a, b]\ndatasets: {}\n")
    with pytest.raises(ManifestError, match="must map names to dotted paths"):
        load_user_scorers(bad)


def test_shipped_gsm8k_uses_numeric_match_and_watches_the_answer_format():
    from promptopt_dagster.app.settings import PROJECT_ROOT

    spec = load_manifest(PROJECT_ROOT / "data" / "manifest.yaml")["gsm8k"]
    suite = ScoringSuite(spec.scorers, spec.target_metric, ScorerRegistry(use_entry_points=False), spec.labels)
    assert suite.target == "numeric_match"
    result = suite.score(["3 apples, then 4 more.\nAnswer: 7", "The total is $1,200.", "Answer: 8"], ["7", "1200", "9"])
    assert result.results["numeric_match"].per_row == [1.0, 1.0, 0.0]
    assert result.results["regex_match"].per_row == [1.0, 0.0, 1.0]
    assert result.value == pytest.approx(2 / 3) and result.aggregate == pytest.approx(2 / 3)  # weight 0: watched only
    assert np.isfinite(result.per_row_aggregate()).all()
    assert custom_scorers is not None


def test_the_target_interval_recomputes_a_macro_target_on_resampled_rows():
    suite = _suite([{"name": "f1"}], labels=["positive", "negative", "neutral"])
    preds = ["positive", "negative", "neutral", "positive"] * 10 + ["negative"] * 10
    refs = ["positive", "negative", "neutral", "neutral"] * 10 + ["negative"] * 10
    value = suite.score(preds, refs).value
    found = suite.target_interval(preds, refs)
    assert found.low < value < found.high and found.confidence == 0.95
    assert suite.target_interval(preds, refs) == found  # seeded: the same rows give the same interval
