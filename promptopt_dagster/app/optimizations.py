"""Named optimizations: one YAML entry says what is optimized, with which models, optimizer and rules.

Teams compare optimizers and models on the same data, so an optimization, not a dataset, is the unit
that has a history. Every dataset of the manifest gets a default optimization of the same name on
the embedded model (so `promptopt optimize --dataset sst2` needs no YAML); `optimizations.yaml` adds
named ones, in the spirit of promptfoo's config and dao-ai's `prompt_optimizations:`.

The settings that decide results are fingerprinted: an edited entry is a new generation of its
optimization, never a continuation of the old one's search.
"""

from __future__ import annotations

import hashlib
import json
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from promptopt_dagster.app.datasets import DatasetSpec, check_name
from promptopt_dagster.core.decisions import Budget, StopPolicy, StopRules, confidence_field
from promptopt_dagster.core.errors import PromptOptError
from promptopt_dagster.core.objective import Objective
from promptopt_dagster.core.yaml_input import load_yaml_file, sentence, unknown_key_message, validation_message
from promptopt_dagster.llm.model_settings import PROMPT_SERVICES, ModelSettings
from promptopt_dagster.optimizers.registry import optimizer_class, optimizer_names, validate_options

#: every optimizer's name, from the optimizer registry: OptimizationSpec's Literal and the CLI's --optimizer
#: choices are built from it
OPTIMIZERS = optimizer_names()
#: spare rows by default: enough for a race to see a 3-point difference between two prompts that the
#: 100 select rows cannot (a paired difference's standard error on 300 rows is about 2 points)
SPARE_SIZE = 200
OptimizerName = Literal[OPTIMIZERS]  # Literal[("a", "b")] is Literal["a", "b"]


