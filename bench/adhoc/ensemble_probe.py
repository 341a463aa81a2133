"""Ad hoc: do ensembles of static demo sets (summed normalized label log-probs) beat their members?"""

import itertools
import json
import sys
from pathlib import Path

import duckdb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from promptopt_dagster.app.datasets import dev_parts, load_splits, sample_rows
from promptopt_dagster.app.settings import get_settings
from promptopt_dagster.core.prompts import PromptVersion
from promptopt_dagster.defs.resources import ProjectResource
from promptopt_dagster.llm.label_ranking import LabelRanker
from promptopt_dagster.llm.local import LlamaCppClient

state, name, ids = Path(sys.argv[1]), sys.argv[2], sys.argv[3].split(",")
S = get_settings()
project = ProjectResource(data_dir=str(S.data_dir), prompts_dir=str(S.prompts_dir))
spec = project.spec(name)
splits = load_splits(spec, S.data_dir)
test = sample_rows(splits.test, 500, 0)
select, confirm = dev_parts(splits.dev, 200, 100, 0)
con = duckdb.connect(str(state / "warehouse.duckdb"), read_only=True)
pool = con.sql(
    "select candidate_id, prompt_json from promptopt.candidate_pool where iteration = (select max(iteration) from promptopt.candidate_pool)"
).df()
con.close()
prompts = {
    r.candidate_id: PromptVersion.model_validate_json(r.prompt_json) for r in pool.itertuples() if r.candidate_id in ids
}
labels = list(spec.labels)
llm, lock = LlamaCppClient(S.model_dir, n_threads=1)._llama()
ranker = LabelRanker(llm)


def logprobs(p, rows):
    out = []
    order = sorted(range(len(rows)), key=lambda i: rows["user_input"].iloc[i])
    res = [None] * len(rows)
    for i in order:
        s = ranker.rank(p.render_completion(rows["user_input"].iloc[i]), labels).scores
        v = np.array([s[l] for l in labels])
        res[i] = v - np.logaddexp.reduce(v)
    return np.array(res)


for part, rows in (("confirm", confirm), ("test", test)):
    refs = np.array([labels.index(y.strip()) for y in rows["ground_truth_output"]])
    lp = {i: logprobs(prompts[i], rows) for i in ids}
    for i in ids:
        print(
            json.dumps({"part": part, "set": i, "acc": round(float((lp[i].argmax(1) == refs).mean()), 3)}), flush=True
        )
    for k in range(2, len(ids) + 1):
        for combo in itertools.combinations(ids, k):
            s = sum(lp[i] for i in combo)
            print(
                json.dumps(
                    {"part": part, "set": "+".join(combo), "acc": round(float((s.argmax(1) == refs).mean()), 3)}
                ),
                flush=True,
            )
