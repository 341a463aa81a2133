"""The checks an optimization passes before it starts, wherever it starts.

`promptopt optimize` runs them before any run is recorded; the `optimization` asset, which every
start goes through (the CLI, `promptopt submit`, a launch from the UI, a backfill), runs them again,
so no start path reaches the model with settings that can only fail. Each problem is a
PromptOptError whose message names the setting and the fix.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from promptopt_dagster.app.datasets import DatasetSpec, DatasetSplits, sample_rows
from promptopt_dagster.app.optimizations import OptimizationSpec, describe_model, same_model
from promptopt_dagster.core.errors import PromptOptError
from promptopt_dagster.core.prompts import PromptVersion
from promptopt_dagster.llm import inference
from promptopt_dagster.llm.base import LLMClient
from promptopt_dagster.llm.model_settings import PROMPT_SERVICES, ModelSettings
from promptopt_dagster.optimizers.capabilities import writer_model_problem
from promptopt_dagster.scoring.suite import AGGREGATE, ScoringSuite


def check_target(optimization: OptimizationSpec, spec: DatasetSpec, flag: bool = False) -> None:
    """The target metric is one of the dataset's scorers or their weighted aggregate."""
    names = [s.name for s in spec.scorers]
    if optimization.target_metric and optimization.target_metric not in (*names, AGGREGATE):
        where = "--target-metric" if flag else f"optimizations.{optimization.name}.target_metric"
        raise PromptOptError(
            f"{where} {optimization.target_metric!r} is neither '{AGGREGATE}' nor one of the "
            f"scorers of dataset '{spec.name}' ({', '.join(names)}). Pass one of those, or leave "
            f"the flag out to use the manifest's target_metric ({spec.target_metric})."
        )


def check_models(optimization: OptimizationSpec, task_default: ModelSettings, optimizer_default: ModelSettings) -> None:
    """Optimizers that ask a model to write prompts refuse the embedded one up front, instead of running
    iterations whose every proposal is refused; the task model must answer rows; a migration moves a
    prompt between two models, so its source is not the task model. `*_default`: the deployment's
    models, used where the optimization names none."""
    model = optimization.optimizer_model or optimizer_default
    problem = writer_model_problem(optimization.optimizer, model.backend)
    if problem:
        raise PromptOptError(problem)
    task = optimization.task_model or task_default
    if task.backend in PROMPT_SERVICES:
        raise PromptOptError(
            f"the task model's backend is {task.backend}, which rewrites prompts and cannot answer "
            "rows. Set PROMPTOPT_TASK__BACKEND (or task_model) to local, gemini or openai."
        )
    if optimization.source_model is not None and same_model(optimization.source_model, task):
        raise PromptOptError(
            f"optimizations.{optimization.name}.source_model is the task model "
            f"({describe_model(task)}, from {'task_model' if optimization.task_model else 'PROMPTOPT_TASK__*'}): "
            "a migration moves a prompt from one model to another. Set task_model (or "
            "PROMPTOPT_TASK__*) to the model the prompt moves to."
        )


def check_fits_context(
    client: LLMClient,
    spec: DatasetSpec,
    splits: DatasetSplits,
    prompt: PromptVersion,
    optimization: OptimizationSpec,
    data_dir: Path,
) -> None:
    """The initial prompt over every dev and test row the run will use fits the task model's context."""
    for split, size in (("dev", optimization.eval_size), ("test", optimization.test_size)):
        rows = sample_rows(splits.split(split), size, optimization.seed)
        requests = inference.build_requests(client, prompt, rows, spec.max_output_tokens, tuple(spec.completion_stop))
        inference.check_context(client, requests, rows["row_id"].tolist(), prompt, str(data_dir / spec.files[split]))


def preflight(
    optimization: OptimizationSpec,
    spec: DatasetSpec,
    *,
    task_default: ModelSettings,
    optimizer_default: ModelSettings,
    build_suite: Callable[[], ScoringSuite],
    target_flag: bool = False,
) -> ScoringSuite:
    """Every check that needs no model: target metric, models, scorers (`build_suite` builds the
    dataset's scoring suite, which refuses unknown scorers, bad options and name clashes). The context
    check needs the task model's tokenizer and runs where a client is at hand (check_fits_context). Returns the suite."""
    check_target(optimization, spec, flag=target_flag)
    check_models(optimization, task_default, optimizer_default)
    return build_suite()
