"""Datasets and optimizations: the rows, and the settings each optimization runs with.

`dataset_splits` is one partition per dataset. `optimization` is one partition per optimization: it
records the settings of the generation being started (from data/optimizations.yaml, or the CLI's
flags applied to it) and gives the optimization its own copy of its dataset's rows, which the
iteration assets read through a plain partition mapping. In a model migration (a `source_model`) those
rows carry the source model's answers from `migration_references` (defs/datasets/migration.py) as their
references; a dataset file without labels is accepted only then.
"""

import json
from pathlib import Path

import dagster as dg
import pandas as pd

from promptopt_dagster.app.migration import (
    MigrationError,
    apply_references,
    references_fingerprint,
    unlabeled_files,
    unlabeled_message,
)
from promptopt_dagster.app.optimizations import assign_generation
from promptopt_dagster.app.quality import dataset_gate
from promptopt_dagster.core.errors import MissingLabelsError
from promptopt_dagster.defs.datasets.migration import start_spec
from promptopt_dagster.defs.metadata import gate
from promptopt_dagster.defs.partitions import (
    DATASET_EXPR,
    OPTIMIZATION_EXPR,
    dataset_partitions,
    optimization_partitions,
    optimizations_of_dataset,
)
from promptopt_dagster.defs.resources import LLMResource, ProjectResource
from promptopt_dagster.defs.table_types import SPLITS, DatasetSplitsFrame, column_schema

SETTINGS_COLUMNS = {
    "optimization": "string",
    "generation": "int64",
    "fingerprint": "string",
    "dataset": "string",
    "current": "bool",
    "spec_json": "string",
}


@dg.asset(
    partitions_def=dataset_partitions,
    metadata={**DATASET_EXPR, **column_schema(SPLITS)},
    group_name="datasets",
    dagster_type=DatasetSplitsFrame,
    check_specs=[
        dg.AssetCheckSpec(
            "splits_valid_and_disjoint",
            asset="dataset_splits",
            blocking=True,
            description="Columns present, no split empty, no input in two splits.",
        )
    ],
)
def dataset_splits(context: dg.AssetExecutionContext, project: ProjectResource):
    """train / dev / test rows of one dataset, validated on load (bad files fail before any LLM call)."""
    spec = project.spec(context.partition_key)
    suite = project.suite(context.partition_key)  # an unknown scorer or option fails here, before any model call
    try:
        splits = project.splits(context.partition_key)
    except MissingLabelsError:  # a file without labels passes only where a model migration supplies them
        migrations = project.migrations_of(context.partition_key)
        if not migrations:
            raise
        context.log.info(
            f"a file of dataset {context.partition_key} has no ground_truth_output column; loaded for "
            f"the model migration(s) {', '.join(migrations)}, whose references come from the source model"
        )
        splits = project.splits(context.partition_key, unlabeled_ok=True)
    frame = splits.to_frame()
    counts = frame["split"].value_counts().to_dict()
    yield dg.Output(
        frame,
        metadata={
            **{f"rows_{s}": dg.MetadataValue.int(int(n)) for s, n in counts.items()},
            "labels": ", ".join(spec.labels),
            "target_metric": suite.target,
            "scorers": suite.describe(),
        },
    )
    yield gate("splits_valid_and_disjoint", dataset_gate(frame), "dataset_splits")


class StartConfig(dg.Config):
    """What `promptopt optimize` passes: the entry with its flags applied. Empty: the YAML entry as it is."""

    spec_json: str = ""


def _known_generations(context: dg.AssetExecutionContext) -> list[dict]:
    """The generations this optimization had, from its own latest materialization."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("optimization_settings"), asset_partitions=[context.partition_key]),
        limit=1,
    ).records
    if not records:
        return []
    value = records[0].asset_materialization.metadata.get("generations")
    return list(getattr(value, "data", value) or [])


@dg.multi_asset(
    partitions_def=optimization_partitions,
    group_name="optimizations",
    can_subset=False,
    ins={
        "dataset_splits": dg.AssetIn(partition_mapping=optimizations_of_dataset),
        "migration_references": dg.AssetIn(),
    },
    outs={
        "optimization_settings": dg.AssetOut(
            metadata=OPTIMIZATION_EXPR,
            description=(
                "Every generation of the optimization: its settings, fingerprint and number; `current` marks the "
                "generation started last."
            ),
        ),
        "optimization_rows": dg.AssetOut(
            metadata=OPTIMIZATION_EXPR,
            description=(
                "The rows of the optimization's dataset, as the iterations and the final report read them; in a "
                "model migration their ground_truth_output is the source model's answer (migration_references)."
            ),
        ),
    },
)
def optimization(
    context: dg.AssetExecutionContext,
    config: StartConfig,
    dataset_splits: pd.DataFrame,
    migration_references: pd.DataFrame,
    project: ProjectResource,
    task_model: LLMResource,
    optimizer_model: LLMResource,
):
    """Start (or continue) an optimization: settle its generation, then hand its rows to the loop."""
    name = context.partition_key
    spec = start_spec(config.spec_json, project, name, task_model, optimizer_model)  # checked: see start_spec
    # the rows first: a bad input fails here, before this start changes any stored setting
    rows = dataset_splits.copy()
    if spec.source_model is not None:
        try:
            rows = apply_references(
                rows, migration_references, references_fingerprint(spec, project.initial_prompt(spec.dataset)), name
            )
        except MigrationError as exc:
            raise dg.Failure(str(exc)) from None
    else:
        unlabeled = unlabeled_files(rows, project.spec(spec.dataset).files)
        if unlabeled:
            raise dg.Failure(unlabeled_message(name, unlabeled, Path(project.data_dir)))
    dataset_spec = project.spec(spec.dataset)  # its manifest entry is part of the fingerprint too
    generation, known = assign_generation(_known_generations(context), spec, dataset_spec)
    fingerprint = spec.fingerprint(dataset_spec)
    settings = pd.DataFrame(
        [
            {
                "optimization": name,
                "generation": g["generation"],
                "fingerprint": g["fingerprint"],
                "dataset": g["spec"]["dataset"],
                "current": g["generation"] == generation,
                "spec_json": json.dumps(g["spec"], sort_keys=True),
            }
            for g in known
        ],
        columns=list(SETTINGS_COLUMNS),
    ).astype(SETTINGS_COLUMNS)
    context.log.info(f"optimization {name}: generation {generation} ({spec.summary()}, fingerprint {fingerprint})")
    yield dg.Output(
        settings,
        output_name="optimization_settings",
        metadata={
            "generation": generation,
            "fingerprint": fingerprint,
            "dataset": spec.dataset,
            "optimizer": spec.optimizer,
            "generations": dg.MetadataValue.json(known),
            "settings": dg.MetadataValue.json(spec.model_dump(mode="json")),
        },
    )
    rows.insert(0, "optimization", name)
    yield dg.Output(rows, output_name="optimization_rows", metadata={"rows": len(rows), "dataset": spec.dataset})
