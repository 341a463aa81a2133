"""The candidate pool of one optimization: every prompt version tried, with its per-row scores on the
select rows and its parent, kept across iterations.

New candidates grow from the pool's best and from its per-row Pareto frontier: a candidate that is
best on some select row stays eligible as a parent even when its mean is lower (GEPA's rule), so the
search keeps the variants that solve different rows instead of collapsing onto one.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from promptopt_dagster.core.intervals import paired_bootstrap_gain
from promptopt_dagster.core.objective import Objective, RowCost
from promptopt_dagster.core.prompts import PromptVersion

POOL_COLUMNS = {
    "candidate_id": "string",
    "parent_id": "string",
    "born_iteration": "int64",
    "kind": "string",
    "choices": "string",
    "select_score": "float64",
    "select_rows": "int64",
    "minibatch_score": "float64",
    "passed_minibatch": "bool",
    "tokens_per_row": "float64",
    "seconds_per_row": "float64",
    "scores_json": "string",
    "prompt_json": "string",
    "position": "int64",
}


@dataclass
class Candidate:
    prompt: PromptVersion
    born_iteration: int
    kind: str  # baseline | seed | mutate: how it was made
    scores: dict[int, float] = field(default_factory=dict)  # row_id -> target score on the select rows
    select_score: float | None = None  # the target's aggregate on all select rows; None: stopped at the minibatch
    minibatch_score: float | None = None
    passed_minibatch: bool = True
    cost: RowCost | None = None  # per row on the select rows; None: not measured (stopped at the minibatch)

    @property
    def id(self) -> str:
        return self.prompt.id

    def to_record(self) -> dict[str, Any]:
        """One pool-table row. The state store saves candidates in stored form (`StateStore.stored_form`: the
        retrieval pool kept once, a `PoolRef` naming it here), so each loads with its own pool; a pool still
        attached is written as [] and gets the optimization's demo pool back on load, as candidates stored
        before pools were stored apart did."""
        stored = self.prompt  # not a deep copy: that would copy the pool (120,000 demos: 27 s of a 190 s run)
        if stored.carries_pool:
            stored = stored.model_copy(update={"retrieval": stored.retrieval.model_copy(update={"pool": []})})
        return {
            "candidate_id": self.id,
            "parent_id": self.prompt.parent_id,
            "born_iteration": self.born_iteration,
            "kind": self.kind,
            "choices": self.prompt.describe(),
            "select_score": float("nan") if self.select_score is None else self.select_score,
            "select_rows": len(self.scores) if self.select_score is not None else 0,
            "minibatch_score": float("nan") if self.minibatch_score is None else self.minibatch_score,
            "passed_minibatch": self.passed_minibatch,
            "tokens_per_row": float("nan") if self.cost is None else self.cost.prompt_tokens,
            "seconds_per_row": float("nan") if self.cost is None or self.cost.seconds is None else self.cost.seconds,
            "scores_json": json.dumps({str(k): v for k, v in self.scores.items()}),
            "prompt_json": stored.to_json(),
        }

    @classmethod
    def from_record(cls, row: dict[str, Any], demo_pool=None) -> Candidate:
        """A candidate as stored. A `PoolRef` stays for the state store to attach (`with_pool`); an empty pool
        (a record written before pools were stored apart) gets `demo_pool`, the optimization's train rows."""
        prompt = PromptVersion.model_validate_json(row["prompt_json"])
        if prompt.retrieval is not None and prompt.pool_ref is None and demo_pool is not None:
            prompt.retrieval.pool = demo_pool  # shared, not copied: pools are never changed in place
        select = row["select_score"]
        mini = row["minibatch_score"]
        tokens, seconds = row.get("tokens_per_row"), row.get("seconds_per_row")  # absent in older pools
        cost = (
            None
            if tokens is None or pd.isna(tokens)
            else RowCost(float(tokens), None if pd.isna(seconds) else float(seconds))
        )
        return cls(
            prompt,
            int(row["born_iteration"]),
            str(row["kind"]),
            {int(k): float(v) for k, v in json.loads(row["scores_json"]).items()},
            None if pd.isna(select) else float(select),
            None if pd.isna(mini) else float(mini),
            bool(row["passed_minibatch"]),
            cost,
        )


def pool_frame(candidates: list[Candidate]) -> pd.DataFrame:
    """The pool in order (`position`): parent draws follow pool order, so it must survive the round trip."""
    records = [{**c.to_record(), "position": i} for i, c in enumerate(candidates)]
    return pd.DataFrame(records, columns=list(POOL_COLUMNS)).astype(POOL_COLUMNS)


def scored(pool: list[Candidate]) -> list[Candidate]:
    """Candidates scored on every select row: the only ones comparable with each other."""
    return [c for c in pool if c.select_score is not None]


def row_cost(answers: pd.DataFrame) -> RowCost | None:
    """Mean prompt tokens and seconds per row of a prompt's answers (None without those columns: a test's
    evaluator). Seconds are those each answer took when it was made, which the response cache keeps."""
    if answers is None or answers.empty or "prompt_tokens" not in answers:
        return None
    seconds = answers["latency_s"] if "latency_s" in answers else None
    measured = seconds is not None and bool((seconds > 0).any())
    return RowCost(float(answers["prompt_tokens"].mean()), float(seconds.mean()) if measured else None)


def tokens_per_row(c: Candidate) -> float:
    """Its prompt tokens per row; unmeasured counts as the most (it cannot be shown to be cheap)."""
    return float("inf") if c.cost is None else c.cost.prompt_tokens


