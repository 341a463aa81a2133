"""Model migration of a free-text task (gsm8k): the source's answers become the references.

The source model writes a short solution ending in "Answer: N", N being the number of words of the
question (a rule, not the dataset's answer, so references that follow it came from the source). The
target answers "Answer: 0" unless the prompt shows it worked examples, then follows the same rule.
gsm8k's numeric_match wants a plain number as reference, so the reference is the source answer's last
number, read as the scorer reads answers; agreement is low before the search and high after.
"""

from __future__ import annotations

import dagster as dg
import pandas as pd
import yaml

from promptopt_dagster.app.optimizations import OptimizationSpec
from promptopt_dagster.app.settings import PROJECT_ROOT
from promptopt_dagster.defs.partitions import ensure_iteration, iteration_key
from promptopt_dagster_tests.dagster_helpers import generation_of, prepare, start
from promptopt_dagster_tests.fake_llm_servers import FakeLLMServer
from promptopt_dagster_tests.test_migration import KEY, _defs, _failure, source_block

SIZES = {"train": 30, "dev": 24, "test": 16}


def question_of(user: str) -> str:
    return user.split("Question: ", 1)[-1].rsplit("\nSolution:", 1)[0]


def words(question: str) -> int:
    return len(question.split())


def source(req) -> str:
    return f"Counting the words of the question.\nAnswer: {words(question_of(req.user))}"


def target(req) -> str:
    shown = any(role == "assistant" for role, _ in req.messages)
    return f"Answer: {words(question_of(req.user)) if shown else 0}"


def gsm8k_project(root):
    data = root / "data"
    (data / "gsm8k").mkdir(parents=True)
    for split, n in SIZES.items():
        frame = pd.read_csv(PROJECT_ROOT / "data" / "gsm8k" / f"{split}.csv", dtype=str, keep_default_na=False).head(n)
        frame[["user_input"]].to_csv(data / "gsm8k" / f"{split}.csv", index=False)  # no label column anywhere
    manifest = yaml.safe_load((PROJECT_ROOT / "data" / "manifest.yaml").read_text())["datasets"]["gsm8k"]
    (data / "manifest.yaml").write_text(yaml.safe_dump({"datasets": {"gsm8k": manifest}}))
    (root / "prompts").mkdir()
    (root / "prompts" / "gsm8k.json").write_text((PROJECT_ROOT / "prompts" / "gsm8k.json").read_text())
    return root


def test_a_free_text_migration_keeps_the_source_answers_and_reports_agreement(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    root = gsm8k_project(tmp_path / "project")
    with (
        FakeLLMServer("openai", answer=source) as src,
        FakeLLMServer("openai", answer=target) as tgt,
        dg.instance_for_test() as instance,
    ):
        defs = _defs(root, tmp_path, tgt)
        entry = {
            "eval_size": 12,
            "select_size": 12,
            "test_size": 0,
            "source_model": source_block(src),
            "options": {"num_candidates": 2, "minibatch_size": 6},
            "stop": {"max_iterations": 1, "target_score": 1.1},
        }
        (root / "data" / "optimizations.yaml").write_text(yaml.safe_dump({"optimizations": {"gsm8k": entry}}))
        assert prepare(defs, instance, "gsm8k").success
        started = start(defs, instance, OptimizationSpec(name="gsm8k", dataset="gsm8k", **entry))
        assert started.success, _failure(started)
        refs = started.output_for_node("migration_references")
        # free text: the source's whole answer is kept, and numeric_match gets the number it ends with
        assert all(
            a == f"Counting the words of the question.\nAnswer: {words(u)}" and r == str(words(u))
            for u, a, r in zip(refs["user_input"], refs["source_answer"], refs["reference"])
        )
        assert refs["dataset_label"].isna().all()
        generation = generation_of(started)
        ensure_iteration(instance, generation, 0)
        assert (
            defs.resolve_job_def("optimize_iteration")
            .execute_in_process(
                partition_key=iteration_key("gsm8k", generation, 0), instance=instance, raise_on_error=False
            )
            .success
        )
        report = defs.resolve_job_def("final_report_job").execute_in_process(
            partition_key="gsm8k", instance=instance, raise_on_error=False
        )
        assert report.success, _failure(report)
    final = report.asset_materializations_for_node("final_report")[0].metadata
    migration = final["report"].value["migration"]
    assert migration["metric"] == "numeric_match" and migration["dataset_labels"] is None
    assert (final["agreement_before"].value, final["agreement_after"].value) == (0.0, 1.0)


def test_a_free_text_reference_takes_the_form_the_scorers_read():
    from promptopt_dagster.app.migration import reference_form, reference_of

    number = reference_form(["numeric_match", "regex_match"])
    assert reference_of("So she earns $1,234.50 in all.\nAnswer: $1,234.50", [], number) == ("1234.50", "ok")
    assert reference_of("I cannot tell.", [], number) == (None, "unreadable")  # left out and counted
    assert reference_form(["rouge"]) is None  # rouge and the judge read the answer as it is
    assert reference_of("  A short summary.  ", [], None) == ("A short summary.", "ok")
