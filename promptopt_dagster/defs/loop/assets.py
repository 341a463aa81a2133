"""One iteration of an optimization as assets, one partition per (optimization, g<generation>-i<n>).

iteration_setup -> baseline_prompt -> baseline_predictions -> baseline_metrics -> refined_prompt
(+ candidate_pool) -> refined_predictions -> refined_metrics -> comparison_report -> best_prompt.
iteration_setup alone reads the optimization's settings (of the generation in its key) and rows;
every other asset reads the setup it resolved (app/iteration_setup.py).
What iteration N continues from (iteration N-1's best prompt, loop state, candidate pool and the
optimizer's own state) comes from the state store (app/state.py, defs/state_store.py): Dagster
cannot map a dynamic partition to its predecessor. The work is done by the layers below.
"""

import dataclasses
import json

import dagster as dg
import numpy as np
import pandas as pd

from promptopt_dagster.app.iteration_setup import IterationSetup
from promptopt_dagster.app.optimizations import OptimizationSpec
from promptopt_dagster.app.quality import leakage_gate, metric_range_gate, predictions_gate, prompt_gate
from promptopt_dagster.app.reports import comparison_markdown, worst_rows_markdown
from promptopt_dagster.app.state import (
    IterationKey,
    IterationState,
    NotContinuable,
    Outcome,
    Search,
    continue_from,
    loop_before,
)
from promptopt_dagster.core.decisions import LoopState, Spend, decide
from promptopt_dagster.core.errors import DatasetError
from promptopt_dagster.core.intervals import paired_bootstrap_gain
from promptopt_dagster.core.prompts import PromptVersion
from promptopt_dagster.defs.evaluation import predict_rows, score_answers, settings_of, splits_of, suite_of
from promptopt_dagster.defs.metadata import (
    gate,
    optimization_metadata,
    prompt_md,
    snapshot,
    spend_of,
    usage_metadata,
    usage_since,
)
from promptopt_dagster.defs.names import ARTIFACTS, LOOP
from promptopt_dagster.defs.partitions import (
    ITERATION_EXPR,
    iteration_key,
    iteration_name,
    iteration_partitions,
    of_optimization,
    split_key,
)
from promptopt_dagster.defs.resources import LLMResource, ProjectResource
from promptopt_dagster.defs.state_store import WarehouseStateStore
from promptopt_dagster.defs.table_types import METRICS, PREDICTIONS, MetricsFrame, PredictionsFrame, column_schema
from promptopt_dagster.defs.tables import prompt_frame, prompt_from_frame, with_partition
from promptopt_dagster.defs.webserver_client import asset_partition_url
from promptopt_dagster.llm import ledger, store_location
from promptopt_dagster.llm import usage as llm_usage
from promptopt_dagster.llm.usage import UsageByModel
from promptopt_dagster.optimizers import Evaluation, OptimizerContext, get_optimizer
from promptopt_dagster.optimizers.pool import Candidate, best, pareto_frontier, pool_frame
from promptopt_dagster.scoring.suite import objective_value, summary_from_frame, wide_scores

#: the optimization's settings and rows, read by iteration_setup from its optimization's partition
OPTIMIZATION_INS = {
    "optimization_settings": dg.AssetIn(partition_mapping=of_optimization),
    "optimization_rows": dg.AssetIn(partition_mapping=of_optimization),
}


# --- one iteration ------------------------------------------------------------------------------


