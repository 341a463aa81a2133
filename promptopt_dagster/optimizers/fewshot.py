"""Few-shot and instruction search: no optimizer LLM, just labeled train demos tried on dev.

Small base models learn the answer format mostly from demos, so the search space is which demos,
how many and in what order, crossed with a few instruction variants. Once the best prompt has
demos, half of the candidates mutate that set (swap one or two demos for fresh ones of the same
label) instead of starting over, so later iterations refine what already works, as GEPA does with
its best candidate. Candidates are scored on a seeded minibatch of the dev rows (as DSPy and GEPA
do) and the best one is proposed; the full dev comparison that follows decides whether it is accepted.
"""

from __future__ import annotations

import logging
import random

import pandas as pd

from promptopt_dagster.core.prompts import Demo, PromptVersion
from promptopt_dagster.llm.base import LLMClient
from promptopt_dagster.optimizers.base import Evaluator, Optimizer, OptimizerInput, Proposal

log = logging.getLogger("promptopt.optimizer")


class FewShotOptimizer(Optimizer):
    name = "fewshot"

    def __init__(self, num_candidates: int = 6, demo_counts: tuple[int, ...] = (4, 6, 8),
                 minibatch_size: int = 50, max_demo_chars: int = 200) -> None:
        self.num_candidates = num_candidates
        self.demo_counts = demo_counts
        self.minibatch_size = minibatch_size
        self.max_demo_chars = max_demo_chars

    def instruction_variants(self, prompt: PromptVersion, labels: list[str]) -> list[str]:
        base = prompt.system_prompt.strip()
        variants = [base]
        if labels:
            hint = f"Answer with exactly one word: {' or '.join(labels)}."
            if hint not in base:
                variants.append(f"{base} {hint}".strip())
        return variants

    def pick_demos(self, train: pd.DataFrame, labels: list[str], count: int, rng: random.Random) -> list[Demo]:
        """Balanced across labels and interleaved, so the model sees no majority-label streak."""
        pool = train[train["user_input"].str.len() <= self.max_demo_chars]
        if len(pool) < count:
            pool = train
        if labels:
            groups = [pool[pool["ground_truth_output"].str.strip().str.casefold() == l.casefold()] for l in labels]
            groups = [g for g in groups if len(g)]
            per = [g.sample(n=min(len(g), -(-count // len(groups))), random_state=rng.randrange(2**31)) for g in groups]
            order = [g.iloc[i] for i in range(max(len(g) for g in per)) for g in per if i < len(g)]
            if rng.random() < 0.5:  # half the candidates try a shuffled order
                rng.shuffle(order)
            rows = order[:count]
        else:
            rows = [r for _, r in pool.sample(n=min(count, len(pool)), random_state=rng.randrange(2**31)).iterrows()]
        return [Demo(user_input=r["user_input"], ground_truth_output=r["ground_truth_output"]) for r in rows]

    def mutate_demos(self, demos: list[Demo], train: pd.DataFrame, rng: random.Random) -> list[Demo]:
        """Swap one or two demos for unused train rows with the same label, keeping balance and order."""
        out = list(demos)
        used = {d.user_input for d in demos}
        pool = train[(train["user_input"].str.len() <= self.max_demo_chars) & ~train["user_input"].isin(used)]
        for position in rng.sample(range(len(out)), k=min(len(out), rng.choice((1, 2)))):
            same = pool[pool["ground_truth_output"] == out[position].ground_truth_output]
            if len(same):
                row = same.iloc[rng.randrange(len(same))]
                out[position] = Demo(user_input=row["user_input"], ground_truth_output=row["ground_truth_output"])
                pool = pool[pool["user_input"] != row["user_input"]]
        return out

    def propose(self, inp: OptimizerInput, evaluate: Evaluator, optimizer_llm: LLMClient | None = None) -> Proposal:
        rng = random.Random(f"{inp.seed}:{inp.iteration}")
        rows = inp.scored_rows
        minibatch = rows.sample(n=min(self.minibatch_size, len(rows)), random_state=rng.randrange(2**31))
        instructions = self.instruction_variants(inp.prompt, inp.labels)

        candidates, tried = [], []
        for j in range(self.num_candidates):
            if inp.prompt.demos and j % 2 == 1:
                kind, instruction = "mutate", inp.prompt.system_prompt
                demos = self.mutate_demos(inp.prompt.demos, inp.train, rng)
            else:
                kind = "fresh"
                count = self.demo_counts[(j // 2 if inp.prompt.demos else j) % len(self.demo_counts)]
                instruction = instructions[(j // len(self.demo_counts)) % len(instructions)]
                demos = self.pick_demos(inp.train, inp.labels, count, rng)
            cand = inp.prompt.child(system_prompt=instruction, demos=demos)
            result = evaluate(cand, minibatch)
            candidates.append((result.value, -len(demos), j, cand))
            tried.append({"candidate": j, "kind": kind, "demos": len(demos), "instruction": instruction,
                          "minibatch_score": result.value})
            log.info("fewshot candidate %d/%d (%s): %d demos, minibatch %s=%.3f", j + 1, self.num_candidates, kind,
                     len(demos), inp.metric, result.value)
        best_score, _, best_j, best = max(candidates, key=lambda c: c[:3])
        best.metadata.update({"optimizer": self.name, "candidate": best_j, "minibatch_score": best_score,
                              "minibatch_size": len(minibatch)})
        return Proposal(prompt=best, candidates=tried)
