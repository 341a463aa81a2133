"""Test wiring for the Dagster layer: real instance, real DuckDB file, scripted fake model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import dagster as dg
import pandas as pd

from promptopt_dagster.app.optimizations import OptimizationSpec
from promptopt_dagster.app.settings import PROJECT_ROOT
from promptopt_dagster.definitions import build_definitions
from promptopt_dagster.defs.artifact_io_managers import LocalArtifactIOManager
from promptopt_dagster.defs.io_managers import WarehouseIOManager
from promptopt_dagster.defs.partitions import ensure_iteration, iteration_key
from promptopt_dagster.defs.resources import LLMResource, ProjectResource
from promptopt_dagster.defs.warehouse import WarehouseResource
from promptopt_dagster.llm.base import LLMClient, LLMRequest
from promptopt_dagster.llm.fake import FakeLLM

DATA_DIR = PROJECT_ROOT / "data"
PROMPTS_DIR = PROJECT_ROOT / "prompts"


def _sst2_labels() -> dict[str, str]:
    frames = [
        pd.read_csv(DATA_DIR / "sst2" / f"{s}.csv", dtype=str, keep_default_na=False) for s in ("train", "dev", "test")
    ]
    frame = pd.concat(frames)
    return dict(zip(frame["user_input"], frame["ground_truth_output"]))


_LABELS: dict[str, str] = {}


def demos_help(request: LLMRequest) -> str:
    """Right only when the prompt carries labeled demos: the fewshot optimizer must find that out."""
    if not _LABELS:
        _LABELS.update(_sst2_labels())
    prompt = request.prompt or ""
    user_input = prompt.rsplit("Review: ", 1)[-1].rsplit("\nSentiment:", 1)[0]
    has_demos = "\nSentiment: positive" in prompt or "\nSentiment: negative" in prompt
    return " " + _LABELS[user_input] if has_demos else " maybe"


def more_demos_help(request: LLMRequest) -> str:
    """Right on every row with 12 or more labeled demos, on about half the rows with fewer, never without:
    a costlier prompt that is better, so that the user's cost ceiling, not the score, decides."""
    if not _LABELS:
        _LABELS.update(_sst2_labels())
    prompt = request.prompt or ""
    user_input = prompt.rsplit("Review: ", 1)[-1].rsplit("\nSentiment:", 1)[0]
    demos = prompt.count("\nSentiment: positive") + prompt.count("\nSentiment: negative")
    label = _LABELS[user_input]
    lucky = int(hashlib.sha256(user_input.encode()).hexdigest(), 16) % 2 == 0
    if demos >= 12 or (demos and lucky):
        return " " + label
    return " negative" if label == "positive" else " positive"


def never_right(request: LLMRequest) -> str:
    """Never the row's label: " maybe", or a wrong label when the answer is constrained to the labels."""
    if request.choices:
        if not _LABELS:
            _LABELS.update(_sst2_labels())
        user_input = (request.prompt or "").rsplit("Review: ", 1)[-1].rsplit("\nSentiment:", 1)[0]
        return next(c for c in request.choices if c != _LABELS.get(user_input))
    return " maybe"


def fails_one_row_in_five(request: LLMRequest) -> str:
    """demos_help, except that a fixed fifth of the rows fail every time (like a row the API rejects)."""
    if int(hashlib.sha256(request.prompt.encode()).hexdigest(), 16) % 5 == 0:
        raise RuntimeError("http_400: the provider rejected this row")
    return demos_help(request)


def judge_exact(request: LLMRequest) -> str:
    """A completion-mode judge: 5 when the answer equals the reference, else 1, always with a reason."""
    import json

    row = request.prompt.rsplit("Reference answer (JSON string): ", 1)[1]
    reference = json.loads(row.split("\n", 1)[0])
    answer = json.loads(row.split("Answer to judge (JSON string): ", 1)[1].split("\n", 1)[0])
    if answer.strip() == reference:
        return ' 5, "rationale": "matches the reference"}'
    return f' 1, "rationale": "says {answer.strip()} where the review is {reference}"}}'


def quotes_a_row_it_was_shown(request: LLMRequest) -> str:
    """As task model: demos_help. As reflective optimizer: an LLM that pastes a dev row it was shown
    into its new instruction, the overfitting the leakage gate exists for."""
    import json

    prompt = request.prompt or ""
    if not prompt.endswith("JSON:\n"):
        return demos_help(request)
    if not _LABELS:
        _LABELS.update(_sst2_labels())
    quoted = next(text for text in sorted(_LABELS, key=len, reverse=True) if len(text) >= 40 and text in prompt)
    return json.dumps(
        {
            "system_prompt": f"Classify the sentiment. For example, '{quoted}' is {_LABELS[quoted]}.",
            "output_prompt": "Review: {user_input}\nSentiment:",
        }
    )


SCRIPTS = {
    "quotes_a_row_it_was_shown": quotes_a_row_it_was_shown,
    "demos_help": demos_help,
    "more_demos_help": more_demos_help,
    "never_right": never_right,
    "fails_one_row_in_five": fails_one_row_in_five,
    "judge_exact": judge_exact,
}


