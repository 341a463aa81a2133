"""Contextual calibration prototype: label scores minus content-free label scores."""

import collections
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, "/work/main")
sys.path.insert(0, "/work/main/bench")
from quality import balanced_demos
from sklearn.metrics import f1_score

from promptopt_dagster.app.datasets import dev_parts, load_splits, sample_rows
from promptopt_dagster.app.quality import drop_held_out
from promptopt_dagster.app.settings import get_settings
from promptopt_dagster.core.prompts import Retrieval
from promptopt_dagster.defs.resources import ProjectResource
from promptopt_dagster.llm.label_ranking import LabelRanker
from promptopt_dagster.llm.local import LlamaCppClient
from promptopt_dagster.optimizers.fewshot import FewShotOptimizer

name = sys.argv[1]
n_test = int(sys.argv[2]) if len(sys.argv) > 2 else 300
S = get_settings()
data_dir, prompts_dir = S.data_dir, S.prompts_dir
if Path(name).is_dir():
    import shutil

    from quality import outside_dataset

    work = Path("/tmp/w/exp/" + Path(name).name + "_calwork")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    name, data_dir, prompts_dir = outside_dataset(Path(name), work)
project = ProjectResource(data_dir=str(data_dir), prompts_dir=str(prompts_dir))
spec = project.spec(name)
splits = load_splits(spec, Path(data_dir))
select, confirm = dev_parts(splits.dev, 200, 100, 0)
test = sample_rows(splits.test, 500, 0).head(n_test)
train = drop_held_out(splits.train, {"dev": splits.dev, "test": splits.test})
llm, lock = LlamaCppClient(S.model_dir, n_threads=2)._llama()
ranker = LabelRanker(llm)
initial = project.initial_prompt(name)
opt = FewShotOptimizer()
pool = opt.demo_pool(train)
labels = list(spec.labels)
CF = ["N/A", "", "[MASK]"]


def norm(s):
    v = np.array([s[l] for l in labels])
    v = v - np.logaddexp.reduce(v)
    return v


def evaluate(prompt, rows):
    raw, cal, pri, refs = [], [], [], []
    counts = collections.Counter(train["ground_truth_output"].str.strip())
    logprior = np.log(np.array([counts[l] for l in labels], dtype=float) / sum(counts[l] for l in labels))
    cf_memo = {}
    for x, y in zip(rows["user_input"], rows["ground_truth_output"]):
        fixed = prompt.child(demos=prompt.demos_for(x), retrieval=None)
        key = tuple(d.user_input for d in fixed.demos)
        if key not in cf_memo:
            ps = [np.exp(norm(ranker.rank(fixed.render_completion(c), labels).scores)) for c in CF]
            cf_memo[key] = np.log(np.mean(ps, axis=0))
        v = norm(ranker.rank(fixed.render_completion(x), labels).scores)
        raw.append(labels[int(np.argmax(v))])
        cal.append(labels[int(np.argmax(v - cf_memo[key]))])
        pri.append(labels[int(np.argmax(v - cf_memo[key] + logprior))])
        refs.append(y.strip())
    acc = lambda p: np.mean([a == b for a, b in zip(p, refs)])
    f1 = lambda p: f1_score(refs, p, labels=labels, average="macro", zero_division=0)
    return {
        "raw_acc": round(acc(raw), 3),
        "cal_acc": round(acc(cal), 3),
        "raw_f1": round(f1(raw), 3),
        "cal_f1": round(f1(cal), 3),
        "pri_acc": round(acc(pri), 3),
        "pri_f1": round(f1(pri), 3),
        "raw_dist": dict(collections.Counter(raw).most_common(3)),
        "cal_dist": dict(collections.Counter(cal).most_common(3)),
    }


configs = []
for s in range(3):
    configs.append((f"hand bal12 s{s}", initial.child(demos=balanced_demos(train, labels, 12, s))))
for s in range(3):
    configs.append((f"ours static12 s{s}", initial.child(demos=opt.pick_demos(train, labels, 12, random.Random(s)))))
for s in range(3):
    configs.append(
        (f"ours bal12 s{s}", initial.child(demos=opt.pick_demos(train, labels, 12, random.Random(s), balanced=True)))
    )
for k in ():
    configs.append((f"retr{k}", initial.child(retrieval=Retrieval(k=k, pool=pool))))
only = sys.argv[3:]
with lock:
    for tag, p in configs:
        if only and not any(o in tag for o in only):
            continue
        t = time.time()
        out = {part: evaluate(p, rows) for part, rows in (("confirm", confirm), ("test", test))}
        print(
            json.dumps(
                {
                    "ds": name,
                    "cfg": tag,
                    **{f"{k}_{m}": v for k, r in out.items() for m, v in r.items() if "dist" not in m},
                    "test_dist": [out["test"]["raw_dist"], out["test"]["cal_dist"]],
                    "s": round(time.time() - t),
                }
            ),
            flush=True,
        )
