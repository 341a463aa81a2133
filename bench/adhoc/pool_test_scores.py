"""Test scores of every scored retrieval-free candidate in a kept bench state (analysis only)."""

import json
import sys
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from promptopt_dagster.app.datasets import dev_parts, load_splits, sample_rows
from promptopt_dagster.app.settings import get_settings
from promptopt_dagster.core.prompts import PromptVersion
from promptopt_dagster.defs.resources import ProjectResource
from promptopt_dagster.llm.factory import build_client
from promptopt_dagster.llm.inference import predict
from promptopt_dagster.llm.model_settings import ModelSettings

state, name = Path(sys.argv[1]), sys.argv[2]
S = get_settings()
project = ProjectResource(data_dir=str(S.data_dir), prompts_dir=str(S.prompts_dir))
spec, suite = project.spec(name), project.suite(name)
splits = load_splits(spec, S.data_dir)
test = sample_rows(splits.test, 500, 0)
select, confirm = dev_parts(splits.dev, 200, 100, 0)
con = duckdb.connect(str(state / "warehouse.duckdb"), read_only=True)
pool = con.sql(
    "select candidate_id, kind, choices, select_score, prompt_json from promptopt.candidate_pool where iteration = (select max(iteration) from promptopt.candidate_pool) and select_rows > 0 order by position"
).df()
con.close()
client = build_client(ModelSettings(), S.model_dir, S.llm_threads, state / "llm_cache.sqlite")
for r in pool.itertuples():
    p = PromptVersion.model_validate_json(r.prompt_json)
    if p.retrieval is not None:
        continue
    res = {}
    for part, rows in (("confirm", confirm), ("test", test)):
        out = predict(
            client, p, rows, spec.max_output_tokens, stop=tuple(spec.completion_stop), progress_interval_s=1e9
        )
        res[part] = round(
            suite.score(out["prediction"].fillna("").tolist(), out["ground_truth_output"].tolist()).value, 3
        )
    print(
        json.dumps({"id": r.candidate_id, "kind": r.kind, "choices": r.choices, "select": r.select_score, **res}),
        flush=True,
    )
