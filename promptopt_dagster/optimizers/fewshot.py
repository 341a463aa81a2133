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
from fractions import Fraction

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
        """Demos whose label mix follows train's, with every label shown and a most common label last.

        A small base model answers with the label mix its demos show: on data that is mostly one label,
        balanced demos made Gemma 3 270M answer the rare label for almost every row. It also leans to
        the last demo's label, so that one is a label with the most demos, the bias that costs least."""
        truth = train["ground_truth_output"].str.strip().str.casefold()
        groups = [g for g in (train[truth == label.strip().casefold()] for label in labels) if len(g)]
        if not groups:  # free-form outputs
            pool = _prefer_short(train, count, self.max_demo_chars)
            rows = pool.sample(n=min(count, len(pool)), random_state=rng.randrange(2**31))
            return [_demo(r) for _, r in rows.iterrows()]
        quotas = label_quotas([len(g) for g in groups], count)
        picked = [[r for _, r in _prefer_short(g, n, self.max_demo_chars).sample(
                      n=min(n, len(g)), random_state=rng.randrange(2**31)).iterrows()]
                  for g, n in zip(groups, quotas)]
        order = spread(picked)
        if rng.random() < 0.5:  # half the candidates try a shuffled order, still ending on a common label
            rng.shuffle(order)
            most = max(len(p) for p in picked)
            last = max(i for i, (group, _) in enumerate(order) if len(picked[group]) == most)
            order.append(order.pop(last))
        return [_demo(r) for _, r in order]

    def mutate_demos(self, demos: list[Demo], train: pd.DataFrame, rng: random.Random) -> list[Demo]:
        """Swap one or two demos for unused train rows with the same label, keeping the label mix and order."""
        out = list(demos)
        used = {d.user_input for d in demos}
        pool = train[(train["user_input"].str.len() <= self.max_demo_chars) & ~train["user_input"].isin(used)]
        for position in rng.sample(range(len(out)), k=min(len(out), rng.choice((1, 2)))):
            same = pool[pool["ground_truth_output"] == out[position].ground_truth_output]
            if len(same):
                row = same.iloc[rng.randrange(len(same))]
                out[position] = _demo(row)
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


def label_quotas(sizes: list[int], count: int) -> list[int]:
    """Demos per label in proportion to its train rows (largest remainder), and at least one each.

    A label the model never sees in a demo is one it rarely answers, so a rare label takes its demo
    from the most common one, and the set grows past `count` only when there are more labels than that."""
    total = sum(sizes)
    quotas = [count * size // total for size in sizes]
    by_remainder = sorted(range(len(sizes)), key=lambda i: count * sizes[i] % total, reverse=True)
    for i in by_remainder[:count - sum(quotas)]:
        quotas[i] += 1
    for i, quota in enumerate(quotas):
        if quota == 0:
            largest = max(range(len(quotas)), key=lambda j: quotas[j])
            if quotas[largest] > 1:
                quotas[largest] -= 1
            quotas[i] = 1
    return quotas


def spread(groups: list[list]) -> list[tuple[int, object]]:
    """(group index, item) with each group's items evenly spaced, so no label comes in a streak.

    Item i of a group of k sits at (2i+1)/2k; ties go by group order. On equal groups this is plain
    interleaving, and the largest group always holds the last place."""
    slots = [(Fraction(2 * i + 1, 2 * len(g)), index, item)
             for index, g in enumerate(groups) for i, item in enumerate(g)]
    return [(index, item) for _, index, item in sorted(slots, key=lambda s: s[:2])]


def _prefer_short(rows: pd.DataFrame, count: int, max_chars: int) -> pd.DataFrame:
    """Short rows when there are enough of them: long demos cost context on every request."""
    short = rows[rows["user_input"].str.len() <= max_chars]
    return short if len(short) >= count else rows


def _demo(row: pd.Series) -> Demo:
    return Demo(user_input=row["user_input"], ground_truth_output=row["ground_truth_output"])