class ScriptedLLMResource(LLMResource):
    """LLMResource whose client is a FakeLLM following a named script (no model, no cache)."""

    script: str = "demos_help"

    def get_client(self) -> LLMClient:
        if self._client is None:
            self._client = FakeLLM(responder=SCRIPTS[self.script], name=f"scripted-{self.script}")
            if self.cache_path:  # the real response cache in front of the script, as in production
                from promptopt_dagster.llm.cache import CachedClient, ResponseCache

                self._client = CachedClient(self._client, ResponseCache(Path(self.cache_path)))
        return self._client


def make_defs(
    tmp_path: Path,
    script: str = "demos_help",
    data_dir: Path = DATA_DIR,
    prompts_dir: Path = PROMPTS_DIR,
    judge_script: str = "never_right",
    cache: bool = False,
    state_dir: Path | None = None,
    optimizer_script: str | None = None,
) -> dg.Definitions:
    """Definitions on a warehouse and artifacts in tmp_path; the local state (the response cache) in
    `state_dir`, tmp_path unless a test gives each run its own."""
    warehouse = str(tmp_path / "warehouse.duckdb")
    state_dir = state_dir or tmp_path
    llm = dict(
        script=script,
        backend="fake",
        model_dir=str(tmp_path / "models"),
        threads=1,
        cache_path=str(state_dir / "llm_cache.sqlite") if cache else None,
    )
    return build_definitions(
        {
            "project": ProjectResource(data_dir=str(data_dir), prompts_dir=str(prompts_dir)),
            "task_model": ScriptedLLMResource(**llm),
            "optimizer_model": ScriptedLLMResource(**{**llm, "script": optimizer_script or script}),
            "judge_model": ScriptedLLMResource(**{**llm, "script": judge_script}),
            "warehouse": WarehouseResource(database=warehouse),
            "io_manager": WarehouseIOManager(database=warehouse, schema="promptopt"),
            "artifact_io_manager": LocalArtifactIOManager(
                root=str(tmp_path / "artifacts"), database=warehouse, schema="promptopt"
            ),
        }
    )


SMALL = {
    "eval_size": 20,
    "test_size": 20,
    "select_size": 10,
    "spare_size": 20,
    "options": {"num_candidates": 2, "minibatch_size": 10},
}


def small_spec(name: str = "sst2", dataset: str | None = None, **overrides) -> OptimizationSpec:
    """A quick optimization of a dataset: few rows, few candidates; `overrides` as in optimizations.yaml."""
    entry = {**SMALL, **overrides}
    if "options" in overrides:
        entry["options"] = {**SMALL["options"], **overrides["options"]}
    entry["stop"], entry["budget"] = overrides.get("stop") or {}, overrides.get("budget") or {}
    return OptimizationSpec(name=name, dataset=dataset or name, **entry)


def prepare(defs: dg.Definitions, instance: dg.DagsterInstance, dataset: str = "sst2"):
    return defs.resolve_job_def("prepare_dataset").execute_in_process(
        partition_key=dataset, instance=instance, raise_on_error=False
    )


def start(
    defs: dg.Definitions, instance: dg.DagsterInstance, spec: OptimizationSpec | None = None, tags: dict | None = None
):
    """Record the optimization's settings; returns the run result (its metadata holds the generation)."""
    spec = spec or small_spec()
    from promptopt_dagster.defs.loop.chain import start_run_config

    config = start_run_config(spec)
    return defs.resolve_job_def("start_optimization").execute_in_process(
        partition_key=spec.name,
        instance=instance,
        run_config=config,
        tags=tags or {"promptopt/driver": "test"},
        raise_on_error=False,
    )


def generation_of(result) -> int:
    return int(result.asset_materializations_for_node("optimization")[0].metadata["generation"].value)


_STOP, _BUDGET = (
    {"max_iterations", "target_score", "patience", "min_improvement"},
    {"max_requests", "max_tokens", "max_cost_usd", "max_metric_calls"},
)


def spec_from_flat(optimization: str = "sst2", **flat) -> OptimizationSpec:
    """small_spec from the flat settings the tests name (target_score=..., max_requests=...), as the CLI's flags."""
    entry: dict = {"stop": {}, "budget": {}}
    for key, value in flat.items():
        (entry["stop"] if key in _STOP else entry["budget"] if key in _BUDGET else entry)[key] = value
    if entry.get("optimizer", "fewshot") != "fewshot":
        entry["options"] = {}
    return (
        small_spec(optimization, **entry)
        if entry.get("optimizer", "fewshot") == "fewshot"
        else OptimizationSpec(name=optimization, dataset=optimization, **{**SMALL, "options": {}, **entry})
    )


def run_iteration(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    iteration: int,
    optimization: str = "sst2",
    tags: dict | None = None,
    **settings,
):
    """Start the optimization with `settings` (the same settings continue the same generation), then run one
    iteration of it."""
    # the start is driven here, as the CLI drives its own: the sensor follows only the iteration runs
    started = start(defs, instance, spec_from_flat(optimization, **settings), tags={"promptopt/driver": "cli"})
    assert started.success, "start_optimization failed"
    generation = generation_of(started)
    ensure_iteration(instance, generation, iteration)
    return defs.resolve_job_def("optimize_iteration").execute_in_process(
        partition_key=iteration_key(optimization, generation, iteration),
        instance=instance,
        tags=tags or {"promptopt/driver": "test"},
        raise_on_error=False,
    )


def query(tmp_path: Path, sql: str, params: list | None = None) -> pd.DataFrame:
    import duckdb

    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(sql, params or []).fetchdf()
