"""docs/reference/ is generated from the models' fields (app/reference.py): the checked-in pages must be what the
generator writes, and the generator must tell the truth about the fields (every key, its bounds, its choices, its
default, and a description for each)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from promptopt_dagster.app import reference
from promptopt_dagster.app.datasets import MANIFEST_KEYS, DatasetSpec
from promptopt_dagster.app.optimizations import OPTIMIZERS, OptimizationSpec
from promptopt_dagster.app.settings import PROJECT_ROOT, Settings, _known_names
from promptopt_dagster.core.decisions import Budget, StopRules
from promptopt_dagster.llm.model_settings import ModelSettings
from promptopt_dagster.optimizers.registry import optimizer_class
from promptopt_dagster.scoring.suite import ScorerSpec

PAGES = reference.generate()


@pytest.mark.parametrize("name", sorted(PAGES))
def test_the_checked_in_page_is_what_the_models_generate(name):
    path = PROJECT_ROOT / "docs" / "reference" / name
    assert path.exists(), f"docs/reference/{name} is missing: run `{reference.COMMAND}`"
    assert path.read_text(encoding="utf-8") == PAGES[name], (
        f"docs/reference/{name} differs from the models' fields: run `{reference.COMMAND}` and commit the result"
    )


def test_check_mode_reports_a_stale_page_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(reference, "REFERENCE_DIR", tmp_path)
    monkeypatch.setattr(reference, "PROJECT_ROOT", tmp_path)
    assert reference.main(["--check"]) == 1 and not list(tmp_path.iterdir())
    assert reference.main([]) == 0 and sorted(p.name for p in tmp_path.iterdir()) == sorted(PAGES)
    assert reference.main(["--check"]) == 0
    (tmp_path / "manifest.md").write_text("edited by hand\n")
    assert reference.main(["--check"]) == 1 and "stale manifest.md" in capsys.readouterr().out


def _rows(page: str) -> dict[str, list[str]]:
    """Each table row by each key its first cell names: {key: [type, default, description]}."""
    rows = {}
    for line in page.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        for key in re.findall(r"`([^`]+)`", cells[0]):
            rows[key] = cells[1:]
    return rows


def _paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every key of a model as the YAML reference writes it, through nested models and lists of models."""
    out = []
    for name, field in model.model_fields.items():
        out.append(prefix + name)
        inner = reference.plain(field.annotation)
        item = getattr(inner, "__args__", (None,))[0] if getattr(inner, "__origin__", None) is list else None
        for sub, suffix in ((inner, "."), (item, "[].")):
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                out += _paths(sub, prefix + name + suffix)
    return out


OPTIMIZATIONS = _rows(PAGES["optimizations-yaml.md"].split("## `options`, by optimizer")[0])
MANIFEST = _rows(PAGES["manifest.md"])
SETTINGS = _rows(PAGES["settings.md"])


def test_every_key_of_an_optimization_entry_has_a_row():
    paths = _paths(OptimizationSpec)
    assert {"stop.patience", "budget.max_cost_usd", "task_model.backend", "source_model.rpm"} <= set(paths)
    missing = [p for p in paths if p not in OPTIMIZATIONS]
    assert not missing, f"keys without a row in optimizations-yaml.md: {missing}"
    assert len(paths) == len(OPTIMIZATIONS)  # and no row for a key the model lacks


def test_every_key_of_a_manifest_entry_and_the_top_level_have_rows():
    paths = _paths(DatasetSpec)
    assert "scorers[].weight" in paths
    assert [p for p in paths if p not in MANIFEST] == []
    assert [k for k in MANIFEST_KEYS if f"{k}.NAME" not in MANIFEST] == []


def test_every_setting_the_environment_takes_has_a_row():
    """settings.check_dotenv refuses any other name, so this is the list a user may write."""
    assert [name for name in _known_names() if name not in SETTINGS] == []
    assert "PROMPTOPT_JUDGE__RPM" in SETTINGS and "PROMPTOPT_GCS_BUCKET" in SETTINGS