@dg.asset(
    partitions_def=iteration_partitions,
    metadata=ITERATION_EXPR,
    group_name=LOOP,
    ins=OPTIMIZATION_INS,
)
def iteration_setup(
    context: dg.AssetExecutionContext, optimization_settings: pd.DataFrame, optimization_rows: pd.DataFrame
) -> pd.DataFrame:
    """What this iteration works with, resolved once: its generation's settings (as stored when the
    generation started) and the dataset's rows, cut into train, select, confirm, spare (dev rows and, when
    dev is short, held-out train rows) and test."""
    key = iteration_of(context)
    spec = settings_of(optimization_settings, key.generation)
    try:
        setup = IterationSetup.resolve(spec, splits_of(optimization_rows, spec.dataset))
    except DatasetError as e:
        raise dg.Failure(str(e)) from None
    sizes = setup.sizes()
    context.log.info(
        f"iteration_setup {key.optimization} {key.name}: {spec.dataset}, optimizer {spec.optimizer}; "
        + ", ".join(f"{n} {part}" for part, n in sizes.items())
        + " rows"
    )
    context.add_output_metadata(
        {
            "dataset": spec.dataset,
            "optimizer": spec.optimizer,
            "target_metric": spec.target_metric or "",
            **{f"{part}_rows": n for part, n in sizes.items()},
            "settings": dg.MetadataValue.json(spec.model_dump(mode="json", exclude_none=True)),
        }
    )
    return with_partition(setup.to_frame(), key.optimization, key.generation, key.iteration)


def _setup(frame: pd.DataFrame) -> IterationSetup:
    try:
        return IterationSetup.from_frame(frame)
    except DatasetError as e:
        raise dg.Failure(str(e)) from None


@dg.asset(partitions_def=iteration_partitions, metadata=ITERATION_EXPR, group_name=LOOP, io_manager_key=ARTIFACTS)
def baseline_prompt(
    context: dg.AssetExecutionContext,
    iteration_setup: pd.DataFrame,
    project: ProjectResource,
    state_store: WarehouseStateStore,
) -> pd.DataFrame:
    """The prompt this iteration tries to beat: the initial prompt, then the best prompt of the iteration
    it continues from (read from the state store, with a link to that partition)."""
    key = iteration_of(context)
    optimization = _setup(iteration_setup).spec
    previous = _continue_from(state_store, key)
    metadata = {}
    if previous is None:
        prompt = project.initial_prompt(optimization.dataset)
    else:
        prompt, stop_reason = previous.outcome.best_prompt, previous.outcome.stop_reason
        if stop_reason:
            context.log.warning(
                f"iteration {previous.key.name} decided to stop ({stop_reason}); "
                "running this iteration anyway because it was requested"
            )
        link = asset_partition_url(
            "best_prompt", str(iteration_key(key.optimization, key.generation, previous.key.iteration))
        )
        metadata["continued_from"] = dg.MetadataValue.md(f"[{previous.key}]({link})")
    context.add_output_metadata(
        {"prompt": prompt_md(prompt), "version": prompt.version, "prompt_id": prompt.id, **metadata}
    )
    return prompt_frame(
        key.optimization,
        key.generation,
        key.iteration,
        optimization.dataset,
        state_store.stored_form(prompt),
        status="baseline",
    )


def iteration_of(context: dg.AssetExecutionContext) -> IterationKey:
    return IterationKey(*split_key(context))


def _continue_from(store: WarehouseStateStore, key: IterationKey, demo_pool=None) -> IterationState | None:
    try:
        return continue_from(store, key, demo_pool)
    except NotContinuable as e:
        raise dg.Failure(str(e)) from None


def _predictions(
    context: dg.AssetExecutionContext,
    asset: str,
    setup: IterationSetup,
    prompt_table: pd.DataFrame,
    project: ProjectResource,
    task_model: LLMResource,
    state_store: WarehouseStateStore,
):
    name, generation, iteration = split_key(context)
    optimization = setup.spec
    spec, prompt = project.spec(setup.dataset), state_store.with_pool(prompt_from_frame(prompt_table))
    rows = setup.confirm
    preds = predict_rows(
        task_model.client_for(optimization.task_model),
        prompt,
        rows,
        spec,
        f"{asset} {name} {iteration_name(generation, iteration)}",
    )
    usage = llm_usage.from_rows(preds.to_dict("records"))
    frame = with_partition(preds, name, generation, iteration)
    frame.insert(2, "prompt_id", prompt.id)
    t = llm_usage.total(usage)
    context.log.info(
        f"{asset}: {len(frame)} rows, {t.llm_calls} answered by the model in {t.requests} requests, "
        f"{t.cache_hits} from cache, {t.errors} failed"
    )
    yield dg.Output(frame, metadata={"rows": len(frame), "prompt_id": prompt.id, **usage_metadata(usage)})
    yield gate("all_rows_answered", predictions_gate(frame, rows["row_id"], optimization.max_failed_fraction), asset)


