"""Model migration as an asset: the source model's answers, which become the references the loop reads.

`migration_references` sits between `dataset_splits` and `optimization`, one partition per
optimization. For an optimization with a `source_model` the source model answers the optimization's
rows with the dataset's initial prompt, through the same client factory and response cache as every
other call (a rerun is served from the cache and pays nothing); `optimization` then writes those
answers as the `ground_truth_output` of `optimization_rows`. For any other optimization it is an
empty table. The domain logic is app/migration.py.
"""

import dagster as dg
import pandas as pd

from promptopt_dagster.app.datasets import DatasetSplits
from promptopt_dagster.app.migration import (
    MigrationError,
    build_references,
    check_references,
    empty_references,
    reference_form,
    references_fingerprint,
    references_summary,
    rows_to_answer,
    typed,
)
from promptopt_dagster.app.optimizations import OptimizationSpec, describe_model
from promptopt_dagster.app.preflight import preflight
from promptopt_dagster.app.settings import get_settings
from promptopt_dagster.core.errors import PromptOptError
from promptopt_dagster.defs.metadata import usage_metadata
from promptopt_dagster.defs.partitions import OPTIMIZATION_EXPR, optimization_partitions, optimizations_of_dataset
from promptopt_dagster.defs.resources import LLMResource, ProjectResource
from promptopt_dagster.llm import usage as llm_usage
from promptopt_dagster.llm.inference import predict


class MigrationConfig(dg.Config):
    """The settings `optimization` gets (`promptopt optimize` passes both); empty: the YAML entry as it is."""

    spec_json: str = ""


def start_spec(
    spec_json: str, project: ProjectResource, name: str, task_model: LLMResource, optimizer_model: LLMResource
) -> OptimizationSpec:
    """The settings a start runs with (passed by the launch, else optimizations.yaml's), after the pre-run
    checks. Every start goes through here (CLI, submit, a UI launch, a backfill), first in
    migration_references, before a source model answers any row, then in `optimization`. The model
    resources are the deployment's models, which an optimization naming none runs on."""
    spec = OptimizationSpec.model_validate_json(spec_json) if spec_json else project.optimization(name)
    if spec.name != name:
        raise dg.Failure(f"The settings passed are for optimization {spec.name!r}, not {name!r}.")
    try:
        preflight(
            spec,
            project.spec(spec.dataset),
            task_default=task_model.settings(),
            optimizer_default=optimizer_model.settings(),
            build_suite=lambda: project.suite(spec.dataset, target=spec.target_metric),
        )
    except PromptOptError as exc:
        raise dg.Failure(f"Optimization {name!r} cannot start: {exc}") from None
    return spec


@dg.asset(
    partitions_def=optimization_partitions,
    metadata=OPTIMIZATION_EXPR,
    group_name="optimizations",
    ins={"dataset_splits": dg.AssetIn(partition_mapping=optimizations_of_dataset)},
)
def migration_references(
    context: dg.AssetExecutionContext,
    config: MigrationConfig,
    dataset_splits: pd.DataFrame,
    project: ProjectResource,
    task_model: LLMResource,
    optimizer_model: LLMResource,
) -> pd.DataFrame:
    """Model migration: the source model's answer to every row the optimization reads (train, dev and the
    report's test rows), with the dataset's initial prompt. They become the rows' references, so the
    target model's prompt is optimized to agree with the source. Empty for an optimization with no
    source_model."""
    name = context.partition_key
    spec = start_spec(config.spec_json, project, name, task_model, optimizer_model)
    if spec.source_model is None:
        context.add_output_metadata({"migration": False, "rows": 0})
        return empty_references()
    if dataset_splits.empty:
        raise dg.Failure(
            f"Dataset '{spec.dataset}' has no rows in the warehouse: launch the prepare_dataset job for "
            f"partition '{spec.dataset}' first (`promptopt optimize` does)."
        )
    dataset = project.spec(spec.dataset)
    initial = project.initial_prompt(spec.dataset)
    fingerprint = references_fingerprint(spec, initial)
    client = task_model.client_for(spec.source_model, role="source")
    source = f"{describe_model(spec.source_model)} ({client.model_key})"
    form = None if dataset.labels else reference_form([scorer.name for scorer in dataset.scorers])
    parts, usage = [], {}
    for split, rows in rows_to_answer(DatasetSplits.from_frame(spec.dataset, dataset_splits), spec).items():
        answers = predict(
            client,
            initial,
            rows,
            dataset.max_output_tokens,
            label=f"source answers {name} {split}",
            progress_interval_s=get_settings().progress_interval_s,
            stop=tuple(dataset.completion_stop),
            where=dataset.files[split],
        )
        parts.append(build_references(name, split, rows, answers, dataset.labels, fingerprint, form))
        usage = llm_usage.merge(usage, llm_usage.from_rows(answers.to_dict("records")))
    references = typed(pd.concat(parts, ignore_index=True))
    try:
        check_references(references, spec.max_failed_fraction, source)
    except MigrationError as exc:
        raise dg.Failure(str(exc)) from None
    summary = references_summary(references, dataset.labels)
    t = llm_usage.total(usage)
    dropped = len(references) - sum(summary["references_by_split"].values())
    context.log.info(
        f"migration_references {name}: {len(references)} rows answered by the source model {source}, "
        f"{t.llm_calls} by the model, {t.cache_hits} from cache; {dropped} without a reference "
        f"({summary['statuses']})"
    )
    if dropped:
        context.log.warning(
            f"{dropped} row(s) have no reference (the source call failed, or its answer names no "
            "label) and are left out of the optimization's rows"
        )
    agreement = summary["source_vs_dataset_labels"]
    context.add_output_metadata(
        {
            "migration": True,
            "source_model": client.model_key,
            "rows": len(references),
            "references": sum(summary["references_by_split"].values()),
            "without_reference": dropped,
            "summary": dg.MetadataValue.json(summary),
            "fingerprint": fingerprint,
            **({"source_vs_dataset_labels": dg.MetadataValue.float(agreement)} if agreement is not None else {}),
            "sample": dg.MetadataValue.md(_sample_md(references)),
            **usage_metadata(usage),
        }
    )
    return references


def _sample_md(references: pd.DataFrame, limit: int = 10) -> str:
    lines = ["| split | row | input | source answer | reference | dataset label |", "|---|---|---|---|---|---|"]
    for r in references.head(limit).to_dict("records"):
        cells = [
            r["split"],
            str(r["row_id"]),
            *(_cell(r[c]) for c in ("user_input", "source_answer", "reference", "dataset_label")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value, width: int = 60) -> str:
    text = "" if value is None or value is pd.NA or value != value else str(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"