def test_choices_bounds_and_defaults_are_the_fields():
    assert OPTIMIZATIONS["optimizer"][:2] == ["one of " + ", ".join(OPTIMIZERS), "`fewshot`"]
    assert OPTIMIZATIONS["stop.max_iterations"][:2] == ["int ≥ 1", f"`{StopRules().max_iterations}`"]
    assert OPTIMIZATIONS["select_size"][0] == "int ≥ 1" and OPTIMIZATIONS["eval_size"][0] == "int ≥ 0"
    assert OPTIMIZATIONS["max_failed_fraction"][:2] == ["float in [0, 1]", "`0.02`"]
    assert OPTIMIZATIONS["confidence"][0] == "float in [0.5, 0.999]"
    assert OPTIMIZATIONS["budget.max_cost_usd"][:2] == ["float ≥ 0", f"`{Budget().max_cost_usd:g}`"]
    assert OPTIMIZATIONS["task_model.json_mode"][0] == "one of schema, object, off"
    assert OPTIMIZATIONS["target_metric"][1] == "target_metric in data/manifest.yaml"  # what None stands for
    assert MANIFEST["scorers[].weight"][:2] == ["float ≥ 0", "`1`"]
    assert MANIFEST["completion_stop"][1] == '`["\\n"]`' and MANIFEST["files"][1] == "required"
    assert SETTINGS["PROMPTOPT_DEPLOYMENT"][0] == "one of local, gcs, cluster"
    assert SETTINGS["PROMPTOPT_MAX_CONCURRENT_RUNS"][:2] == ["int ≥ 1", "`3`"]
    assert SETTINGS["PROMPTOPT_TASK__MAX_ATTEMPTS"][1] == f"`{ModelSettings().max_attempts}`"


def test_descriptions_are_the_fields_own_text():
    for rows, model, key in (
        (OPTIMIZATIONS, OptimizationSpec, "eval_size"),
        (OPTIMIZATIONS, StopRules, "stop.patience"),
        (MANIFEST, ScorerSpec, "scorers[].options"),
        (SETTINGS, Settings, "PROMPTOPT_STATE_DIR"),
    ):
        name = key.rsplit(".", 1)[-1].removeprefix("scorers[].").removeprefix("PROMPTOPT_").lower()
        assert rows[key][2] == " ".join(model.model_fields[name].description.split()).replace("|", "\\|")
    assert "\\|" in SETTINGS["PROMPTOPT_TASK__BACKEND"][2]  # a | in a description cannot split the table


def test_every_documented_field_has_a_description():
    """The reference is only as good as the fields' text: a new field without one fails here (and the
    generator refuses it), naming the field."""
    models = [OptimizationSpec, StopRules, Budget, ModelSettings, DatasetSpec, ScorerSpec, Settings]
    bare = [f"{m.__name__}.{n}" for m in models for n, f in m.model_fields.items() if not (f.description or "").strip()]
    assert bare == []


def test_a_field_without_a_description_is_refused():
    class Spec(BaseModel):
        documented: int = Field(1, description="has text")
        undocumented: int = 2

    with pytest.raises(ValueError, match=r"Spec\.undocumented has no description: add Field\(description=\.\.\.\)"):
        reference.model_tables(Spec, reference.yaml_key)


def test_a_changed_field_changes_its_row():
    """The rows are read from the field, not written beside it: another model gives other rows."""

    class Rules(BaseModel):
        patience: int = Field(7, gt=2, lt=10, description="give up after this many flat iterations")

    class Spec(BaseModel):
        mode: Literal["a", "b"] = Field("b", description="which one")
        rules: Rules = Field(default_factory=Rules, description="the rules")
        names: list[str] = Field(default_factory=lambda: ["x"], description="some names")
        ratio: float | None = Field(None, le=1, description="a share")

    rows = {row.keys[0]: row for row in reference.model_tables(Spec, reference.yaml_key)[0].rows}
    assert (rows["mode"].type, rows["mode"].default) == ("one of a, b", "`b`")
    assert (rows["rules.patience"].type, rows["rules.patience"].default) == ("int in (2, 10)", "`7`")
    assert rows["rules.patience"].description == "give up after this many flat iterations"
    assert (rows["names"].type, rows["names"].default) == ("list of strings", '`["x"]`')
    assert (rows["ratio"].type, rows["ratio"].default) == ("float ≤ 1", "none")


def test_the_pages_hold_nothing_of_the_machine_that_made_them():
    text = "".join(PAGES.values())
    assert str(PROJECT_ROOT) not in text and str(Path.home()) not in text
    assert SETTINGS["PROMPTOPT_STATE_DIR"][1] == "`<repository>/.promptopt`"
    assert SETTINGS["PROMPTOPT_LLM_THREADS"][1] == "the number of CPU cores"


def test_every_optimizer_option_is_listed():
    options = PAGES["optimizations-yaml.md"].split("## `options`, by optimizer")[1]
    for optimizer in OPTIMIZERS:
        for option in optimizer_class(optimizer).Options.model_fields:
            assert f"| `{optimizer}` | `{option}` |" in options, (optimizer, option)
    assert "| `fewshot` | `race_confidence` | float in [0.5, 1) | the entry's `confidence` |" in options


def test_the_docs_link_to_the_reference_pages():
    configuration = (PROJECT_ROOT / "docs" / "configuration.md").read_text()
    for name in PAGES:
        assert f"(reference/{name})" in configuration
