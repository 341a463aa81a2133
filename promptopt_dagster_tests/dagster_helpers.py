"""Test wiring for the Dagster layer: real instance, real DuckDB file, scripted fake model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource

from promptopt_dagster.defs.io_managers import WarehouseIOManager
from promptopt_dagster.defs.partitions import ensure_iteration, iteration_key
from promptopt_dagster.defs.resources import LLMResource, OptimizationConfig, ProjectResource
from promptopt_dagster.definitions import build_definitions
from promptopt_dagster.llm.base import LLMClient, LLMRequest
from promptopt_dagster.llm.fake import FakeLLM
from promptopt_dagster.settings import PROJECT_ROOT

DATA_DIR = PROJECT_ROOT / "data"
PROMPTS_DIR = PROJECT_ROOT / "prompts"


def _sst2_labels() -> dict[str, str]:
    frames = [pd.read_csv(DATA_DIR / "sst2" / f"{s}.csv", dtype=str, keep_default_na=False) for s in ("train", "dev", "test")]
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
    return json.dumps({"system_prompt": f"Classify the sentiment. For example, '{quoted}' is {_LABELS[quoted]}.",
                       "output_prompt": "Review: {user_input}\nSentiment:"})


SCRIPTS = {"quotes_a_row_it_was_shown": quotes_a_row_it_was_shown, "demos_help": demos_help, "never_right": never_right, "fails_one_row_in_five": fails_one_row_in_five,
           "judge_exact": judge_exact}


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


def make_defs(tmp_path: Path, script: str = "demos_help", data_dir: Path = DATA_DIR,
              prompts_dir: Path = PROMPTS_DIR, judge_script: str = "never_right",
              cache: bool = False) -> dg.Definitions:
    warehouse = str(tmp_path / "warehouse.duckdb")
    llm = dict(script=script, backend="fake", model_dir=str(tmp_path / "models"), threads=1,
               cache_path=str(tmp_path / "llm_cache.sqlite") if cache else None)
    return build_definitions({
        "project": ProjectResource(data_dir=str(data_dir), prompts_dir=str(prompts_dir)),
        "task_model": ScriptedLLMResource(**llm),
        "optimizer_model": ScriptedLLMResource(**llm),
        "judge_model": ScriptedLLMResource(**{**llm, "script": judge_script}),
        "optimization": OptimizationConfig.configure_at_launch(),
        "warehouse": DuckDBResource(database=warehouse),
        "io_manager": WarehouseIOManager(database=warehouse, schema="promptopt"),
    })


SMALL = {"eval_size": 20, "test_size": 20, "num_candidates": 2, "minibatch_size": 10, "select_size": 10}


def run_config(**overrides) -> dict:
    return {"resources": {"optimization": {"config": {**SMALL, **overrides}}}}


def prepare(defs: dg.Definitions, instance: dg.DagsterInstance, dataset: str = "sst2"):
    return defs.resolve_job_def("prepare_dataset").execute_in_process(
        partition_key=dataset, instance=instance, raise_on_error=False)


def run_iteration(defs: dg.Definitions, instance: dg.DagsterInstance, iteration: int, dataset: str = "sst2",
                  tags: dict | None = None, **config):
    ensure_iteration(instance, iteration)
    return defs.resolve_job_def("optimize_iteration").execute_in_process(
        partition_key=iteration_key(dataset, iteration), instance=instance, run_config=run_config(**config),
        tags=tags or {"promptopt/driver": "test"}, raise_on_error=False)


def query(tmp_path: Path, sql: str, params: list | None = None) -> pd.DataFrame:
    import duckdb

    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(sql, params or []).fetchdf()
