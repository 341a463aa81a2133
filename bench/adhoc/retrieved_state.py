"""Ad hoc: a state dir for the probes (kept.py) holding a prompt no run proposed: DATASET's initial prompt with K retrieved
TF-IDF demos from the demo pool fewshot builds, label answers, written as STATE/best_prompts/NAME.json.

Why: to probe a retrieved prompt (the vote, another k) on a data/ set with no kept bench run.

    .venv/bin/python bench/adhoc/retrieved_state.py STATE hwu64 16
    .venv/bin/python bench/adhoc/retrieval_probe.py --rows 150 STATE hwu64 '{}' '{"vote": 1}'
"""

import sys
from pathlib import Path
from promptopt_dagster.app.datasets import load_splits
from promptopt_dagster.app.iteration_setup import IterationSetup
from promptopt_dagster.app.optimizations import OptimizationSpec
from promptopt_dagster.app.settings import get_settings
from promptopt_dagster.core.prompts import Retrieval
from promptopt_dagster.defs.resources import ProjectResource
from promptopt_dagster.optimizers import get_optimizer

state, name, k = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
s = get_settings()
project = ProjectResource(data_dir=str(s.data_dir), prompts_dir=str(s.prompts_dir))
spec = project.spec(name)
setup = IterationSetup.resolve(OptimizationSpec(name=name, dataset=name), load_splits(spec, s.data_dir))
opt = get_optimizer("fewshot")
pool = opt.demo_pool(setup.demo_source())
prompt = project.initial_prompt(name).child(
    answer="label",
    labels=list(spec.labels),
    retrieval=Retrieval(k=k, pool=pool, max_chars=opt.cut_length(pool, bool(spec.labels))),
)
(state / "best_prompts").mkdir(parents=True, exist_ok=True)
prompt.save(state / "best_prompts" / f"{name}.json")
print(prompt.describe())
