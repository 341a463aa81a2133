"""Model migration on sms_spam: a scripted source model's answers become the references.

The source model is the fake OpenAI-compatible server behind the real openai SDK client. It answers
from what it is sent: `Spam.` when the message holds one of a few words, else `Ham.`, a rule that
disagrees with the dataset's own labels on some rows, so references that equal the rule came from
the source and not from the CSV. The target model (its own fake server) answers `spam` to every
bare message and follows the source's rule once the prompt carries demos: agreement is low before
the fewshot search and high after it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from promptopt_dagster.app.datasets import DatasetSpec, read_split
from promptopt_dagster.app.migration import reference_of
from promptopt_dagster.app.optimizations import OptimizationConfigError, OptimizationSpec, load_optimizations
from promptopt_dagster.app.settings import PROJECT_ROOT
from promptopt_dagster.core.errors import DatasetError, MissingLabelsError
from promptopt_dagster.definitions import build_definitions
from promptopt_dagster.defs.artifact_io_managers import LocalArtifactIOManager
from promptopt_dagster.defs.io_managers import WarehouseIOManager
from promptopt_dagster.defs.partitions import ensure_iteration, iteration_key
from promptopt_dagster.defs.resources import LLMResource, ProjectResource
from promptopt_dagster.defs.warehouse import WarehouseResource
from promptopt_dagster_tests.dagster_helpers import generation_of, prepare, start
from promptopt_dagster_tests.fake_llm_servers import FakeLLMServer
from promptopt_dagster_tests.remote_helpers import run_cli, warehouse

SPAM_WORDS = ("free", "call", "txt", "claim", "prize", "win", "£", "urgent")
SIZES = {"train": 40, "dev": 36, "test": 20}
SOURCE, TARGET = "source-large", "target-mini"
KEY = "sk-test-migration"


def source_label(message: str) -> str:
    return "spam" if any(word in message.casefold() for word in SPAM_WORDS) else "ham"


def message_of(user: str) -> str:
    return user.split("Message: ", 1)[-1].rsplit("\nLabel:", 1)[0]


def source_model(req) -> str:
    """The model the prompt was written for: a capitalized label and a full stop, as chat models answer."""
    return f"{source_label(message_of(req.user)).capitalize()}."


def target_model(req) -> str:
    """The model the prompt moves to: flags everything as spam unless the prompt shows it examples."""
    shown_demos = any(role == "assistant" for role, _ in req.messages)
    return source_label(message_of(req.user)) if shown_demos else "spam"


def sms_project(root: Path, unlabeled: tuple[str, ...] = ()) -> Path:
    """A small copy of sms_spam (first rows of each split); the splits in `unlabeled` lose their label column."""
    data = root / "data"
    (data / "sms_spam").mkdir(parents=True)
    for split, n in SIZES.items():
        frame = pd.read_csv(PROJECT_ROOT / "data" / "sms_spam" / f"{split}.csv", dtype=str, keep_default_na=False).head(
            n
        )
        if split in unlabeled:
            frame = frame[["user_input"]]
        frame.to_csv(data / "sms_spam" / f"{split}.csv", index=False)
    (data / "manifest.yaml").write_text(
        yaml.safe_dump(
            {
                "datasets": {
                    "sms_spam": {
                        "files": {s: f"sms_spam/{s}.csv" for s in SIZES},
                        "labels": ["ham", "spam"],
                        "target_metric": "accuracy",
                        "initial_prompt": "sms_spam.json",
                        "max_output_tokens": 4,
                    }
                }
            }
        )
    )
    (root / "prompts").mkdir()
    shutil.copy(PROJECT_ROOT / "prompts" / "sms_spam.json", root / "prompts" / "sms_spam.json")
    return root


def source_block(server: FakeLLMServer) -> dict:
    return {
        "backend": "openai",
        "model": SOURCE,
        "base_url": server.openai_base_url,
        "input_price_per_mtok": 5.0,
        "output_price_per_mtok": 15.0,
        "max_attempts": 2,
        "backoff_initial_s": 0.01,
        "timeout_s": 5,
    }


SEARCH = {
    "eval_size": 12,
    "select_size": 12,
    "spare_size": 20,
    "test_size": 0,
    "options": {"num_candidates": 2, "minibatch_size": 6},
    "stop": {"max_iterations": 1, "target_score": 1.1},
}


def write_optimizations(root: Path, entries: dict) -> None:
    (root / "data" / "optimizations.yaml").write_text(yaml.safe_dump({"optimizations": entries}))


def all_rows(root: Path) -> pd.DataFrame:
    frames = [
        pd.read_csv(root / "data" / "sms_spam" / f"{s}.csv", dtype=str, keep_default_na=False).assign(split=s)
        for s in SIZES
    ]
    return pd.concat(frames, ignore_index=True)


def source_calls(server: FakeLLMServer) -> int:
    return len([r for r in server.requests if r.status == 200 and r.path.endswith("/chat/completions")])


# --- the pieces -----------------------------------------------------------------------------------


def test_a_file_without_labels_is_refused_outside_a_migration_with_the_fix(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("user_input\nWin a free prize now\nsee you at lunch\n", encoding="utf-8")
    with pytest.raises(MissingLabelsError) as info:
        read_split(path, ["ham", "spam"])
    message = str(info.value)
    assert str(path) in message and "missing the column(s) ground_truth_output" in message
    assert "Add the ground_truth_output column" in message and "set `source_model`" in message
    assert "data/optimizations.yaml" in message
    frame = read_split(path, ["ham", "spam"], unlabeled_ok=True)
    assert frame["user_input"].tolist() == ["Win a free prize now", "see you at lunch"]
    assert frame["ground_truth_output"].isna().all()
    with pytest.raises(DatasetError) as info:  # no input column is never a migration's business
        read_split(_write(tmp_path / "x.csv", "text\nhello\n"), ["ham", "spam"], unlabeled_ok=True)
    assert "user_input" in str(info.value) and not isinstance(info.value, MissingLabelsError)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_source_model_is_a_validated_setting_that_enters_the_fingerprint(tmp_path):
    path = tmp_path / "optimizations.yaml"
    model = {"backend": "openai", "model": "gpt-4o-mini"}
    path.write_text(
        yaml.safe_dump(
            {
                "optimizations": {
                    "m": {"dataset": "sms_spam", "source_model": model, "task_model": {"backend": "gemini"}}
                }
            }
        )
    )
    spec = load_optimizations(path, ["sms_spam"])["m"]
    assert spec.source_model.model == "gpt-4o-mini"
    dataset = DatasetSpec(
        name="sms_spam", files={"train": "a.csv", "dev": "b.csv", "test": "c.csv"}, initial_prompt="sms_spam.json"
    )
    assert spec.fingerprint(dataset) != spec.model_copy(update={"source_model": None}).fingerprint(dataset)
    # an optimization without one hashes no source_model key (its settings and its dataset's entry only; an
    # objective left empty is left out the same way)
    plain = OptimizationSpec(name="sms_spam", dataset="sms_spam")
    import hashlib

    payload = {
        **plain.model_dump(mode="json", exclude={"name", "description", "source_model", "objective", "spare_size"}),
        "dataset_settings": dataset.model_dump(mode="json", exclude={"name", "description"}),
    }
    assert plain.fingerprint(dataset) == hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    path.write_text(
        yaml.safe_dump(
            {"optimizations": {"m": {"dataset": "sms_spam", "source_model": model, "task_model": {**model, "rpm": 60}}}}
        )
    )
    with pytest.raises(OptimizationConfigError) as info:
        load_optimizations(path, ["sms_spam"])
    assert "optimizations.m.source_model: source_model is the task model (openai/gpt-4o-mini)" in str(info.value)
    path.write_text(
        yaml.safe_dump(
            {"optimizations": {"m": {"dataset": "sms_spam", "source_model": {"backend": "vertex_prompt_optimizer"}}}}
        )
    )
    with pytest.raises(
        OptimizationConfigError,
        match="optimizations.m.source_model: vertex_prompt_optimizer rewrites prompts and cannot answer rows",
    ):
        load_optimizations(path, ["sms_spam"])
    path.write_text(yaml.safe_dump({"optimizations": {"m": {"dataset": "sms_spam", "source_model": {"modle": "x"}}}}))
    with pytest.raises(OptimizationConfigError, match="optimizations.m.source_model.modle: not a known key"):
        load_optimizations(path, ["sms_spam"])


@pytest.mark.parametrize(
    "answer, labels, expected",
    [
        ("Spam.", ["ham", "spam"], ("spam", "ok")),
        (" ham\n", ["ham", "spam"], ("ham", "ok")),
        ("I cannot tell", ["ham", "spam"], (None, "off_label")),
        ("", ["ham", "spam"], (None, "empty")),
        (None, [], (None, "empty")),
        ("  A short summary. ", [], ("A short summary.", "ok")),
    ],
)
def test_a_source_answer_becomes_the_label_it_names_or_the_free_text_itself(answer, labels, expected):
    assert reference_of(answer, labels) == expected


# --- end to end -------------------------------------------------------------------------------------


def _cli_env(root: Path, target: FakeLLMServer) -> dict:
    return {
        "PROMPTOPT_DATA_DIR": str(root / "data"),
        "PROMPTOPT_PROMPTS_DIR": str(root / "prompts"),
        "PROMPTOPT_TASK__BACKEND": "openai",
        "PROMPTOPT_TASK__MODEL": TARGET,
        "PROMPTOPT_TASK__BASE_URL": target.openai_base_url,
        "PROMPTOPT_TASK__INPUT_PRICE_PER_MTOK": "0.15",
        "PROMPTOPT_TASK__OUTPUT_PRICE_PER_MTOK": "0.6",
        "PROMPTOPT_TASK__MAX_ATTEMPTS": "2",
        "PROMPTOPT_TASK__BACKOFF_INITIAL_S": "0.01",
        "OPENAI_API_KEY": KEY,
    }


@pytest.mark.slow
def test_migration_through_the_cli_agreement_before_and_after_and_a_free_rerun(tmp_path):
    root = sms_project(tmp_path / "project", unlabeled=("train",))  # train has no labels: accepted in migration
    state, report_path = root / "state", tmp_path / "report.json"
    with FakeLLMServer("openai", answer=source_model) as src, FakeLLMServer("openai", answer=target_model) as tgt:
        write_optimizations(
            root,
            {
                "sms_spam": {**SEARCH, "source_model": source_block(src)},
                "sms_spam_plain": {**SEARCH, "dataset": "sms_spam"},
            },
        )
        env = _cli_env(root, tgt)
        refused = run_cli(state, env, "--optimization", "sms_spam_plain", cwd=root)
        assert refused.returncode == 2, refused.stderr[-3000:]
        assert (src.request_count, tgt.request_count) == (0, 0)
        error = refused.stderr.strip().splitlines()[-1]
        assert error.startswith(
            f"error: Dataset file {root / 'data' / 'sms_spam' / 'train.csv'} is missing the "
            "column(s) ground_truth_output"
        ), error
        assert "set `source_model` on the optimization in data/optimizations.yaml" in error

        done = run_cli(state, env, "--optimization", "sms_spam", "--report-json", str(report_path), cwd=root)
        assert done.returncode == 0, done.stderr[-4000:]
        print(done.stdout)  # the summary docs/optimizers.md shows (`pytest ... -k cli -s`)
        rows = all_rows(root)
        assert source_calls(src) == len(rows), "the source answers every row once"
        src.reset()
        tgt.reset()
        again = run_cli(state, env, "--optimization", "sms_spam", cwd=root)
        assert again.returncode == 0, again.stderr[-4000:]
        assert (src.request_count, tgt.request_count) == (0, 0), "the rerun is served from the response cache"

    # references are the source's answers, not the CSV's labels, and the loop reads them
    refs = warehouse(state, "select * from promptopt.migration_references")
    expected = {(s, u): source_label(u) for s, u in zip(rows["split"], rows["user_input"])}
    assert len(refs) == len(rows) and set(refs["status"]) == {"ok"}
    assert all(r == expected[(s, u)] for s, u, r in zip(refs["split"], refs["user_input"], refs["reference"]))
    assert set(refs["source_answer"]) == {"Spam.", "Ham."}
    labeled = refs[refs["split"] != "train"]
    assert labeled["dataset_label"].notna().all() and refs[refs["split"] == "train"]["dataset_label"].isna().all()
    assert (labeled["reference"] != labeled["dataset_label"]).any(), "the rule should disagree with some labels"
    loop_rows = warehouse(
        state,
        "select split, user_input, ground_truth_output from promptopt.optimization_rows "
        "where optimization = 'sms_spam'",
    )
    assert all(
        g == expected[(s, u)]
        for s, u, g in zip(loop_rows["split"], loop_rows["user_input"], loop_rows["ground_truth_output"])
    )

    report = json.loads(report_path.read_text())
    migration = report["migration"]
    test_refs = [expected[("test", u)] for u in rows[rows["split"] == "test"]["user_input"]]
    assert migration["source_model"] == f"openai/{SOURCE}" and migration["task_model"] == f"openai/{TARGET}"
    before, after = migration["agreement"]["before"], migration["agreement"]["after"]
    assert before == report["initial_test_score"] == pytest.approx(test_refs.count("spam") / len(test_refs))
    assert after == report["best_test_score"] == 1.0
    assert migration["agreement"]["intervals"]["initial"] and migration["agreement"]["intervals"]["best"]
    labels = migration["dataset_labels"]
    assert labels["rows"] == SIZES["test"] and labels["source"] == labels["best"] < 1.0
    cost = migration["cost"]
    assert cost["source"]["model"] == f"openai/{SOURCE}" and cost["source"]["llm_calls"] == len(rows)
    assert cost["source"]["cost_usd"] > 0 and cost["task"]["llm_calls"] > 0 and cost["task"]["cost_usd"] > 0
    per = migration["per_answer"]
    assert per["source"]["cost_usd_per_1k_answers"] > per["task"]["cost_usd_per_1k_answers"] > 0
    assert report["usage"]["by_model"][f"openai/{SOURCE}"]["llm_calls"] == len(rows)
    assert (
        f"migration from openai/{SOURCE}: agreement with its answers on {SIZES['test']} test rows: before 0.1500"
    ) in done.stdout  # the figure docs/optimizers.md quotes
    assert "cost: source" in done.stdout


def _defs(root: Path, tmp_path: Path, target: FakeLLMServer) -> dg.Definitions:
    db = str(tmp_path / "warehouse.duckdb")
    model = dict(model_dir=str(tmp_path / "models"), threads=1, cache_path=str(tmp_path / "llm_cache.sqlite"))
    return build_definitions(
        {
            "project": ProjectResource(data_dir=str(root / "data"), prompts_dir=str(root / "prompts")),
            "task_model": LLMResource(
                backend="openai",
                model=TARGET,
                base_url=target.openai_base_url,
                api_key=KEY,
                max_attempts=2,
                backoff_initial_s=0.01,
                **model,
            ),
            "optimizer_model": LLMResource(backend="fake", **model),
            "judge_model": LLMResource(backend="fake", **model),
            "warehouse": WarehouseResource(database=db),
            "io_manager": WarehouseIOManager(database=db, schema="promptopt"),
            "artifact_io_manager": LocalArtifactIOManager(
                root=str(tmp_path / "artifacts"), database=db, schema="promptopt"
            ),
        }
    )


def _failure(result) -> str:
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            while error.cause is not None:
                error = error.cause
            return error.message
    return ""


def test_migration_through_dagster_and_labels_required_outside_it(tmp_path, monkeypatch):
    # Partitions come from the project's own data dir: the optimization is sms_spam's, its settings passed in.
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    root = sms_project(tmp_path / "project", unlabeled=("train", "dev"))
    with (
        FakeLLMServer("openai", answer=source_model) as src,
        FakeLLMServer("openai", answer=target_model) as tgt,
        dg.instance_for_test() as instance,
    ):
        defs = _defs(root, tmp_path, tgt)
        write_optimizations(root, {})  # no migration: a file without labels is refused, naming it and the fix
        failed = prepare(defs, instance, "sms_spam")
        assert not failed.success
        message = _failure(failed)
        assert f"{root / 'data' / 'sms_spam' / 'train.csv'} is missing the column(s) ground_truth_output" in message
        assert "set `source_model`" in message

        entry = {**SEARCH, "source_model": source_block(src)}
        write_optimizations(root, {"sms_spam": entry})
        assert prepare(defs, instance, "sms_spam").success
        spec = OptimizationSpec(name="sms_spam", dataset="sms_spam", **entry)
        started = start(defs, instance, spec)
        assert started.success, _failure(started)
        meta = started.asset_materializations_for_node("migration_references")[0].metadata
        rows = all_rows(root)
        assert (meta["migration"].value, meta["references"].value, meta["llm_calls"].value) == (
            True,
            len(rows),
            len(rows),
        )
        assert source_calls(src) == len(rows)
        refs = started.output_for_node("migration_references")
        assert all(r == source_label(u) for u, r in zip(refs["user_input"], refs["reference"]))

        generation = generation_of(started)
        ensure_iteration(instance, generation, 0)
        iteration = defs.resolve_job_def("optimize_iteration").execute_in_process(
            partition_key=iteration_key("sms_spam", generation, 0), instance=instance, raise_on_error=False
        )
        assert iteration.success, _failure(iteration)
        report = defs.resolve_job_def("final_report_job").execute_in_process(
            partition_key="sms_spam", instance=instance, raise_on_error=False
        )
        assert report.success, _failure(report)
        final = report.asset_materializations_for_node("final_report")[0].metadata
        assert final["agreement_before"].value < final["agreement_after"].value == 1.0
        assert "agreement_before_low_95" in final and "Migration from `openai/source-large`" in final["migration"].value
        assert final["report"].value["migration"]["references"]["statuses"] == {"ok": len(rows)}

        # the same rows started as a plain optimization: refused, naming the files; the stored settings stay
        src.reset()
        plain = start(defs, instance, OptimizationSpec(name="sms_spam", dataset="sms_spam", **SEARCH))
        assert not plain.success
        message = _failure(plain)
        assert (
            "Optimization 'sms_spam' has no source_model, and dataset file(s) "
            f"{root / 'data' / 'sms_spam' / 'train.csv'}, {root / 'data' / 'sms_spam' / 'dev.csv'}"
            " have no ground_truth_output column"
        ) in message, message
        assert "set `source_model` for optimizations.sms_spam in data/optimizations.yaml" in message
        assert src.request_count == 0
        settings = warehouse(tmp_path, "select generation, current from promptopt.optimization_settings")
        assert settings.to_dict("records") == [{"generation": generation, "current": True}]
        again = start(defs, instance, spec)  # the migration again: every source answer from the cache
        assert again.success and src.request_count == 0
