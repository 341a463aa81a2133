"""The race: fewshot's leaders on the select rows, raced on spare rows by successive halving, and the tie
rule that turns the last rung into a proposal.

A hundred select rows cannot tell apart candidates a few points apart, so the best on them is partly the
luckiest. The race gives the leaders more rows where rows are cheap (spare dev rows, or train rows held out
of the demo pool), halving the field as it goes, and a cheaper prompt the leader does not beat for sure on
the last rung wins the tie; a leader a point or more ahead of that cheaper prompt races it once more on the
deciding rows first. Acceptance is not decided here: the loop judges the proposal on confirm rows this
search never sees. Kept apart from the search (fewshot.py) because it reads only scores and costs: which
candidates exist is the search's business, which of them wins is the race's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from promptopt_dagster.core.errors import ContextWindowError
from promptopt_dagster.core.intervals import paired_bootstrap_gain
from promptopt_dagster.optimizers.base import Evaluation, Evaluator, OptimizerContext
from promptopt_dagster.optimizers.pool import (
    Candidate,
    demo_cost,
    first_iteration,
    row_cost,
    signature,
    surely_better,
    tokens_per_row,
)

log = logging.getLogger("promptopt.optimizer")


@dataclass(frozen=True)
class Race:
    """fewshot's race, as its options set it: how many leaders race (`top`), the confidence a lead must hold
    at to be sure (`confidence`), and the lead over the tie rule's pick that earns a deciding rung
    (`decide_lead`)."""

    top: int
    confidence: float
    decide_lead: float

    def run(
        self,
        base: Candidate,
        contenders: list[Candidate],
        select: pd.DataFrame,
        inp: OptimizerContext,
        evaluate: Evaluator,
        tried: list[dict],
        seen: set,
        new: list[Candidate],
    ) -> tuple[list[dict[str, float]], dict[str, Evaluation]]:
        """Successive halving of the select rows' leaders over the spare rows: each rung's scores by id, and
        the evaluations of the last rung.

        A hundred select rows cannot tell apart candidates a few points apart (their 95% interval is
        about 10 points wide), so the best on them is partly the luckiest: on sst2, retrieved demos led
        static ones by 4 to 5 points on the select rows and then lost on test. The leaders that the top
        one does not already beat for sure (the baseline too, when it is among them) are scored on the
        select rows plus the first half of the spare rows; the better half of them, and ensembles of
        the best static label sets, on all of them. A rung reads the rows of the one before from the
        response cache, so a survivor pays only for its new rows. A rung evaluates its field cheapest
        first and stops at the first candidate that scores the maximum on every row: the rest could at
        best tie it, and a tie goes to the cheaper prompt; with one candidate left the race ends (on the
        paragraph stand-in two 1.000 candidates raced over 200 and 300 rows for five minutes). Empty when
        fewer than two race, there are no spare rows, or the objective asks for the cheapest prompt near
        the best (a race for the best score would not answer that).

        After iteration 0 a candidate races the current prompt only if it scores above it on the select rows.
        One that ties there can be accepted only if its gain on the confirm rows holds at the optimization's
        confidence, which a tie on 100 rows seldom turns into, and racing it costs the spare rows at its cost
        a row: on the package-sections stand-in a mutation that tied the current prompt at 0.900 raced 449
        rows, 328 s of a 32-minute optimization, and lost."""
        spare = inp.spare_rows
        if spare is None or spare.empty or self.top < 2 or inp.objective.within_points is not None:
            return [], {}
        later = not first_iteration(inp.history)
        entrants = sorted(
            [
                c
                for c in [base] + contenders
                if c.select_score is not None
                and inp.objective.allows(c.cost)
                and (c is base or not later or c.select_score > base.select_score)
            ],
            key=lambda c: c.select_score,
            reverse=True,
        )
        confidence = self.confidence
        leaders = [c for c in entrants if c is entrants[0] or not surely_better(entrants[0], c, confidence)]
        leaders = _race_field(leaders, self.top)
        if len(leaders) < 2:
            return [], {}
        extra = spare[["row_id", "user_input", "ground_truth_output"]]
        half = len(extra) // 2
        rows = [
            pd.concat([select, extra.head(n)], ignore_index=True)
            for n in ((half, len(extra)) if half else (len(extra),))
        ]
        rungs: list[dict[str, float]] = []
        field, per_row = leaders, {}
        for i, rung_rows in enumerate(rows):
            last = i == len(rows) - 1
            if last and len(rows) > 1:
                field = self.halve(field, rungs[-1], per_row)
                if len(field) < 2 and len(self.summable(leaders, inp)) < 2:
                    rows = rows[:i]  # one left and no sum to race it: the race ends on the rung before
                    break
            scores, per_row = {}, {}
            unbeatable = None  # the cheapest candidate at the metric's maximum on this rung's rows
            for c in sorted(field, key=_evaluation_order):
                if unbeatable is not None:
                    log.info(
                        "fewshot race, rung %d: %s not evaluated: %s scores the maximum on every row and costs "
                        "less per row",
                        i + 1,
                        c.prompt.describe(),
                        unbeatable.prompt.describe(),
                    )
                    continue
                try:
                    result = evaluate(c.prompt, rung_rows)
                    scores[c.id], per_row[c.id] = float(result.value), result
                    if all_at_maximum(result.per_row) and result.value >= 1.0:
                        unbeatable = c
                except ContextWindowError:  # a spare row too long for it: it cannot answer every row
                    log.info("fewshot race: %s does not fit the context on the spare rows", c.prompt.describe())
            field = [c for c in field if c.id in scores]
            if last:
                for candidate in self.ensembles(leaders, rungs[-1] if rungs else scores, inp, seen):
                    if unbeatable is not None and demo_cost(candidate.prompt) > demo_cost(unbeatable.prompt):
                        continue  # at best a tie with the unbeatable one, at a higher cost
                    result = evaluate(candidate.prompt, rung_rows)
                    per_row[candidate.id] = result
                    on_select = evaluate(candidate.prompt, select)  # answers from the cache
                    candidate.scores = dict(zip(select["row_id"].astype(int), map(float, on_select.per_row)))
                    candidate.select_score, candidate.cost = float(on_select.value), row_cost(on_select.answers)
                    scores[candidate.id] = float(result.value)
                    new.append(candidate)
                    tried.append(
                        {
                            "candidate": candidate.id,
                            "parent": candidate.prompt.parent_id,
                            "kind": candidate.kind,
                            "change": f"sum over {1 + len(candidate.prompt.ensemble)} raced demo sets",
                            "choices": candidate.prompt.describe(),
                            "minibatch_score": None,
                            "parent_minibatch_score": None,
                            "select_score": candidate.select_score,
                        }
                    )
            by_id = {c.id: c for c in [base] + contenders + new}
            for cid, score in scores.items():
                log.info(
                    "fewshot race, rung %d (%d select + %d spare rows): %s %s=%.3f",
                    i + 1,
                    len(select),
                    len(rung_rows) - len(select),
                    by_id[cid].prompt.describe(),
                    inp.metric,
                    score,
                )
            rungs.append(scores)
            if len(field) < 2:  # one left: nobody to race on the later rungs
                rows = rows[: i + 1]
                break
        deciding = self.deciding_rung(rungs, per_row, rows[-1], [base] + contenders + new, inp, evaluate)
        if deciding is not None:
            rows.append(deciding[0])
            rungs.append(deciding[1])
            per_row = deciding[2]
        for entry in tried:
            for i, scores in enumerate(rungs):
                if entry["candidate"] in scores:
                    entry["race_score"] = scores[entry["candidate"]]  # the last rung it reached
                    entry["race_rows"] = len(rows[i])
        return rungs, per_row

    def deciding_rung(
        self,
        rungs: list[dict[str, float]],
        per_row: dict[str, Evaluation],
        last_rows: pd.DataFrame,
        candidates: list[Candidate],
        inp: OptimizerContext,
        evaluate: Evaluator,
    ) -> tuple[pd.DataFrame, dict[str, float], dict[str, Evaluation]] | None:
        """The last rung's leader and the cheaper prompt the tie rule would pick instead, raced again on the
        last rung's rows plus the deciding rows, when the leader is ahead by `decide_lead` or more: its rows,
        scores and evaluations, or None (no such pair, no deciding rows, or a prompt that does not fit).

        Three hundred rows cannot confirm a 2-point lead at 0.9, and the tie rule then gives it away: on
        sms_spam 8 retrieved demos led 16 static ones 0.977 to 0.957 on the last rung, the static set won
        the tie (0.960 on test), and on the 933 dev rows the search never chose on the two scored 0.983
        and 0.956. A smaller lead stays a tie, as the tie rule meant it: on sst2 a retrieved leader one
        row ahead in 300 lost 4 points on test."""
        deciding = inp.deciding_rows
        if not rungs or deciding is None or deciding.empty or self.decide_lead <= 0:
            return None
        last = rungs[-1]
        by_id = {c.id: c for c in candidates}
        field = [by_id[cid] for cid in last if cid in by_id and cid in per_row]
        if len(field) < 2:
            return None
        top = _race_leader(field, last)
        pick = self.winner(field, last, per_row)
        if pick is top or last[top.id] - last[pick.id] < self.decide_lead:
            return None
        rows = pd.concat([last_rows, deciding[["row_id", "user_input", "ground_truth_output"]]], ignore_index=True)
        scores, evaluations = {}, {}
        for c in (top, pick):
            try:
                result = evaluate(c.prompt, rows)
            except ContextWindowError:  # a deciding row too long for it: the tie rule's pick stands
                return None
            scores[c.id], evaluations[c.id] = float(result.value), result
            log.info(
                "fewshot race, deciding rung (%d rows: the last rung's and %d more spare): %s %s=%.3f",
                len(rows),
                len(deciding),
                c.prompt.describe(),
                inp.metric,
                scores[c.id],
            )
        return rows, scores, evaluations

    def winner(self, field: list[Candidate], raced: dict[str, float], rows: dict[str, Evaluation]) -> Candidate:
        """The best score on the last rung's rows, unless a cheaper candidate is a tie there: one the best
        does not beat for sure (paired bootstrap at race_confidence: of the row scores, or of the target
        recomputed on resampled rows where it is not their mean, as macro F1) costs less per row
        (`_cheapest_first`), and the cheaper wins.

        Three hundred rows see a 3-point lead at 0.9 (the paired difference's standard error is about
        1.5 points where the two disagree on a tenth of the rows); a smaller lead is noise, and the
        tie goes to the prompt that costs less on every row it will answer. On sst2, 8 retrieved demos
        led a sum of three static sets by one row in 300 (0.877 against 0.873) at twice the seconds
        per row (0.36 s against 0.19 s), and one static set by 2 rows at five times (0.07 s)."""
        top = _race_leader(field, raced)
        ties = [c for c in field if c is top or not _surely_ahead(rows[top.id], rows[c.id], self.confidence)]
        return min(ties, key=_cheapest_first(ties, raced))

    def halve(self, field: list[Candidate], scores: dict[str, float], rows: dict[str, Evaluation]) -> list[Candidate]:
        """Who goes on to the next rung: the better half (at least two, or there is no race), and the
        cheapest candidate the rung's leader does not beat for sure when none of that half is as cheap,
        so that a tie on the last rung can still go to the cheaper prompt; less any of them that costs
        more than another kept one and scores no higher on this rung. Heuristic, like the halving itself:
        the costlier one could still overtake for sure on the rows it has yet to see."""
        ranked = sorted(field, key=lambda c: -scores[c.id])
        keep = ranked[: max(2, (len(ranked) + 1) // 2)]
        ties = [c for c in ranked[len(keep) :] if not _surely_ahead(rows[ranked[0].id], rows[c.id], self.confidence)]
        if ties:
            order = _cheapest_first(keep + ties, scores)
            cheapest = min(ties, key=order)
            if order(cheapest) < min(order(c) for c in keep):
                keep.append(cheapest)
        # A costlier candidate no better than a cheaper one here could win only by overtaking it for sure on rows it
        # has yet to see (a tie goes to the cheaper): it stops. On the package-sections stand-in 8 retrieved
        # paragraphs trailed 4 on the first rung, and the second would have cost them about 170 s more.
        return [
            c
            for c in keep
            if not any(
                _evaluation_order(d)[:2] < _evaluation_order(c)[:2] and scores[d.id] >= scores[c.id] for d in keep
            )
        ]

    def summable(self, leaders: list[Candidate], inp: OptimizerContext) -> list[Candidate]:
        """The leaders an ensemble may sum: static label sets, plain, where the backend ranks labels."""
        if not (inp.calibration and inp.labels):
            return []
        return [
            c
            for c in leaders
            if c.prompt.demos and c.prompt.answer == "label" and not c.prompt.calibrated and not c.prompt.ensemble
        ]

    def ensembles(
        self, leaders: list[Candidate], raced: dict[str, float], inp: OptimizerContext, seen: set
    ) -> list[Candidate]:
        """The race's best two static label sets summed, and its best three: candidates that race too.

        Which train rows a set holds moves a small model's test score by several points, and the race
        can only pick one draw; a sum over draws averages their quirks out. On sst2 (ad hoc) the race's
        three leaders scored 0.900, 0.884 and 0.894 on test alone, their pairs 0.888 to 0.912, all three
        0.900. Only where the backend ranks labels (the sum needs label scores)."""
        sets = sorted(self.summable(leaders, inp), key=lambda c: -raced[c.id])
        out = []
        for size in range(2, min(3, len(sets)) + 1):
            members = sets[:size]
            prompt = members[0].prompt.child(ensemble=[m.prompt.demos for m in members[1:]])
            if signature(prompt) not in seen:
                seen.add(signature(prompt))
                out.append(Candidate(prompt, inp.iteration, "ensemble"))
        return out


def _race_field(leaders: list[Candidate], size: int) -> list[Candidate]:
    """Who races: up to `size` leaders taken in turn from the static and the retrieved ones, best first,
    leaving out a candidate with the demos of one already in and the same score on every select row (free
    and label answers of one prompt, say: the race would only repeat it). By score alone the field fills with variants of one kind of prompt:
    on sst2 three retrieved variants took three of four places, the static sets that an ensemble needs
    never raced, and the proposal lost 6 points on test to the ensemble that won before."""
    kinds = [[c for c in leaders if c.prompt.retrieval is None], [c for c in leaders if c.prompt.retrieval is not None]]
    field, seen_scores = [], set()
    while len(field) < size and any(kinds):
        for kind in sorted((k for k in kinds if k), key=lambda k: -k[0].select_score):
            candidate = kind.pop(0)
            p = candidate.prompt
            retrieval = (p.retrieval.k, p.retrieval.method, p.retrieval.per_label) if p.retrieval else None
            key = (tuple(sorted(candidate.scores.items())), tuple(d.user_input for d in p.demos), retrieval)
            if key not in seen_scores and len(field) < size:
                seen_scores.add(key)
                field.append(candidate)
    return sorted(field, key=lambda c: -c.select_score)


def _race_leader(field: list[Candidate], raced: dict[str, float]) -> Candidate:
    """The best score on the raced rows (equal scores: fewer prompt tokens per row)."""
    return max(field, key=lambda c: (raced[c.id], -tokens_per_row(c)))


def _evaluation_order(c: Candidate) -> tuple:
    """The order a rung evaluates its field in, cheapest first as the tie rule sees it (`_cheapest_first`
    without the score, which the rung has yet to give): once one scores the maximum on every row, each
    candidate after it could at best tie it there, and a tie goes to the cheaper prompt."""
    return demo_cost(c.prompt), tokens_per_row(c), c.born_iteration


def all_at_maximum(row_scores) -> bool:
    """Every row scored the maximum (scorers score a row in [0, 1]): no prompt can do better on these rows."""
    row_scores = list(row_scores)
    return bool(row_scores) and min(row_scores) >= 1.0


def _cheapest_first(candidates: list[Candidate], scores: dict[str, float]):
    """A sort key, cheapest first: demos evaluated anew for every row (retrieved k, plus one row's worth per
    extra ensemble set; static demos sit in the prefix the server caches), then prompt tokens per row, then
    the higher score, then the older candidate. Not measured seconds: they say the same on llama.cpp but
    differ between a fresh run and a rerun from the response cache, and a rerun must decide the same."""
    return lambda c: (*_evaluation_order(c)[:2], -scores[c.id], c.born_iteration)


def _surely_ahead(leader: Evaluation, other: Evaluation, confidence: float) -> bool:
    """Whether `leader` beats `other` for sure on the rows both answered (the same rows, in one order)."""
    statistic = None
    if leader.recompute is not None and other.recompute is not None:

        def statistic(ix):
            return other.recompute(ix), leader.recompute(ix)

    gain = paired_bootstrap_gain(
        other.per_row,
        leader.per_row,
        confidence,
        resamples=500 if statistic is None else 300,
        seed=0,
        statistic=statistic,
    )
    return gain.low > 0


def beats(winner: Candidate, base: Candidate, rungs: list[dict[str, float]]) -> bool:
    """Whether the proposal beats the baseline on the most rows both were scored on: the last race rung
    the baseline reached, else the select rows (a baseline the leader beat for sure did not race)."""
    for scores in reversed(rungs):
        if winner.id in scores and base.id in scores:
            return scores[winner.id] > scores[base.id]
    return winner.select_score > base.select_score