def _completeness(asset: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            "all_rows_answered",
            asset=asset,
            blocking=True,
            description="Every evaluation row has exactly one answer and failures stay under max_failed_fraction.",
        )
    ]


@dg.asset(
    partitions_def=iteration_partitions,
    metadata={**ITERATION_EXPR, **column_schema(PREDICTIONS)},
    group_name=LOOP,
    check_specs=_completeness("baseline_predictions"),
    dagster_type=PredictionsFrame,
)
def baseline_predictions(
    context: dg.AssetExecutionContext,
    iteration_setup: pd.DataFrame,
    baseline_prompt: pd.DataFrame,
    project: ProjectResource,
    task_model: LLMResource,
    state_store: WarehouseStateStore,
):
    """The task model's answers to the confirm rows with the baseline prompt."""
    yield from _predictions(
        context, "baseline_predictions", _setup(iteration_setup), baseline_prompt, project, task_model, state_store
    )


def _metrics(
    context: dg.AssetExecutionContext,
    asset: str,
    predictions: pd.DataFrame,
    project: ProjectResource,
    judge_model: LLMResource,
    optimization: OptimizationSpec,
):
    name, generation, iteration = split_key(context)
    suite = suite_of(project, optimization.dataset, judge_model, optimization)
    result, usage = score_answers(suite, judge_model, predictions)
    frame = with_partition(result.to_frame(predictions["row_id"].tolist()), name, generation, iteration)
    frame["usage_json"] = llm_usage.to_json(usage)  # judge calls count toward the budget (comparison_report)
    summary = result.summary()
    context.log.info(
        f"{asset}: {suite.target} = {result.value:.4f} on {len(predictions)} rows ("
        + ", ".join(f"{k} {v:.4f}" for k, v in summary.items())
        + ")"
    )
    details = {
        f"{name}.{k}": dg.MetadataValue.float(float(v))
        for name, r in result.results.items()
        for k, v in r.details.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    scored = predictions.merge(wide_scores(frame), on="row_id")
    yield dg.Output(
        frame,
        metadata={
            "score": dg.MetadataValue.float(result.value),
            "target_metric": suite.target,
            **{name: dg.MetadataValue.float(v) for name, v in summary.items()},
            **details,
            "worst_rows": dg.MetadataValue.md(worst_rows_markdown(scored, [*result.results])),
            **(usage_metadata(usage) if usage else {}),
        },
    )
    yield gate("scores_in_range", metric_range_gate(frame["score"]), asset, dg.AssetCheckSeverity.WARN)


def _in_range(asset: str) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec("scores_in_range", asset=asset, description="Every per-row score is in [0, 1].")]


@dg.asset(
    partitions_def=iteration_partitions,
    metadata={**ITERATION_EXPR, **column_schema(METRICS)},
    group_name=LOOP,
    check_specs=_in_range("baseline_metrics"),
    dagster_type=MetricsFrame,
)
def baseline_metrics(
    context: dg.AssetExecutionContext,
    iteration_setup: pd.DataFrame,
    baseline_predictions: pd.DataFrame,
    project: ProjectResource,
    judge_model: LLMResource,
):
    """Per-row and aggregate scores of the baseline answers, per scorer and weighted (the iteration's baseline)."""
    yield from _metrics(
        context, "baseline_metrics", baseline_predictions, project, judge_model, _setup(iteration_setup).spec
    )


