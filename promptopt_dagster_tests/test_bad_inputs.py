"""The bad-input corpus: every file or flag a new user gets wrong, as one table run through the real CLI.

Each row breaks one thing in a project that has already been optimized once, runs
`promptopt optimize --dataset sst2`, and expects exit 2, one `error:` line with the row's fragment and
no traceback, and every stored byte as it was (a refused start must not overwrite the leaderboard row
of the run before it). The next case is one more row. Below the table: the YAML bombs within the time
the issue asks for, and a real manifest edit opening generation 2 under Dagster.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import dagster as dg
import pytest

from promptopt_dagster.app.datasets import load_manifest
from promptopt_dagster.app.optimizations import OptimizationConfigError, load_optimizations
from promptopt_dagster.app.settings import PROJECT_ROOT
from promptopt_dagster.core.errors import ManifestError
from promptopt_dagster_tests.test_cli import _promptopt, _small_project, _tables

#: the small project's manifest: the sst2 entry of data/manifest.yaml
MANIFEST = (PROJECT_ROOT / "data" / "manifest.yaml").read_text().split("  sms_spam:")[0]
HEADER = "user_input,ground_truth_output\n"


def manifest(old: str, new: str) -> str:
    """The small project's manifest with one edit."""
    assert old in MANIFEST, old
    return MANIFEST.replace(old, new, 1)