def best(pool: list[Candidate], objective: Objective | None = None) -> Candidate | None:
    """The candidate to propose by its select scores: the highest, or the objective's choice.

    Without a stated objective the best score wins (ties: fewer prompt tokens per row, then fewer
    demos, then the older candidate). The objective's ceilings leave out the candidates over them; with
    `within_points`, the fewest prompt tokens per row among those within that many points of the best
    wins (then the higher score). Whether a lead on ~100 select rows is real is not this function's
    question: fewshot races its leaders on spare rows before trusting one (fewshot.race)."""
    ranked = scored(pool)
    if objective is not None and objective.stated:
        ranked = [c for c in ranked if objective.allows(c.cost)]
    if not ranked:
        return None
    top = max(c.select_score for c in ranked)
    points = objective.within_points if objective is not None and objective.within_points is not None else 0.0
    near = [c for c in ranked if c.select_score >= top - points - 1e-12]
    return min(near, key=lambda c: (tokens_per_row(c), -c.select_score, len(c.prompt.demos), c.born_iteration))


def demo_cost(prompt: PromptVersion) -> int:
    """Demos evaluated anew for every row: the retrieved ones, plus one row's worth per extra ensemble set.
    Static demos sit in the shared prefix that llama.cpp keeps cached (and remote providers cache too),
    so 12 or 16 of them cost a row about the same (bench/local_inference.py: 86 ms a row with 8 static
    demos, 438 ms with 8 retrieved)."""
    return (prompt.retrieval.k if prompt.retrieval else 0) + (len(prompt.ensemble) if prompt.ensembled else 0)


def surely_better(leader: Candidate, other: Candidate, confidence: float) -> bool:
    rows = sorted(leader.scores.keys() & other.scores.keys())
    if not rows:
        return leader.select_score > other.select_score
    gain = paired_bootstrap_gain(
        [other.scores[r] for r in rows], [leader.scores[r] for r in rows], confidence, resamples=500, seed=0
    )
    return gain.low > 0


def pareto_frontier(pool: list[Candidate]) -> dict[str, int]:
    """Candidate id -> the number of select rows on which it has the best score (ties count for each).

    Only candidates best on at least one row are on the frontier; one that is everywhere matched by
    another candidate at least as good and somewhere beaten is dropped (dominated)."""
    ranked = scored(pool)
    rows = set().union(*(c.scores for c in ranked)) if ranked else set()
    wins: dict[str, int] = {}
    for row in rows:
        top = max(c.scores.get(row, 0.0) for c in ranked)
        for c in ranked:
            if c.scores.get(row, 0.0) >= top:
                wins[c.id] = wins.get(c.id, 0) + 1
    frontier = [c for c in ranked if c.id in wins]
    for c in list(frontier):
        if any(
            o is not c
            and all(o.scores.get(r, 0.0) >= c.scores.get(r, 0.0) for r in rows)
            and any(o.scores.get(r, 0.0) > c.scores.get(r, 0.0) for r in rows)
            for o in frontier
        ):
            wins.pop(c.id, None)
    return wins


def pick_parent(pool: list[Candidate], rng: random.Random, objective: Objective | None = None) -> Candidate | None:
    """Half the time the best (as `best` picks it under this objective), otherwise a frontier member drawn
    in proportion to the rows it wins; with a stated objective, only members within its ceilings (a child
    mostly costs what its parent does)."""
    top = best(pool, objective)
    wins = pareto_frontier(pool)
    if top is None or not wins or rng.random() < 0.5:
        return top
    # pool order, never id order: ids are random, and a rerun must draw the same parent (and so send
    # the same requests, all answered from the response cache)
    frontier = [c for c in scored(pool) if c.id in wins and (objective is None or objective.allows(c.cost))]
    if not frontier:
        return top
    return rng.choices(frontier, weights=[wins[c.id] for c in frontier])[0]


def cost_frontier(pool: list[Candidate]) -> list[Candidate]:
    """The candidates no other one beats on both score and cost: none scores at least as well with at
    most as many prompt tokens per row, and better on one of them. Cheapest first, so a reader walks it
    from the cheapest prompt to the best and sees what each step up in cost buys."""
    priced = [c for c in scored(pool) if c.cost is not None]
    frontier = [
        c
        for c in priced
        if not any(
            o.select_score >= c.select_score
            and o.cost.prompt_tokens <= c.cost.prompt_tokens
            and (o.select_score > c.select_score or o.cost.prompt_tokens < c.cost.prompt_tokens)
            for o in priced
        )
    ]
    unique = {(round(c.select_score, 12), c.cost.prompt_tokens): c for c in reversed(frontier)}  # first of equals
    return sorted(unique.values(), key=lambda c: (c.cost.prompt_tokens, c.select_score))


def first_iteration(history: list[Candidate]) -> bool:
    """Whether this is the search's first iteration: nothing but baselines in the pool yet."""
    return not any(c.kind != "baseline" for c in history)


def signature(prompt: PromptVersion) -> tuple:
    """What makes two candidates the same prompt (ids and lineage aside)."""
    return (prompt.system_prompt, prompt.answer, *shown(prompt))


def shown(prompt: PromptVersion) -> tuple:
    """Everything of a prompt but its instruction and its answer mode: output prompt, demos (static, retrieved,
    ensembled) and calibration."""
    retrieval = (
        (
            prompt.retrieval.k,
            prompt.retrieval.method,
            prompt.retrieval.per_label,
            prompt.retrieval.max_chars,
            prompt.retrieval.vote,
            prompt.retrieval.panel,
        )
        if prompt.retrieval
        else None
    )
    return (
        prompt.output_prompt,
        tuple((d.user_input, d.ground_truth_output) for d in prompt.demos),
        retrieval,
        prompt.calibrated,
        tuple(tuple((d.user_input, d.ground_truth_output) for d in demos) for demos in prompt.ensemble),
    )