@dg.multi_asset(
    partitions_def=iteration_partitions,
    group_name=LOOP,
    can_subset=False,
    deps=["baseline_metrics"],  # so a failed blocking check on the baseline's answers stops the search too
    outs={
        "refined_prompt": dg.AssetOut(
            metadata=ITERATION_EXPR,
            io_manager_key=ARTIFACTS,
            description="The optimizer's proposal; when it has "
            "nothing usable, the baseline is kept and the reason recorded.",
        ),
        "candidate_pool": dg.AssetOut(
            metadata=ITERATION_EXPR,
            io_manager_key=ARTIFACTS,
            description="Every candidate of this optimization "
            "so far, with its per-row scores on the select rows, its parent and whether "
            "it passed the minibatch gate.",
        ),
    },
    check_specs=[
        dg.AssetCheckSpec(
            "prompt_is_usable",
            asset="refined_prompt",
            blocking=True,
            description="Not empty, output_prompt keeps exactly one {user_input}, system_prompt has no {placeholders}.",
        ),
        dg.AssetCheckSpec(
            "no_held_out_rows",
            asset="refined_prompt",
            blocking=True,
            description="No demo or demo-pool row is a dev or test row, and the instructions "
            "copy no long span of one: those scores would be inflated.",
        ),
    ],
)
def refined_prompt(
    context: dg.AssetExecutionContext,
    iteration_setup: pd.DataFrame,
    baseline_prompt: pd.DataFrame,
    project: ProjectResource,
    task_model: LLMResource,
    optimizer_model: LLMResource,
    judge_model: LLMResource,
    state_store: WarehouseStateStore,
):
    """The optimizer's proposal, chosen on the select rows; the confirm rows never reach the optimizer.

    The optimizer sees the baseline's per-row scores on the select rows and, from an LLM judge, why
    each row scored low; the candidate pool carries every earlier candidate into this iteration."""
    name, generation, iteration = split_key(context)
    setup = _setup(iteration_setup)
    optimization, dataset = setup.spec, setup.dataset
    spec, prompt = project.spec(dataset), state_store.with_pool(prompt_from_frame(baseline_prompt))
    suite = suite_of(project, dataset, judge_model, optimization)
    select, confirm = setup.select, setup.confirm
    held_out = setup.held_out()
    train = setup.demo_source()
    clients = [task_model.client_for(optimization.task_model), optimizer_model.client_for(optimization.optimizer_model)]
    clients += [judge_model.get_client()] if suite.uses_judge else []
    task, opt = clients[0], clients[1]
    before = snapshot(clients)
    scored_rows = [0]

    def evaluate(candidate: PromptVersion, rows: pd.DataFrame) -> Evaluation:
        answers = predict_rows(task, candidate, rows, spec, f"candidate {name} {iteration_name(generation, iteration)}")
        scored_rows[0] += len(rows)
        result = suite.score(
            answers["prediction"].tolist(),
            answers["ground_truth_output"].tolist(),
            inputs=answers["user_input"].tolist(),
        ).objective()
        recompute = None
        if not suite.uses_judge and result.per_row and abs(float(np.mean(result.per_row)) - result.value) > 1e-9:
            predictions = answers["prediction"].to_numpy(dtype=object)
            references = answers["ground_truth_output"].to_numpy(dtype=object)

            def recompute(ix: np.ndarray) -> float:  # macro F1 and the like, on resampled rows: no model call
                return suite.score(list(predictions[ix]), list(references[ix])).objective().value

        return Evaluation(answers, result.per_row, result.value, result.rationales, recompute)

    optimizer = get_optimizer(optimization.optimizer, **optimization.optimizer_options())
    previous = _continue_from(state_store, IterationKey(name, generation, iteration), optimizer.demo_pool(train))
    history = previous.search.pool if previous and previous.search else []
    loop = loop_before(previous)
    baseline = evaluate(prompt, select)
    # what the optimizer returned as its state in the iteration this one continues from (None at 0)
    previous_state = previous.search.optimizer_state if previous and previous.search else None
    proposal = optimizer.propose(
        OptimizerContext(
            prompt=prompt,
            baseline=baseline,
            metric=suite.describe(),
            train=train,
            labels=spec.labels,
            label_descriptions=spec.label_descriptions,
            iteration=iteration,
            seed=optimization.seed,
            select_rows=select,
            history=history,
            spare_rows=setup.race_rows(),
            deciding_rows=setup.deciding_rows(),
            calibration=task.ranks_labels,
            metric_call_budget=_metric_calls_left(optimization, loop, scored_rows[0]),
            state=previous_state,
            objective=optimization.objective,
        ),
        evaluate,
        opt,
    )
    usage = usage_since(clients, before)
    if proposal.prompt is None:  # the optimizer already logged why; the reason is also stored below
        refined, status = prompt, "rejected_by_optimizer"
    else:
        refined, status = proposal.prompt, "proposed"
    pool = history + proposal.pool
    stored_pool = state_store.save_search(IterationKey(name, generation, iteration), Search(pool, proposal.state))
    frontier = pareto_frontier(pool)
    top = best(pool)
    context.log.info(
        f"refined_prompt {name} {iteration_name(generation, iteration)}: {status} ({refined.describe()}); "
        f"{len(proposal.pool)} new candidates, pool {len(pool)}, frontier {len(frontier)}; "
        f"{scored_rows[0]} rows scored on {len(select)} select rows"
    )
    metadata = {
        "status": status,
        "prompt": prompt_md(refined),
        "version": refined.version,
        "choices": refined.describe(),
        "select_rows": len(select),
        "confirm_rows": len(confirm),
        "metric_calls": scored_rows[0],
        "optimizer_state_bytes": len(proposal.state or b""),
        "candidates": dg.MetadataValue.json(proposal.candidates),
        **usage_metadata(usage),
    }
    if proposal.rejected_reason:
        metadata["rejected_reason"] = proposal.rejected_reason
    if proposal.raw_output is not None:
        metadata["optimizer_output"] = dg.MetadataValue.md(f"```\n{proposal.raw_output[:4000]}\n```")
    yield dg.Output(
        prompt_frame(
            name,
            generation,
            iteration,
            dataset,
            state_store.stored_form(refined),
            status=status,
            note=proposal.rejected_reason,
            usage_json=llm_usage.to_json(usage),
            metric_calls=scored_rows[0],
        ),
        output_name="refined_prompt",
        metadata=metadata,
    )
    yield gate("prompt_is_usable", prompt_gate(refined), "refined_prompt")
    yield gate("no_held_out_rows", leakage_gate(refined, {**held_out, "confirm": confirm}), "refined_prompt")
    yield dg.Output(
        with_partition(pool_frame(stored_pool), name, generation, iteration),
        output_name="candidate_pool",
        metadata={
            "candidates": len(pool),
            "new_candidates": len(proposal.pool),
            "frontier": len(frontier),
            "best_select_score": dg.MetadataValue.float(float("nan") if top is None else top.select_score),
            "table": dg.MetadataValue.md(_pool_md(pool, frontier)),
        },
    )


