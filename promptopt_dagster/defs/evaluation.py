"""What an iteration, the final report and a promotion share: a generation's settings, the dataset's
rows as stored, the task model's answers and their scores.

The loop, reporting and promotion areas all score prompts the same way; it lives here, below them,
so that no area imports another.
"""

import dagster as dg
import pandas as pd

from promptopt_dagster.app.datasets import DatasetSpec, DatasetSplits
from promptopt_dagster.app.optimizations import OptimizationSpec
from promptopt_dagster.app.settings import get_settings
from promptopt_dagster.core.prompts import PromptVersion
from promptopt_dagster.defs.metadata import snapshot, usage_since
from promptopt_dagster.defs.resources import LLMResource, ProjectResource
from promptopt_dagster.llm.base import LLMClient
from promptopt_dagster.llm.inference import predict
from promptopt_dagster.scoring.suite import ScoringSuite


def settings_of(optimization_settings: pd.DataFrame, generation: int) -> OptimizationSpec:
    """The settings of one generation, as stored when it started (an edited YAML does not reach it)."""
    rows = optimization_settings[optimization_settings["generation"] == generation]
    if rows.empty:
        raise dg.Failure(
            f"Generation {generation} of this optimization was never started: materialize "
            "`optimization` for it first (`promptopt optimize` and `promptopt submit` do)."
        )
    return OptimizationSpec.model_validate_json(rows.iloc[0]["spec_json"])


def predict_rows(
    client: LLMClient, prompt: PromptVersion, rows: pd.DataFrame, spec: DatasetSpec, label: str, split: str = "dev"
):
    return predict(
        client,
        prompt,
        rows,
        spec.max_output_tokens,
        label=label,
        progress_interval_s=get_settings().progress_interval_s,
        stop=tuple(spec.completion_stop),
        where=spec.files[split],
    )


def splits_of(optimization_rows: pd.DataFrame, dataset: str) -> DatasetSplits:
    """The dataset's rows as stored by optimization_rows; an iteration cannot start without them."""
    if optimization_rows.empty:
        raise dg.Failure(
            f"Dataset '{dataset}' has no rows in the warehouse: its splits were never loaded "
            f"(or failed to load). Materialize optimization_rows for '{dataset}' first: launch the "
            f"prepare_dataset job for partition '{dataset}' (a backfill of prepare_dataset over "
            "several datasets works too), then this iteration again. `promptopt optimize` does both."
        )
    return DatasetSplits.from_frame(dataset, optimization_rows)


def suite_of(
    project: ProjectResource, dataset: str, judge_model: LLMResource, optimization: OptimizationSpec
) -> ScoringSuite:
    return project.suite(dataset, judge_model, optimization.target_metric)


def score_answers(suite: ScoringSuite, judge_model: LLMResource, answers: pd.DataFrame):
    """Every scorer on a predictions table, plus what the judge model used doing it."""
    judge = [judge_model.get_client()] if suite.uses_judge else []  # the suite asks the resource's judge
    before = snapshot(judge)
    result = suite.score(
        answers["prediction"].tolist(), answers["ground_truth_output"].tolist(), inputs=answers["user_input"].tolist()
    )
    return result, usage_since(judge, before)
