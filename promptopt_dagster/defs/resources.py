"""Resources: where the data lives, which models answer, and the knobs of one optimization.

`OptimizationConfig` is configured at launch, so the CLI, the launchpad and the sensor (which copies
the previous iteration's run config) all run every iteration of one optimization with the same
settings.
"""


from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from promptopt_dagster.core.datasets import DatasetSpec, DatasetSplits, load_manifest, load_splits
from promptopt_dagster.core.decisions import StopPolicy
from promptopt_dagster.core.errors import ManifestError
from promptopt_dagster.core.prompts import PromptVersion
from promptopt_dagster.llm.base import LLMClient
from promptopt_dagster.llm.factory import ModelSettings, build_client
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

    def splits(self, dataset: str) -> DatasetSplits:
        return load_splits(self.spec(dataset), Path(self.data_dir))

    def initial_prompt(self, dataset: str) -> PromptVersion:
        return PromptVersion.load(Path(self.prompts_dir) / self.spec(dataset).initial_prompt)


class LLMResource(dg.ConfigurableResource):
    """One model (task or optimizer): backend and model name, behind the response cache.

    Sampling is part of each request (greedy for the task), not of the resource."""

    backend: str = "local"
    model: str | None = None
    model_dir: str
    threads: int
    cache_path: str | None = None  # None disables the response cache

    _client: LLMClient | None = PrivateAttr(default=None)

    def get_client(self) -> LLMClient:
        if self._client is None:
            settings = ModelSettings(backend=self.backend, model=self.model)
            self._client = build_client(settings, Path(self.model_dir), self.threads,
                                        Path(self.cache_path) if self.cache_path else None)
        return self._client


class OptimizationConfig(dg.ConfigurableResource):
    """How one optimization runs; every field has a default that works on the embedded model."""

    optimizer: str = "fewshot"
    eval_size: int = 200  # dev rows scored per prompt; 0 = the whole dev split
    test_size: int = 500  # held-out test rows in the final report; 0 = the whole test split
    max_iterations: int = 5
    target_score: float = 0.95
    patience: int = 2
    min_improvement: float = 0.0
    num_candidates: int = 6  # fewshot: candidates tried per iteration
    minibatch_size: int = 50  # fewshot: dev rows each candidate is scored on
    max_failed_fraction: float = 0.0  # prediction gate: share of rows allowed to end in an error
    seed: int = 0

    def stop_policy(self) -> StopPolicy:
        return StopPolicy(target_score=self.target_score, patience=self.patience,
                          max_iterations=self.max_iterations, min_improvement=self.min_improvement)

    def optimizer_options(self) -> dict:
        if self.optimizer == "fewshot":
            return {"num_candidates": self.num_candidates, "minibatch_size": self.minibatch_size}
        return {}


def default_resources() -> dict:
    """Resources for the embedded default: everything local, under the project's state dir."""
    from dagster_duckdb import DuckDBResource

    from promptopt_dagster.defs.io_managers import WarehouseIOManager

    s = get_settings()
    s.state_dir.mkdir(parents=True, exist_ok=True)
    llm = dict(model_dir=str(s.model_dir), threads=s.llm_threads, cache_path=str(s.llm_cache_path))
    return {
        "project": ProjectResource(data_dir=str(s.data_dir), prompts_dir=str(s.prompts_dir)),
        "task_model": LLMResource(backend=s.task_backend, model=s.task_model, **llm),
        "optimizer_model": LLMResource(backend=s.optimizer_backend, model=s.optimizer_model, **llm),
        "optimization": OptimizationConfig.configure_at_launch(),
        "warehouse": DuckDBResource(database=str(s.warehouse_path)),
        "io_manager": WarehouseIOManager(database=str(s.warehouse_path), schema="promptopt"),
    }
