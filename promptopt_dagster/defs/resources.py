"""Resources: where the data lives, which models answer, and the knobs of one optimization.

`OptimizationConfig` is configured at launch, so the CLI, the launchpad and the sensor (which copies
the previous iteration's run config) all run every iteration of one optimization with the same
settings.
"""


import json
import os
from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from promptopt_dagster.core.datasets import DatasetSpec, DatasetSplits, load_manifest, load_splits, load_user_scorers
from promptopt_dagster.core.decisions import Budget, StopPolicy
from promptopt_dagster.core.errors import ManifestError
from promptopt_dagster.core.prompts import PromptVersion
from promptopt_dagster.llm.base import LLMClient
from promptopt_dagster.llm.factory import build_client
from promptopt_dagster.llm.model_settings import ModelSettings
from promptopt_dagster.scoring.registry import ScorerRegistry
from promptopt_dagster.scoring.suite import ScoringSuite
from promptopt_dagster.settings import get_settings


class ProjectResource(dg.ConfigurableResource):
    """The dataset manifest, the CSV splits and the initial prompts on disk."""

    data_dir: str
    prompts_dir: str

    def manifest(self) -> dict[str, DatasetSpec]:
        return load_manifest(Path(self.data_dir) / "manifest.yaml")

    def spec(self, dataset: str) -> DatasetSpec:
        specs = self.manifest()
        if dataset not in specs:
            raise ManifestError(f"Dataset '{dataset}' is not in {Path(self.data_dir) / 'manifest.yaml'}; "
                                f"known: {', '.join(sorted(specs))}. Add an entry there.")
        return specs[dataset]

    def scorer_registry(self) -> ScorerRegistry:
        """Built-ins, entry points and the manifest's `scorers:`; a name clash fails here."""
        path = Path(self.data_dir) / "manifest.yaml"
        return ScorerRegistry(load_user_scorers(path), config_source=str(path))

    def suite(self, dataset: str, judge_model: "LLMResource | None" = None,
              target: str | None = None) -> ScoringSuite:
        """The dataset's scorers, checked; `target` overrides the manifest's target_metric for one run."""
        spec = self.spec(dataset)
        return ScoringSuite(spec.scorers, target or spec.target_metric, self.scorer_registry(), spec.labels,
                            judge_client=judge_model.get_client if judge_model is not None else None,
                            where=f"{Path(self.data_dir) / 'manifest.yaml'}, dataset '{dataset}'")

    def splits(self, dataset: str) -> DatasetSplits:
        return load_splits(self.spec(dataset), Path(self.data_dir))

    def initial_prompt(self, dataset: str) -> PromptVersion:
        return PromptVersion.load(Path(self.prompts_dir) / self.spec(dataset).initial_prompt)


class LLMResource(dg.ConfigurableResource, ModelSettings):
    """One model (task or optimizer): every ModelSettings knob, the API key, and the response cache.

    Give `api_key` as `dg.EnvVar("NAME")` so run config and the UI show the variable's name, never
    the key. Sampling is part of each request (greedy for the task), not of the resource."""

    api_key: str | None = None  # None: read the variable named by api_key_env (or the backend default)
    model_dir: str
    threads: int
    cache_path: str | None = None  # None disables the response cache

    _client: LLMClient | None = PrivateAttr(default=None)

    def settings(self) -> ModelSettings:
        return ModelSettings(**{name: getattr(self, name) for name in ModelSettings.model_fields})

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._client is not None:
            self._client.close()

    def get_client(self) -> LLMClient:
        if self._client is None:
            self._client = build_client(self.settings(), Path(self.model_dir), self.threads,
                                        Path(self.cache_path) if self.cache_path else None, api_key=self.api_key)
        return self._client


class OptimizationConfig(dg.ConfigurableResource):
    """How one optimization runs; every field has a default that works on the embedded model."""

    optimizer: str = "fewshot"
    eval_size: int = 200  # confirm rows: dev rows on which a refinement is accepted; 0 = the whole dev split
    select_size: int = 100  # select rows: other dev rows on which the optimizer compares its candidates
    # a refinement's gain must hold at this confidence (paired bootstrap, confirm rows); the fewshot
    # search's cost rule uses it too (a costlier candidate must be surely better on the select rows)
    confidence: float = 0.9
    test_size: int = 500  # held-out test rows in the final report; 0 = the whole test split
    max_iterations: int = 5
    target_score: float = 0.95
    patience: int = 2
    min_improvement: float = 0.0
    num_candidates: int = 8  # fewshot: candidates tried per iteration
    minibatch_size: int = 30  # fewshot: select rows a candidate must win on before it is scored on all of them
    max_failed_fraction: float = 0.02  # prediction gate: share of rows allowed to end in an error
    max_requests: int = 0  # budget of the whole optimization in model calls (retries included); 0 = none
    max_tokens: int = 0  # budget in prompt + completion tokens; 0 = none
    max_cost_usd: float = 0.0  # budget in estimated US dollars (llm/prices.yaml); 0 = none
    max_metric_calls: int = 0  # budget in rows scored, candidates and comparisons together; 0 = none
    target_metric: str | None = None  # overrides the manifest's: a scorer name or "aggregate"
    seed: int = 0
    # further options of the optimizer, as JSON (optimizations.yaml `options:`); they win over the two above
    options_json: str = "{}"

    def stop_policy(self) -> StopPolicy:
        return StopPolicy(target_score=self.target_score, patience=self.patience,
                          max_iterations=self.max_iterations, min_improvement=self.min_improvement,
                          confidence=self.confidence,
                          budget=Budget(max_requests=self.max_requests, max_tokens=self.max_tokens,
                                        max_cost_usd=self.max_cost_usd, max_metric_calls=self.max_metric_calls))

    def optimizer_options(self) -> dict:
        options = json.loads(self.options_json or "{}")
        if self.optimizer == "fewshot":
            return {"num_candidates": self.num_candidates, "minibatch_size": self.minibatch_size,
                    "cost_confidence": self.confidence, **options}
        return options


def model_resource(settings: ModelSettings) -> LLMResource:
    """A model resource from settings; the key stays an EnvVar reference so no run config holds it."""
    s = get_settings()
    key_env = settings.key_env()
    api_key = dg.EnvVar(key_env) if key_env and os.environ.get(key_env) else None
    return LLMResource(**settings.model_dump(), api_key=api_key, model_dir=str(s.model_dir), threads=s.llm_threads,
                       cache_path=str(s.llm_cache_path))


def default_resources() -> dict:
    """Resources for the embedded default: everything local, under the project's state dir."""
    from dagster_duckdb import DuckDBResource

    from promptopt_dagster.defs.io_managers import WarehouseIOManager

    s = get_settings()
    s.state_dir.mkdir(parents=True, exist_ok=True)
    return {
        "project": ProjectResource(data_dir=str(s.data_dir), prompts_dir=str(s.prompts_dir)),
        "task_model": model_resource(s.task),
        "optimizer_model": model_resource(s.optimizer),
        "judge_model": model_resource(s.judge),
        "optimization": OptimizationConfig.configure_at_launch(),
        "warehouse": DuckDBResource(database=str(s.warehouse_path)),
        "io_manager": WarehouseIOManager(database=str(s.warehouse_path), schema="promptopt"),
    }