class OptimizationConfigError(PromptOptError):
    """An optimizations.yaml entry that cannot run: names the file, the key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(ModelSettings):
    """A model as optimizations.yaml names it: ModelSettings, with unknown keys refused (a typo in a
    model block would otherwise silently run the default model)."""

    model_config = ConfigDict(extra="forbid")


class OptimizationSpec(_Strict):
    name: str = Field(
        description="the optimization's name: its key under `optimizations:`, not a key inside the entry; 1 to 64 "
        "letters, digits, '_', '.' or '-', starting with a letter or digit (it becomes a Dagster partition key and "
        "a file name)"
    )
    dataset: str = Field(
        description="the dataset of data/manifest.yaml it optimizes; an entry named after a dataset replaces that "
        "dataset's default optimization",
        json_schema_extra={"default_text": "the entry's name, when that is a dataset's"},
    )
    description: str = Field(
        "", description="free text for people; not fingerprinted, so editing it is no new generation"
    )
    task_model: ModelSpec | None = Field(
        None,
        description="the model that answers rows; none: the model the environment configures (PROMPTOPT_TASK__*, "
        "the embedded one by default)",
    )
    source_model: ModelSpec | None = Field(
        None,
        description="model migration: this model's answers (with the dataset's initial prompt) become the references "
        "the task model's prompt is optimized to agree with; the dataset then needs no ground_truth_output column",
    )
    optimizer: OptimizerName = Field(
        "fewshot",
        description="fewshot: search demos and instructions; reflective: an LLM rewrites the prompt once an "
        "iteration from the worst rows; gepa: GEPA's reflective evolution of the instructions; metaprompt: a rewrite "
        "from guidelines alone; vertex: Google's Vertex AI Prompt Optimizer suggests the instruction (all but fewshot "
        "need a capable optimizer model; vertex needs optimizer backend vertex_prompt_optimizer)",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="the optimizer's own options (the table of options by optimizer)"
    )
    optimizer_model: ModelSpec | None = Field(
        None,
        description="the model the optimizer asks (reflective, gepa, metaprompt, vertex); none: the model the "
        "environment configures (PROMPTOPT_OPTIMIZER__*)",
    )
    judge_model: ModelSpec | None = Field(
        None,
        description="not supported yet, refused with a message: the llm_judge scorer asks the PROMPTOPT_JUDGE__* model",
    )
    target_metric: str | None = Field(
        None,
        description="what the loop accepts and stops on: one of the dataset's scorers or 'aggregate'",
        json_schema_extra={"default_text": "target_metric in data/manifest.yaml"},
    )  # what None means
    stop: StopRules = Field(default_factory=StopRules, description="when the loop stops and what it accepts")
    budget: Budget = Field(
        default_factory=Budget,
        description="caps on the whole optimization, checked after each iteration (the iteration that crosses a "
        "cap finishes)",
    )
    objective: Objective = Field(
        default_factory=Objective,
        description="what to value when candidates differ in cost: ceilings on prompt tokens or seconds per row, "
        "or the cheapest prompt within some points of the best; empty: the best score",
    )
    eval_size: int = Field(
        200, ge=0, description="confirm rows: dev rows on which a refined prompt is accepted or rejected (0: all)"
    )
    select_size: int = Field(
        100, ge=1, description="select rows: other dev rows on which the optimizer compares its candidates"
    )
    spare_size: int = Field(
        SPARE_SIZE,
        ge=0,
        description="spare rows: rows besides the select rows on which an optimizer may race its leading candidates "
        "(dev rows in neither select nor confirm, topped up with train rows held out of the demo pool when dev has "
        "too few; 0: no race)",
    )
    test_size: int = Field(500, ge=0, description="held-out test rows in the report (0: all)")
    confidence: float = confidence_field()
    max_failed_fraction: float = Field(
        0.02, ge=0.0, le=1.0, description="share of rows that may end in an error before an iteration fails"
    )
    seed: int = Field(0, description="seeds row sampling and the optimizer's choices")

    _name = field_validator("name")(check_name)

    @field_validator("task_model", "source_model")  # both answer rows
    @classmethod
    def _answers_rows(cls, value):
        if value is not None and value.backend in PROMPT_SERVICES:
            raise ValueError(
                f"{value.backend} rewrites prompts and cannot answer rows; it can only be the "
                "optimizer_model of optimizer: vertex"
            )
        return value

    @field_validator("source_model")
    @classmethod
    def _not_the_task_model(cls, value, info: ValidationInfo):
        task = info.data.get("task_model")
        if value is not None and task is not None and same_model(value, task):
            raise ValueError(
                f"source_model is the task model ({describe_model(value)}): a migration moves a prompt "
                "from one model to another. Name the model the prompt was written for as source_model "
                "and the model it moves to as task_model, or remove source_model"
            )
        return value

    @field_validator("judge_model")
    @classmethod
    def _no_judge_yet(cls, value):
        if value is not None:
            raise ValueError(
                "a judge model per optimization is not supported yet; remove the key and set "
                "PROMPTOPT_JUDGE__* for the judge"
            )
        return value

    @field_validator("options")
    @classmethod
    def _known_options(cls, options: dict, info: ValidationInfo) -> dict:
        if "optimizer" in info.data:  # else the optimizer itself is wrong, and said so
            validate_options(info.data["optimizer"], options)
        return options

    def fingerprint(self, dataset: DatasetSpec) -> str:
        """What decides results, hashed: an edit to any of it starts a new generation. That is this entry
        and its dataset's manifest entry (labels, label_descriptions, scorers, target_metric, initial_prompt,
        max_output_tokens, completion_stop, files), as validated, so a default spelt out does not count as
        an edit. Names and descriptions do not count; API keys are never settings, so they cannot reach it.
        The contents of the files (CSV rows, the initial prompt) are data, not settings: not in it."""
        if dataset.name != self.dataset:
            raise ValueError(f"optimization {self.name!r} optimizes dataset {self.dataset!r}, not {dataset.name!r}")
        # no source model, no objective, the default spare rows: those keys are left out, as before
        # migrations, objectives and spare rows were settings
        exclude = {
            "name",
            "description",
            *(() if self.source_model is not None else ("source_model",)),
            *(() if self.objective.stated else ("objective",)),
            *(() if self.spare_size != SPARE_SIZE else ("spare_size",)),
        }
        payload = self.model_dump(mode="json", exclude=exclude)
        payload["dataset_settings"] = dataset.model_dump(mode="json", exclude={"name", "description"})
        text = json.dumps(payload, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def stop_policy(self) -> StopPolicy:
        return StopPolicy(**self.stop.model_dump(), confidence=self.confidence, budget=self.budget)

    def optimizer_options(self) -> dict:
        """The optimizer's options, with those it takes from the optimization's settings unless set (fewshot's
        race follows `confidence`)."""
        follows = optimizer_class(self.optimizer).defaults_from_optimization
        return {**{option: getattr(self, setting) for option, setting in follows.items()}, **self.options}

    def summary(self) -> str:
        model = self.task_model or ModelSettings()
        source = f", migrating from {describe_model(self.source_model)}" if self.source_model is not None else ""
        return f"{self.name}: {self.dataset}, {self.optimizer} on {describe_model(model)}{source}"


#: what makes two model settings the same model (rates, timeouts and prices do not)
_MODEL_IDENTITY = ("backend", "model", "base_url", "vertexai", "project", "location")


def same_model(a: ModelSettings, b: ModelSettings) -> bool:
    return all(getattr(a, f) == getattr(b, f) for f in _MODEL_IDENTITY)


def describe_model(model: ModelSettings) -> str:
    return f"{model.backend}/{model.model or 'default'}"


def default_optimization(dataset: str) -> OptimizationSpec:
    """What `promptopt optimize --dataset NAME` runs when optimizations.yaml does not name NAME."""
    return OptimizationSpec(
        name=dataset, dataset=dataset, description=f"the default optimization of {dataset} (embedded model, fewshot)"
    )


def _spec_error(path: Path, name: str, exc: ValidationError) -> OptimizationConfigError:
    problems = validation_message(exc, ("optimizations", name), OptimizationSpec)
    return OptimizationConfigError(sentence(f"{path}: {problems}"))


def load_optimizations(path: Path, datasets: typing.Iterable[str]) -> dict[str, OptimizationSpec]:
    """Every optimization by name: a default per dataset, then the file's entries (which may replace
    a default by using the dataset's name). A missing file is no error: the defaults remain."""
    datasets = list(datasets)
    specs = {name: default_optimization(name) for name in datasets}
    path = Path(path)
    if not path.exists():
        return specs
    raw = (
        load_yaml_file(
            path,
            OptimizationConfigError,
            "Fix the syntax; the file needs an `optimizations:` mapping of names to entries.",
        )
        or {}
    )
    if isinstance(raw, dict) and any(key != "optimizations" for key in raw):
        key = next(str(key) for key in raw if key != "optimizations")
        raise OptimizationConfigError(
            f"{path}: {key}: {unknown_key_message(key, ['optimizations'])} (the file holds "
            "one `optimizations:` mapping of names to entries)."
        )
    entries = raw.get("optimizations") if isinstance(raw, dict) else None
    if entries is None:
        return specs
    if not isinstance(entries, dict):
        raise OptimizationConfigError(
            f"{path}: `optimizations:` must map names to entries, e.g. "
            "`optimizations: {sst2_big: {dataset: sst2, eval_size: 400}}`."
        )
    for name, entry in entries.items():
        if entry is None:
            entry = {}
        if not isinstance(entry, dict):
            raise OptimizationConfigError(
                f"{path}: optimizations.{name} must be a mapping of settings, got {type(entry).__name__}."
            )
        entry = dict(entry)
        if "dataset" not in entry and str(name) in datasets:
            entry["dataset"] = str(name)
        try:
            spec = OptimizationSpec(name=str(name), **entry)
        except ValidationError as exc:
            raise _spec_error(path, str(name), exc) from None
        except TypeError as exc:
            raise OptimizationConfigError(f"{path}: optimizations.{name}: {exc}.") from None
        if spec.dataset not in datasets:
            raise OptimizationConfigError(
                f"{path}: optimizations.{name}.dataset: {spec.dataset!r} is not a dataset of the manifest "
                f"({', '.join(sorted(datasets))}). Name one of those, or add the dataset to data/manifest.yaml."
            )
        if spec.name in datasets and spec.dataset != spec.name:
            raise OptimizationConfigError(
                f"{path}: optimizations.{name}.dataset: {spec.dataset!r}, but {name!r} is a dataset of the manifest, "
                f"and `--dataset {name}` must optimize that dataset. Rename the entry (e.g. "
                f"{spec.dataset}_{name}), or drop its dataset key to replace {name}'s default."
            )
        specs[spec.name] = spec
    return specs


def assign_generation(known: list[dict], spec: OptimizationSpec, dataset: DatasetSpec) -> tuple[int, list[dict]]:
    """The generation a start of `spec` on `dataset` (its manifest entry) belongs to, and the generations
    known after it.

    Settings seen before (same fingerprint) continue their generation, so a rerun repeats nothing
    (its answers are cached); new settings, of the optimization or of its dataset's entry, open the next
    generation, whose partitions are new, so the old generation's rows and report stay as they were."""
    fingerprint = spec.fingerprint(dataset)
    for row in known:
        if row["fingerprint"] == fingerprint:
            return int(row["generation"]), known
    generation = max((int(row["generation"]) for row in known), default=0) + 1
    return generation, [
        *known,
        {"generation": generation, "fingerprint": fingerprint, "spec": spec.model_dump(mode="json")},
    ]