def _metric_calls_left(optimization, loop: LoopState, scored_now: int) -> int | None:
    """Rows the optimizer may still score under the optimization's budget (None: no cap)."""
    cap = optimization.budget.max_metric_calls
    if not cap:
        return None
    return max(0, cap - loop.spent.metric_calls - scored_now)


def _pool_md(pool: list[Candidate], frontier: dict[str, int]) -> str:
    lines = [
        "| candidate | parent | born | kind | choices | minibatch | select | rows won |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in sorted(pool, key=lambda c: (c.select_score is None, -(c.select_score or 0.0))):
        select = "-" if c.select_score is None else f"{c.select_score:.4f}"
        mini = "-" if c.minibatch_score is None else f"{c.minibatch_score:.3f}"
        lines.append(
            f"| `{c.id}` | `{c.prompt.parent_id}` | {c.born_iteration} | {c.kind} | {c.prompt.describe()} "
            f"| {mini} | {select} | {frontier.get(c.id, 0)} |"
        )
    return "\n".join(lines)


@dg.asset(
    partitions_def=iteration_partitions,
    metadata={**ITERATION_EXPR, **column_schema(PREDICTIONS)},
    group_name=LOOP,
    check_specs=_completeness("refined_predictions"),
    dagster_type=PredictionsFrame,
)
def refined_predictions(
    context: dg.AssetExecutionContext,
    iteration_setup: pd.DataFrame,
    refined_prompt: pd.DataFrame,
    project: ProjectResource,
    task_model: LLMResource,
    state_store: WarehouseStateStore,
):
    """The task model's answers to the same confirm rows with the refined prompt."""
    yield from _predictions(
        context, "refined_predictions", _setup(iteration_setup), refined_prompt, project, task_model, state_store
    )


@dg.asset(
    partitions_def=iteration_partitions,
    metadata={**ITERATION_EXPR, **column_schema(METRICS)},
    group_name=LOOP,
    check_specs=_in_range("refined_metrics"),
    dagster_type=MetricsFrame,
)
def refined_metrics(
    context: dg.AssetExecutionContext,
    iteration_setup: pd.DataFrame,
    refined_predictions: pd.DataFrame,
    project: ProjectResource,
    judge_model: LLMResource,
):
    """Per-row and aggregate scores of the refined answers, per scorer and weighted."""
    yield from _metrics(
        context, "refined_metrics", refined_predictions, project, judge_model, _setup(iteration_setup).spec
    )


@dg.asset(
    partitions_def=iteration_partitions,
    metadata=ITERATION_EXPR,
    group_name=LOOP,
    io_manager_key=ARTIFACTS,
)
def comparison_report(
    context: dg.AssetExecutionContext,
    iteration_setup: pd.DataFrame,
    baseline_prompt: pd.DataFrame,
    refined_prompt: pd.DataFrame,
    baseline_predictions: pd.DataFrame,
    refined_predictions: pd.DataFrame,
    baseline_metrics: pd.DataFrame,
    refined_metrics: pd.DataFrame,
    project: ProjectResource,
    judge_model: LLMResource,
    state_store: WarehouseStateStore,
) -> pd.DataFrame:
    """Baseline versus refined on the same rows, the accept/reject decision and whether to go on.

    It also sums what the iteration's model calls used, so the budget is part of the same decision."""
    name, generation, iteration = split_key(context)
    optimization = _setup(iteration_setup).spec
    dataset = optimization.dataset
    metric = _target_name(baseline_metrics)
    ref_row = refined_prompt.iloc[0]
    baseline, refined = prompt_from_frame(baseline_prompt), prompt_from_frame(refined_prompt)
    state = loop_before(_continue_from(state_store, IterationKey(name, generation, iteration)))
    baseline_score = objective_value(baseline_metrics)
    rejected = ref_row["status"] == "rejected_by_optimizer"
    refined_score = None if rejected else objective_value(refined_metrics)
    scores = {
        "baseline": summary_from_frame(baseline_metrics),
        "refined": None if rejected else summary_from_frame(refined_metrics),
    }
    usage = llm_usage.merge(
        llm_usage.from_rows(baseline_predictions.to_dict("records")),
        _judge_usage(baseline_metrics),
        llm_usage.from_json(ref_row["usage_json"]),
        llm_usage.from_rows(refined_predictions.to_dict("records")),
        _judge_usage(refined_metrics),
    )
    metric_calls = len(baseline_predictions) + (0 if rejected else len(refined_predictions))
    metric_calls += int(0 if pd.isna(ref_row["metric_calls"]) else ref_row["metric_calls"])
    gain = (
        None
        if rejected
        else _paired_gain(
            project,
            dataset,
            judge_model,
            optimization,
            baseline_predictions,
            refined_predictions,
            baseline_metrics,
            refined_metrics,
        )
    )
    spent = with_paid(
        dataclasses.replace(spend_of(usage), metric_calls=metric_calls),
        state.spent,
        judge_model.cache_path,
        name,
        generation,
    )
    decision = decide(iteration, baseline_score, refined_score, state, optimization.stop_policy(), spent, gain)
    report_md = comparison_markdown(
        metric, decision, baseline, refined, None if pd.isna(ref_row["note"]) else ref_row["note"], scores
    )
    columns = list(scores["baseline"])
    context.log.info(
        f"{name} {iteration_name(generation, iteration)}: {decision.why}; "
        f"{'stop: ' + decision.stop_reason if decision.stop_reason else 'continue'}"
    )
    context.add_output_metadata(
        {
            "report": dg.MetadataValue.md(report_md),
            "scores": dg.MetadataValue.table(
                records=[
                    dg.TableRecord(
                        {
                            "prompt": name,
                            "version": prompt.version,
                            **{c: (values or {}).get(c, float("nan")) for c in columns},
                        }
                    )
                    for name, prompt, values in (
                        ("baseline", baseline, scores["baseline"]),
                        ("refined", refined, scores["refined"]),
                    )
                ],
                schema=dg.TableSchema(
                    columns=[
                        dg.TableColumn("prompt", "string"),
                        dg.TableColumn("version", "int"),
                        *(dg.TableColumn(c, "float") for c in columns),
                    ]
                ),
            ),
            "target_metric": metric,
            "baseline_score": dg.MetadataValue.float(baseline_score),
            "refined_score": dg.MetadataValue.float(float("nan") if refined_score is None else refined_score),
            "best_score": dg.MetadataValue.float(decision.best_score),
            "accepted": dg.MetadataValue.bool(decision.accepted),
            **(
                {
                    "gain": dg.MetadataValue.float(gain.gain),
                    "gain_low": dg.MetadataValue.float(gain.low),
                    "gain_high": dg.MetadataValue.float(gain.high),
                    "confidence": dg.MetadataValue.float(gain.confidence),
                    "confirm_rows": gain.rows,
                }
                if gain
                else {}
            ),
            "stop_reason": decision.stop_reason or "",
            **usage_metadata(usage),
            **optimization_metadata(decision.spent),
        }
    )
    return pd.DataFrame(
        [
            {
                "optimization": name,
                "iteration": iteration_name(generation, iteration),
                "generation": generation,
                "step": iteration,
                "dataset": dataset,
                "metric": metric,
                "baseline_prompt_id": baseline.id,
                "refined_prompt_id": refined.id,
                "baseline_score": baseline_score,
                "refined_score": float("nan") if refined_score is None else refined_score,
                "accepted": decision.accepted,
                "best_score": decision.best_score,
                "iterations_without_improvement": decision.iterations_without_improvement,
                "stop_reason": decision.stop_reason,
                "why": decision.why,
                "report_md": report_md,
                "scores_json": json.dumps(scores),
                "usage_json": llm_usage.to_json(usage),
                "spent_json": decision.spent.to_json(),
                "gain_json": json.dumps(dataclasses.asdict(gain) if gain else None),
            }
        ]
    ).astype({"stop_reason": "string"})


def with_paid(this: Spend, before: Spend, cache_path: str | None, name: str, generation: int) -> Spend:
    """This iteration's spend, raised where needed so that the optimization's requests, tokens and cost come
    to at least what the usage ledger says its generation paid: a canceled or killed run's calls count toward
    the budget, though no asset recorded them. (metric_calls, llm_calls and cache_hits stay what the
    materialized assets used.)"""
    if not store_location.exists(cache_path):
        return this
    paid = ledger.spend(store_location.resolve(cache_path), name, generation, unassigned=True)
    return dataclasses.replace(
        this,
        requests=max(this.requests, paid.requests - before.requests),
        tokens=max(this.tokens, paid.tokens - before.tokens),
        cost_usd=max(this.cost_usd, paid.cost_usd - before.cost_usd),
    )


def _paired_gain(
    project: ProjectResource,
    dataset: str,
    judge_model: LLMResource,
    optimization: OptimizationSpec,
    base_answers: pd.DataFrame,
    ref_answers: pd.DataFrame,
    base_metrics: pd.DataFrame,
    ref_metrics: pd.DataFrame,
):
    """The paired bootstrap of refined minus baseline on the confirm rows.

    A target that is the mean of its row scores is resampled as such; one that is not (macro F1,
    corpus BLEU) is recomputed by its scorer on each resample, which needs no model call."""
    base = wide_scores(base_metrics).set_index("row_id")["score"]
    ref = wide_scores(ref_metrics).set_index("row_id")["score"].reindex(base.index)
    statistic = None
    if any(
        abs(float(rows.mean()) - objective_value(m)) > 1e-9 for rows, m in ((base, base_metrics), (ref, ref_metrics))
    ):
        suite = suite_of(project, dataset, judge_model, optimization)
        if not suite.uses_judge:
            b = base_answers.set_index("row_id").reindex(base.index)
            r = ref_answers.set_index("row_id").reindex(base.index)
            refs, bp, rp = (b["ground_truth_output"].to_numpy(), b["prediction"].to_numpy(), r["prediction"].to_numpy())

            def statistic(ix):
                return (
                    suite.score(list(bp[ix]), list(refs[ix])).value,
                    suite.score(list(rp[ix]), list(refs[ix])).value,
                )

    return paired_bootstrap_gain(
        base.to_numpy(),
        ref.to_numpy(),
        optimization.confidence,
        resamples=2000 if statistic is None else 400,
        seed=optimization.seed,
        statistic=statistic,
    )


def _target_name(metrics: pd.DataFrame) -> str:
    target = metrics[metrics["is_target"].astype(bool)]["scorer"]
    return str(target.iloc[0]) if len(target) else "score"


def _judge_usage(metrics: pd.DataFrame) -> UsageByModel:
    return llm_usage.from_json(metrics["usage_json"].iloc[0]) if len(metrics) else {}


@dg.asset(partitions_def=iteration_partitions, metadata=ITERATION_EXPR, group_name=LOOP, io_manager_key=ARTIFACTS)
def best_prompt(
    context: dg.AssetExecutionContext,
    comparison_report: pd.DataFrame,
    baseline_prompt: pd.DataFrame,
    refined_prompt: pd.DataFrame,
    state_store: WarehouseStateStore,
) -> pd.DataFrame:
    """The best prompt so far; the loop state the next iteration inherits goes to the state store (before
    this materialization is recorded, so the sensor that watches it finds the state saved)."""
    name, generation, iteration = split_key(context)
    dataset = str(comparison_report.iloc[0]["dataset"])
    row = comparison_report.iloc[0]
    winner = prompt_from_frame(refined_prompt if row["accepted"] else baseline_prompt)
    stop_reason = None if pd.isna(row["stop_reason"]) else str(row["stop_reason"])
    loop = LoopState(
        best_score=float(row["best_score"]),
        iterations_without_improvement=int(row["iterations_without_improvement"]),
        spent=Spend.from_json(row["spent_json"]),
    )
    state_store.save_outcome(IterationKey(name, generation, iteration), Outcome(winner, loop, stop_reason))
    context.add_output_metadata(
        {
            "prompt": prompt_md(winner),
            "version": winner.version,
            "prompt_id": winner.id,
            "best_score": dg.MetadataValue.float(float(row["best_score"])),
            "stop_reason": stop_reason or "",
            "continue": dg.MetadataValue.bool(stop_reason is None),
        }
    )
    return prompt_frame(name, generation, iteration, dataset, winner, status="best", note=row["why"])


ITERATION_ASSETS = [
    iteration_setup,
    baseline_prompt,
    baseline_predictions,
    baseline_metrics,
    refined_prompt,
    refined_predictions,
    refined_metrics,
    comparison_report,
    best_prompt,
]
