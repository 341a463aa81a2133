"""Resources: where the data lives and which models answer.

An optimization's own settings are not a resource: they are stored with its generation (the
`optimization` asset), so every iteration of it runs with the settings it started with.
"""

import json
import os
from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from promptopt_dagster.app.datasets import DatasetSpec, DatasetSplits, load_manifest, load_splits, load_user_scorers
from promptopt_dagster.app.optimizations import OptimizationSpec, load_optimizations
from promptopt_dagster.app.settings import get_settings
from promptopt_dagster.core.errors import ManifestError
from promptopt_dagster.core.prompts import PromptVersion
from promptopt_dagster.llm import ledger, store_location
from promptopt_dagster.llm.base import LLMClient
from promptopt_dagster.llm.factory import build_client
from promptopt_dagster.llm.model_settings import ModelSettings, api_key_from_env
from promptopt_dagster.scoring.registry import ScorerRegistry
from promptopt_dagster.scoring.suite import ScoringSuite


class ProjectResource(dg.ConfigurableResource):
    """The dataset manifest, the CSV splits and the initial prompts on disk."""

    data_dir: str
    prompts_dir: str
    promoted_root: str = ""  # where promoted prompts are served; empty: <prompts_dir>/promoted

    def promoted_dir(self) -> str:
        """Where promoted prompts are served, read by applications: `<prompts dir>/promoted` locally, or
        `gs://BUCKET/PREFIX/promoted` in the gcs deployment."""
        return self.promoted_root or str(Path(self.prompts_dir) / "promoted")

    def manifest(self) -> dict[str, DatasetSpec]:
        return load_manifest(Path(self.data_dir) / "manifest.yaml")

    def optimization(self, name: str) -> OptimizationSpec:
        """The optimization as data/optimizations.yaml (or a dataset's default) defines it now."""

        specs = load_optimizations(Path(self.data_dir) / "optimizations.yaml", self.manifest())
        if name not in specs:
            raise ManifestError(
                f"Optimization '{name}' is neither in {Path(self.data_dir) / 'optimizations.yaml'} nor "
                f"a dataset of the manifest; known: {', '.join(sorted(specs))}."
            )
        return specs[name]

    def spec(self, dataset: str) -> DatasetSpec:
        specs = self.manifest()
        if dataset not in specs:
            raise ManifestError(
                f"Dataset '{dataset}' is not in {Path(self.data_dir) / 'manifest.yaml'}; "
                f"known: {', '.join(sorted(specs))}. Add an entry there."
            )
        return specs[dataset]

    def scorer_registry(self) -> ScorerRegistry:
        """Built-ins, entry points and the manifest's `scorers:`; a name clash fails here."""
        path = Path(self.data_dir) / "manifest.yaml"
        return ScorerRegistry(load_user_scorers(path), config_source=str(path))

    def suite(self, dataset: str, judge_model: "LLMResource | None" = None, target: str | None = None) -> ScoringSuite:
        """The dataset's scorers, checked; `target` overrides the manifest's target_metric for one run."""
        spec = self.spec(dataset)
        return ScoringSuite(
            spec.scorers,
            target or spec.target_metric,
            self.scorer_registry(),
            spec.labels,
            judge_client=judge_model.get_client if judge_model is not None else None,
            where=f"{Path(self.data_dir) / 'manifest.yaml'}, dataset '{dataset}'",
        )

    def splits(self, dataset: str, unlabeled_ok: bool = False) -> DatasetSplits:
        """The dataset's splits; files without labels pass only with `unlabeled_ok` (a model migration)."""
        return load_splits(self.spec(dataset), Path(self.data_dir), unlabeled_ok)

    def migrations_of(self, dataset: str) -> list[str]:
        """The optimizations of the dataset that name a source_model (their references need no labels)."""

        specs = load_optimizations(Path(self.data_dir) / "optimizations.yaml", self.manifest())
        return sorted(name for name, s in specs.items() if s.dataset == dataset and s.source_model is not None)

    def initial_prompt(self, dataset: str) -> PromptVersion:
        return PromptVersion.load(Path(self.prompts_dir) / self.spec(dataset).initial_prompt)


class LLMResource(dg.ConfigurableResource, ModelSettings):
    """One model (task or optimizer): every ModelSettings knob, the API key, and the response cache.

    Give `api_key` as `dg.EnvVar("NAME")` so run config and the UI show the variable's name, never
    the key. Sampling is part of each request (greedy for the task), not of the resource.

    Every client handed out is attributed to the asset asking for it (run, optimization, generation,
    iteration, and this resource's role), so each call it pays is recorded in the usage ledger
    (llm/ledger.py) under the optimization that made it, whatever becomes of the run."""

    api_key: str | None = None  # None: read the variable named by api_key_env (or the backend default)
    model_dir: str
    threads: int
    cache_path: str | None = None  # a file or a postgresql:// URL; None disables the cache (and the usage ledger)
    role: str = "task"  # what its calls are recorded as in the usage ledger: task, optimizer or judge

    _client: LLMClient | None = PrivateAttr(default=None)
    _named: dict = PrivateAttr(default_factory=dict)

    def settings(self) -> ModelSettings:
        return ModelSettings(**{name: getattr(self, name) for name in ModelSettings.model_fields})

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        for client in [self._client, *self._named.values()]:
            if client is not None:
                client.close()

    def get_client(self) -> LLMClient:
        if self._client is None:
            self._client = build_client(
                self.settings(),
                Path(self.model_dir),
                self.threads,
                store_location.resolve(self.cache_path),
                api_key=self.api_key,
            )
        return attribute(self._client, self.role)

    def client_for(self, model: ModelSettings | None, role: str | None = None) -> LLMClient:
        """The client of the model an optimization names, or this resource's own when it names none.

        A named model's key comes from the environment variable its settings name, never from the
        settings themselves, so no key reaches a table or the run config. `role`: what its calls are
        recorded as in the usage ledger, when not this resource's role (a migration's "source")."""
        if model is None:
            return attribute(self.get_client(), role or self.role)
        key = json.dumps(model.model_dump(mode="json"), sort_keys=True)
        if key not in self._named:
            self._named[key] = build_client(
                ModelSettings(**model.model_dump()),
                Path(self.model_dir),
                self.threads,
                store_location.resolve(self.cache_path),
                api_key=api_key_from_env(model),
            )
        return attribute(self._named[key], role or self.role)


