"""Ad hoc: what a new prompt version costs when its parent retrieves from a large pool (PromptVersion.child), against
dumping and validating the whole version again, as child() did before session 29.

    .venv/bin/python bench/adhoc/prompt_child.py /tmp/padded/train.csv   # a train split (bench/adhoc/padded_pool.py)
"""

import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from promptopt_dagster.core.prompts import Demo, PromptVersion, Retrieval, pool_id  # noqa: E402

train = pd.read_csv(sys.argv[1], dtype=str, keep_default_na=False)
pool = [Demo(user_input=u, ground_truth_output=g) for u, g in zip(train["user_input"], train["ground_truth_output"])]
parent = PromptVersion(system_prompt="Classify.", output_prompt="{user_input}", retrieval=Retrieval(k=8, pool=pool))


def timed(what, work, repeat=3):
    best = min(_once(work) for _ in range(repeat))
    print(f"{what}: {best * 1000:.2f} ms")
    return best


def _once(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def dumped_child():  # child() before: the whole version dumped, the pool with it, and validated again
    fields = parent.model_dump(exclude={"id", "parent_id", "version", "created_at", "metadata"})
    return PromptVersion(
        parent_id=parent.id,
        version=parent.version + 1,
        calibrate=True,
        metadata={},
        **{k: v for k, v in fields.items() if k != "calibrate"},
    )


print(f"{len(pool)} pool rows")
before = timed("a child, the version dumped and validated again", dumped_child)
after = timed("a child, the retrieval passed as it is (child())", lambda: parent.child(calibrate=True))
print(f"ratio: {before / after:,.0f}x")
assert parent.child(calibrate=True).content_equals(dumped_child())
timed("the pool's content id (pool_id, once per stored version)", lambda: pool_id(pool))