def laughs(levels: int = 9) -> str:
    """Billion laughs as a YAML list of anchors: &l8 expands to 9**9 'lol's."""
    rows = ["  - &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"]
    rows += [f"  - &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, levels)]
    return "lols:\n" + "".join(rows)


DEEP = "[" * 100_000 + "]" * 100_000

#: where each kind of input lives in the project
FILES = {
    "manifest": "data/manifest.yaml",
    "optimizations": "data/optimizations.yaml",
    "dev.csv": "data/sst2/dev.csv",
    "train.csv": "data/sst2/train.csv",
    "prompt": "prompts/sst2.json",
    ".env": ".env",
}
#: a .env's other lines are not ours to judge, and a key in it must never be printed
DOTENV = "# mine\nOPENAI_API_KEY=sk-not-ours-to-judge\n"

# (input, case, content (flags: the argv added), exit code, fragment(s) of the one error line)
CASES = [
    # data/manifest.yaml: unknown keys name the closest known one (issue 22, defect 1)
    (
        "manifest",
        "lables",
        manifest("labels:", "lables:"),
        2,
        "datasets.sst2.lables: not a known key; did you mean 'labels'?",
    ),
    (
        "manifest",
        "target_metrc",
        manifest("target_metric:", "target_metrc:"),
        2,
        "datasets.sst2.target_metrc: not a known key; did you mean 'target_metric'?",
    ),
    (
        "manifest",
        "completion_stops",
        MANIFEST + "    completion_stops: ['\\n']\n",
        2,
        "datasets.sst2.completion_stops: not a known key; did you mean 'completion_stop'?",
    ),
    (
        "manifest",
        "top_level_key",
        MANIFEST.replace("datasets:", "dataset:"),
        2,
        "dataset: not a known key; did you mean 'datasets'?",
    ),
    ("manifest", "name_key", MANIFEST + "    name: other\n", 2, "datasets.sst2.name: not a known key"),
    (
        "manifest",
        "split_typo",
        manifest("test: sst2/test.csv", "test: sst2/test.csv, tset: x.csv"),
        2,
        "datasets.sst2.files.tset: not a split; the splits are train, dev, test",
    ),
    (
        "manifest",
        "duplicate_key",
        MANIFEST + "    labels: [pos, neg]\n",
        2,
        "the key 'labels' appears twice in one mapping",
    ),
    # manifest type errors and names: one line, the key, the value got, what is expected (defect 8)
    (
        "manifest",
        "type_int",
        manifest("max_output_tokens: 4", "max_output_tokens: four"),
        2,
        "datasets.sst2.max_output_tokens: should be a valid integer, unable to parse string as an integer (got 'four')",
    ),
    (
        "manifest",
        "type_list",
        manifest("labels: [positive, negative]", "labels: positive"),
        2,
        "datasets.sst2.labels: should be a valid list (got 'positive')",
    ),
    (
        "manifest",
        "entry_not_mapping",
        MANIFEST.split("  sst2:")[0] + "  sst2: [a, b]\n",
        2,
        "datasets.sst2: should be a mapping of settings",
    ),
    ("manifest", "name_traversal", manifest("  sst2:", "  ../../x:"), 2, "datasets.'../../x': not a usable name"),
    (
        "manifest",
        "missing_initial_prompt",
        manifest("    initial_prompt: sst2.json\n", ""),
        2,
        "datasets.sst2.initial_prompt: required; add it",
    ),
    # YAML bombs and broken YAML (defect 3)
    (
        "manifest",
        "billion_laughs_in_labels",
        manifest("labels: [positive, negative]", "labels: *l8").replace("datasets:", laughs() + "datasets:", 1),
        2,
        "once its aliases (*name) are expanded",
    ),
    (
        "manifest",
        "deep_nesting",
        manifest("labels: [positive, negative]", f"labels: {DEEP}"),
        2,
        "nested more than 50 levels deep",
    ),
    (
        "manifest",
        "self_alias",
        manifest("labels: [positive, negative]", "labels: &me [positive, *me]"),
        2,
        "the alias *me is used inside its own anchor &me",
    ),
    ("manifest", "bad_syntax", MANIFEST + "    labels: [positive\n", 2, "not valid YAML"),
    ("manifest", "too_large", MANIFEST + "# " + "x" * (1024 * 1024) + "\n", 2, "larger than 1 MiB"),
    (
        "optimizations",
        "billion_laughs_in_description",
        laughs() + "optimizations:\n  sst2:\n    description: *l8\n",
        2,
        "once its aliases (*name) are expanded",
    ),
    ("optimizations", "deep_nesting", f"optimizations: {DEEP}\n", 2, "nested more than 50 levels deep"),
    (
        "optimizations",
        "not_utf8",
        "optimizations:\n  sst2:\n    description: caf\xe9\n".encode("latin-1"),
        2,
        "line 3 has the byte 0xe9, which is not UTF-8",
    ),
    # data/optimizations.yaml
    (
        "optimizations",
        "stop_patience",
        "optimizations:\n  sst2:\n    stop: {patience: 0}\n",
        2,
        "optimizations.sst2.stop.patience: should be greater than or equal to 1 (got 0)",
    ),
    (
        "optimizations",
        "eval_sise",
        "optimizations:\n  sst2:\n    eval_sise: 10\n",
        2,
        "optimizations.sst2.eval_sise: not a known key; did you mean 'eval_size'?",
    ),
    (
        "optimizations",
        "top_level_key",
        "optimisations:\n  sst2: {eval_size: 10}\n",
        2,
        "optimisations: not a known key; did you mean 'optimizations'?",
    ),
    (
        "optimizations",
        "name_traversal",
        "optimizations:\n  ../../x: {dataset: sst2}\n",
        2,
        "optimizations.'../../x': not a usable name",
    ),
    # CSV splits (defect 8: our words, the line and the column)
    (
        "dev.csv",
        "too_many_fields",
        HEADER + "good,positive\nbad, really,negative\n",
        2,
        "is not valid CSV: line 3 has 3 fields where the header has 2. Quote fields",
    ),
    (
        "dev.csv",
        "unclosed_quote",
        HEADER + 'good,positive\n"bad,negative\nfine,positive\n',
        2,
        "a quoted field that starts on line 3 is never closed",
    ),
    (
        "dev.csv",
        "empty_fields",
        HEADER + "good,positive\n ,negative\nok,\n",
        2,
        "an empty user_input in data row(s) 2 and an empty ground_truth_output in data row(s) 3",
    ),
    (
        "dev.csv",
        "missing_column",
        "user_input,label\nfine film,positive\n",
        2,
        "missing the column(s) ground_truth_output (found: user_input, label). The first line must be the header",
    ),
    (
        "dev.csv",
        "latin1",
        b"user_input,ground_truth_output\ngood,positive\ncaf\xe9 noir,negative\n",
        2,
        "is not UTF-8: line 3 has the byte 0xe9",
    ),
    ("train.csv", "header_only", HEADER, 2, "has a header but no rows. Add labeled examples"),
    # the initial prompt
    (
        "prompt",
        "no_placeholder",
        json.dumps({"system_prompt": "Classify.", "output_prompt": "Review:\nSentiment:"}),
        2,
        "output_prompt must contain the placeholder {user_input} exactly once (found 0)",
    ),
    ("prompt", "not_json", '{"system_prompt": "Classify.",', 2, "is not valid JSON"),
    # .env in the folder the command runs in: PROMPTOPT_* lines are settings, checked like every other input
    (
        ".env",
        "unknown_setting",
        DOTENV + "PROMPTOPT_STAT_DIR=elsewhere\n",
        2,
        ".env: PROMPTOPT_STAT_DIR is not a promptopt setting; did you mean PROMPTOPT_STATE_DIR?",
    ),
    (
        ".env",
        "unknown_model_knob",
        DOTENV + "PROMPTOPT_TASK__BAKEND=openai\n",
        2,
        "PROMPTOPT_TASK__BAKEND is not a promptopt setting; did you mean PROMPTOPT_TASK__BACKEND?",
    ),
    (
        ".env",
        "type_int",
        DOTENV + "PROMPTOPT_MAX_CONCURRENT_RUNS=many\n",
        2,
        ".env: PROMPTOPT_MAX_CONCURRENT_RUNS: Input should be a valid integer",
    ),
    (
        ".env",
        "type_choice",
        DOTENV + "PROMPTOPT_DEPLOYMENT=cloud\n",
        2,
        ".env: PROMPTOPT_DEPLOYMENT: Input should be 'local', 'gcs' or 'cluster' (got 'cloud')",
    ),
    (
        ".env",
        "cache_url_with_password",  # refused, and the password is not echoed (the check below: not in the output)
        DOTENV + "PROMPTOPT_CACHE_URL=postgresql://promptopt:hunter2-secret@db.internal:5432/promptopt\n",
        2,
        ".env: PROMPTOPT_CACHE_URL: the Postgres URL holds a password; remove it and set PGPASSWORD "
        "(or ~/.pgpass) instead.",
    ),
    (".env", "cache_url_not_postgres", DOTENV + "PROMPTOPT_CACHE_URL=mysql://db/x\n", 2, "is not a Postgres URL"),
    (
        ".env",
        "cluster_without_warehouse",
        DOTENV + "PROMPTOPT_DEPLOYMENT=cluster\nPROMPTOPT_GCS_BUCKET=b\n",
        2,
        ".env: PROMPTOPT_DEPLOYMENT=cluster needs PROMPTOPT_WAREHOUSE_URL (a Postgres database).",
    ),
    # flags
    ("flags", "eval_size_negative", ["--eval-size", "-5"], 2, "argument --eval-size: must be 0 or more, got -5"),
    (
        "flags",
        "max_iterations_zero",
        ["--max-iterations", "0"],
        2,
        "argument --max-iterations: must be 1 or more, got 0",
    ),
    ("flags", "patience_zero", ["--patience", "0"], 2, "argument --patience: must be 1 or more, got 0"),
    (
        "flags",
        "failed_fraction",
        ["--max-failed-fraction", "1.5"],
        2,
        "argument --max-failed-fraction: must be between 0 and 1, got 1.5",
    ),
    ("flags", "target_score_text", ["--target-score", "x"], 2, "argument --target-score: expected a number, got 'x'"),
    (
        "flags",
        "option_unknown",
        ["--option", "num_candidate=3"],
        2,
        "--option: unknown fewshot option(s) 'num_candidate'",
    ),
    (
        "flags",
        "option_refused",
        ["--option", "minibatch_size=0"],
        2,
        "minibatch_size: should be greater than or equal to 1",
    ),
    ("flags", "option_no_value", ["--option", "num_candidates"], 2, "expected KEY=VALUE"),
    (
        "flags",
        "option_bad_yaml",
        ["--option", "num_candidates=[4"],
        2,
        "--option num_candidates: line 1, column 3: not valid YAML",
    ),
    ("flags", "option_deep", ["--option", f"num_candidates={'[' * 5000}"], 2, "nested more than 50 levels deep"),
    ("flags", "unknown_dataset", ["--dataset", "imdb"], 2, ("Dataset 'imdb' is not in", "manifest.yaml; known: sst2")),
]


@pytest.fixture(scope="module")
def optimized(tmp_path_factory):
    """One fake-model optimization whose stored results no refused input may change."""
    root = _small_project(tmp_path_factory.mktemp("bad_inputs"))
    done = _promptopt(
        root, "optimize", "--dataset", "sst2", "--max-iterations", "1", "--eval-size", "0", "--test-size", "0"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def _stored(root: Path) -> dict[str, str]:
    """Every stored file, by its bytes; not the home's dagster.yaml, configuration that the CLI rewrites to
    follow the settings (here: the state dir the copy moved), before it reads any input."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((root / "state").rglob("*"))
        if p.is_file() and p.name != "dagster.yaml"
    }


@pytest.mark.parametrize("kind, case, content, code, fragment", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_a_bad_input_is_one_error_line_and_changes_nothing(optimized, tmp_path, kind, case, content, code, fragment):
    root = tmp_path / "project"
    shutil.copytree(optimized, root)
    stored, tables = _stored(root), _tables(root)
    args = ["--max-iterations", "1", "--eval-size", "0", "--test-size", "0"]  # the settings of the stored run
    if kind == "flags":
        args = [*args, *content]
    else:
        path = root / FILES[kind]
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    argv = ["optimize", *(() if "--dataset" in args else ("--dataset", "sst2")), *args]
    done = _promptopt(root, *argv, timeout=120)  # a hang guard: before issue 22 a YAML bomb ran 40 to 90 s
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == code, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    assert all(f in lines[0] for f in ((fragment,) if isinstance(fragment, str) else fragment)), lines[0][:500]
    assert "Traceback" not in done.stderr and "pydantic.dev" not in lines[0] and "sk-not" not in done.stderr
    assert "hunter2" not in done.stderr + done.stdout  # a password in a refused setting is not repeated
    assert len(lines[0]) < 1000, lines[0][:300]
    if kind != "flags":
        assert str(path) in lines[0]
    assert _stored(root) == stored  # no table, run, cache entry or log written
    after = _tables(root)
    assert after.keys() == tables.keys() and all(after[n].equals(tables[n]) for n in tables)


# --- the YAML bombs of issue 22, within its 5 s, as the loaders see them ------------------------------------


@pytest.mark.parametrize(
    "file, text",
    [
        pytest.param(
            "manifest",
            manifest("labels: [positive, negative]", "labels: *l8").replace("datasets:", laughs() + "datasets:", 1),
            id="manifest-billion_laughs_in_labels",
        ),
        pytest.param(
            "manifest", manifest("labels: [positive, negative]", f"labels: {DEEP}"), id="manifest-100000_brackets"
        ),
        pytest.param(
            "optimizations",
            laughs() + "optimizations:\n  sst2:\n    description: *l8\n",
            id="optimizations-billion_laughs_in_description",
        ),
        pytest.param("optimizations", f"optimizations: {DEEP}\n", id="optimizations-100000_brackets"),
        pytest.param(
            "optimizations",
            "optimizations:\n" + "".join("  " * i + f"  k{i}:\n" for i in range(500)),
            id="optimizations-500_indented_levels",
        ),
    ],
)
def test_yaml_bombs_are_refused_in_one_line_within_5_s(tmp_path, file, text):
    path = tmp_path / f"{file}.yaml"
    path.write_text(text, encoding="utf-8")
    started = time.perf_counter()
    with pytest.raises((ManifestError, OptimizationConfigError)) as info:
        load_manifest(path) if file == "manifest" else load_optimizations(path, ["sst2"])
    assert time.perf_counter() - started < 5
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: line ") and len(message) < 300


def test_aliases_within_bounds_still_work(tmp_path):
    """Anchors are how a file shares one model block between entries: bounded, not banned."""
    path = tmp_path / "optimizations.yaml"
    path.write_text(
        "optimizations:\n  a: {dataset: sst2, task_model: &m {backend: openai, model: gpt-x}}\n"
        "  b: {dataset: sst2, task_model: *m, seed: 1}\n  c: {<<: {dataset: sst2}, seed: 2}\n"
    )
    specs = load_optimizations(path, ["sst2"])
    assert specs["a"].task_model == specs["b"].task_model and specs["b"].task_model.model == "gpt-x"
    assert specs["c"].seed == 2 and specs["c"].dataset == "sst2"


# --- a real manifest edit opens generation 2 (defect 1), under Dagster ------------------------------------------


def test_a_manifest_edit_opens_a_new_generation_and_a_description_does_not(tmp_path):
    """Before issue 22 an edited manifest entry (the `lables:` typo fixed, max_output_tokens raised) kept the
    fingerprint and continued generation 1, overwriting its rows and its leaderboard row."""
    from promptopt_dagster_tests.dagster_helpers import generation_of, make_defs, prepare, small_spec, start

    data = tmp_path / "data"
    data.mkdir()
    (data / "sst2").symlink_to(PROJECT_ROOT / "data" / "sst2", target_is_directory=True)
    (data / "manifest.yaml").write_text(MANIFEST)
    defs = make_defs(tmp_path, data_dir=data)
    with dg.instance_for_test() as instance:
        assert prepare(defs, instance).success
        spec = small_spec()

        def generation() -> int:
            result = start(defs, instance, spec, tags={"promptopt/driver": "cli"})
            assert result.success
            return generation_of(result)

        assert generation() == 1
        (data / "manifest.yaml").write_text(manifest("description: Movie", "description: Reworded movie"))
        assert generation() == 1  # the description decides nothing
        (data / "manifest.yaml").write_text(manifest("max_output_tokens: 4", "max_output_tokens: 8"))
        assert generation() == 2
        (data / "manifest.yaml").write_text(manifest("labels: [positive, negative]", "labels: [negative, positive]"))
        assert generation() == 3
        (data / "manifest.yaml").write_text(MANIFEST)
        assert generation() == 1  # the first entry again: its generation goes on
