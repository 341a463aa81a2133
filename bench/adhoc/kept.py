"""What the ad hoc probes share: a dataset's spec, scoring suite and splits, a kept bench state dir's best
prompt, and a local client answering from that dir's response cache (so a probe pays only for new questions).

A state dir is what `bench/quality.py DATASET --keep DIR` leaves: best_prompts/NAME.json (the exported best
prompt, its retrieval pool included; older dirs: report.json's `best_prompt`) and llm_cache.sqlite."""

import json
import sys
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from promptopt_dagster.app.datasets import load_splits
from promptopt_dagster.app.settings import get_settings
from promptopt_dagster.core.prompts import PromptVersion
from promptopt_dagster.defs.resources import ProjectResource
from promptopt_dagster.llm.factory import build_client
from promptopt_dagster.llm.model_settings import ModelSettings


class KeptRun(NamedTuple):
    spec: object
    suite: object
    splits: object
    prompt: PromptVersion
    client: object


def kept_run(state: Path, name: str) -> KeptRun:
    settings = get_settings()
    project = ProjectResource(data_dir=str(settings.data_dir), prompts_dir=str(settings.prompts_dir))
    spec = project.spec(name)
    exported = state / "best_prompts" / f"{name}.json"
    prompt = (
        PromptVersion.load(exported)
        if exported.exists()
        else PromptVersion.model_validate(json.loads((state / "report.json").read_text())["best_prompt"])
    )
    client = build_client(ModelSettings(), settings.model_dir, settings.llm_threads, state / "llm_cache.sqlite")
    return KeptRun(spec, project.suite(name), load_splits(spec, settings.data_dir), prompt, client)