def attribute(client: LLMClient, role: str) -> LLMClient:
    """Attribute the client's paid calls to the asset executing now; the one place the ledger's tags are set.

    The run and the partition say whose calls they are: an iteration's key names optimization,
    generation and iteration; an optimization's key (migration_references, final_report) names the
    optimization only, and its final report gives those calls their generation (ledger.claim). Outside
    an asset (the CLI's checks, a test) the calls are recorded with optimization NULL. Steps of one
    process run one at a time, so the client carries the tags of the asset that asked for it last."""
    if hasattr(client, "attribution"):  # a CachedClient: the ledger lives in the response cache
        client.attribution = current_attribution(role)
    return client


def current_attribution(role: str) -> ledger.Attribution:
    try:
        context = dg.AssetExecutionContext.get()
    except Exception:  # not inside an asset's execution
        context = None
    if context is None:
        return ledger.Attribution(role=role)
    optimization = generation = iteration = None
    if context.has_partition_key:
        key = context.partition_key
        if isinstance(key, dg.MultiPartitionKey) or "|" in str(key):
            # import-time: partitions reads the manifest when imported; only a partitioned run needs it
            from promptopt_dagster.defs.partitions import parse_key

            try:
                optimization, generation, iteration = parse_key(key)
            except Exception:  # not an iteration key: leave it unattributed rather than guess
                pass
        elif _partition_expr(context) == "optimization":
            optimization = str(key)
    return ledger.Attribution(
        optimization=optimization, generation=generation, iteration=iteration, run_id=context.run_id, role=role
    )


def _partition_expr(context) -> str | None:
    """The partition column the asset's metadata names ("optimization", "dataset", ...)."""
    try:
        metadata = next(iter(context.assets_def.metadata_by_key.values()), {})
    except Exception:
        return None
    expr = metadata.get("partition_expr")
    return expr if isinstance(expr, str) else None


def model_resource(settings: ModelSettings, role: str = "task") -> LLMResource:
    """A model resource from settings; the key stays an EnvVar reference so no run config holds it."""
    s = get_settings()
    key_env = settings.key_env()
    api_key = dg.EnvVar(key_env) if key_env and os.environ.get(key_env) else None
    return LLMResource(
        **settings.model_dump(),
        api_key=api_key,
        model_dir=str(s.model_dir),
        threads=s.llm_threads,
        cache_path=str(s.llm_cache),
        role=role,
    )


def default_resources() -> dict:
    """The resource set of the deployment PROMPTOPT_DEPLOYMENT names, as Dagster's fully-featured example picks
    one per environment. `local` and `gcs` keep tables in DuckDB under the state dir and differ in where
    artifacts (JSON copies of prompts and reports) and promoted prompts go: on disk, or in the bucket.
    `cluster` is for runs that share no disk (each in its own container or pod): tables and optimization state
    in Postgres, artifacts and promoted prompts in the bucket, and (settings.llm_cache) the response cache and
    usage ledger in Postgres too, so nothing a later run needs is left on the machine of the run before."""
    # cycle: the IO managers' module imports this one; and only the code location builds a resource set
    from promptopt_dagster.defs.artifact_io_managers import (
        ClusterArtifactIOManager,
        GCSArtifactIOManager,
        LocalArtifactIOManager,
    )
    from promptopt_dagster.defs.io_managers import PostgresWarehouseIOManager, WarehouseIOManager
    from promptopt_dagster.defs.warehouse import WarehouseResource

    s = get_settings()
    s.state_dir.mkdir(parents=True, exist_ok=True)
    table = dict(database=s.warehouse, schema="promptopt")
    promoted = ""
    if s.deployment in ("gcs", "cluster"):
        from dagster_gcp import GCSResource  # only these deployments need it

        bucket = dict(gcs=GCSResource(project=s.gcs_project), gcs_bucket=s.gcs_bucket, gcs_prefix=s.gcs_prefix)
        kind = ClusterArtifactIOManager if s.deployment == "cluster" else GCSArtifactIOManager
        artifacts = kind(**bucket, **table)
        promoted = f"{s.artifacts_root()}/promoted"
    else:
        artifacts = LocalArtifactIOManager(root=s.artifacts_root(), **table)
    tables = PostgresWarehouseIOManager(**table) if s.deployment == "cluster" else WarehouseIOManager(**table)
    return {
        "project": ProjectResource(data_dir=str(s.data_dir), prompts_dir=str(s.prompts_dir), promoted_root=promoted),
        "task_model": model_resource(s.task, "task"),
        "optimizer_model": model_resource(s.optimizer, "optimizer"),
        "judge_model": model_resource(s.judge, "judge"),
        "warehouse": WarehouseResource(database=s.warehouse),
        "io_manager": tables,
        "artifact_io_manager": artifacts,
    }
