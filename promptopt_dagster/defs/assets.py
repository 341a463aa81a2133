"""The optimization loop as software-defined assets, one partition per (dataset, iteration).

Per iteration: baseline_prompt -> baseline_predictions -> baseline_metrics -> refined_prompt ->
refined_predictions -> refined_metrics -> comparison_report -> best_prompt. Iteration N starts from
best_prompt of iteration N-1, read explicitly in `baseline_prompt` (Dagster cannot map a dynamic
partition to its predecessor). The work itself is done by the domain packages; these functions
only load, call and describe.
"""


import dataclasses
import json

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource

from promptopt_dagster.core.datasets import DatasetSpec, DatasetSplits, dev_parts, sample_rows, spare_rows
from promptopt_dagster.core.decisions import LoopState, Spend, decide
from promptopt_dagster.core.intervals import bootstrap_mean_interval, paired_bootstrap_gain
from promptopt_dagster.core.prompts import PromptVersion
from promptopt_dagster.core.quality import (GateResult, dataset_gate, drop_held_out, leakage_gate,
                                            metric_range_gate, predictions_gate, prompt_gate)
from promptopt_dagster.core.reports import comparison_markdown, worst_rows_markdown
from promptopt_dagster.defs.partitions import (DATASET_EXPR, ITERATION_EXPR, dataset_partitions,
                                               iteration_partitions, split_key)
from promptopt_dagster.defs.resources import LLMResource, OptimizationConfig, ProjectResource
from promptopt_dagster.defs.tables import prompt_frame, prompt_from_frame, with_partition
from promptopt_dagster.llm import usage as llm_usage
from promptopt_dagster.llm.base import LLMClient
from promptopt_dagster.llm.inference import predict
from promptopt_dagster.llm.usage import UsageByModel, UsageStats
from promptopt_dagster.optimizers import OptimizerInput, get_optimizer
from promptopt_dagster.optimizers.pool import Candidate, best, pareto_frontier, pool_frame
from promptopt_dagster.scoring.suite import ScoringSuite, objective_value, summary_from_frame, wide_scores
from promptopt_dagster.settings import get_settings

LOOP = "prompt_optimization"


def _gate(check: str, result: GateResult, asset: str,
          severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(check_name=check, asset_key=asset, passed=result.passed, severity=severity,
                               description=result.message, metadata={k: v for k, v in result.details.items()})


def _prompt_md(prompt: PromptVersion) -> dg.MetadataValue:
    demos = "\n".join(f"- `{d.user_input[:100]}` → **{d.ground_truth_output}**" for d in prompt.demos) or "(none)"
    return dg.MetadataValue.md(f"**v{prompt.version}** `{prompt.id}` (parent `{prompt.parent_id}`)\n\n"
                               f"**System prompt**\n```\n{prompt.system_prompt}\n```\n"
                               f"**Output prompt**\n```\n{prompt.output_prompt}\n```\n**Demos** ({prompt.describe()})\n"
                               f"{demos}")


def _usage(clients: list[LLMClient], before: list[UsageStats]) -> UsageByModel:
    """What each client used since the snapshot, keyed by model (two roles on one model add up)."""
    return llm_usage.merge(*({c.model_key: c.usage.since(b)} for c, b in zip(clients, before)))


def _snapshot(clients: list[LLMClient]) -> list[UsageStats]:
    return [dataclasses.replace(c.usage) for c in clients]


def _usage_metadata(by_model: UsageByModel) -> dict:
    """This materialization's model use: numbers (plottable across partitions in the UI) plus the split by model.

    A rerun served from the response cache shows 0 calls here and every row under cache_hits."""
    totals = llm_usage.total(by_model).to_dict()
    out: dict = {k: dg.MetadataValue.int(v) for k, v in totals.items() if k != "cost_usd"}
    out["cost_usd"] = dg.MetadataValue.float(totals["cost_usd"])
    out["usage_by_model"] = dg.MetadataValue.json({m: u.to_dict() for m, u in sorted(by_model.items())})
    return out


def _optimization_metadata(spent: Spend) -> dict:
    """The whole optimization so far (every iteration as last materialized), beside this run's numbers."""
    return {"optimization_llm_calls": dg.MetadataValue.int(spent.llm_calls),
            "optimization_cache_hits": dg.MetadataValue.int(spent.cache_hits),
            "optimization_answers": dg.MetadataValue.int(spent.llm_calls + spent.cache_hits),
            "optimization_requests": dg.MetadataValue.int(spent.requests),
            "optimization_metric_calls": dg.MetadataValue.int(spent.metric_calls),
            "optimization_tokens": dg.MetadataValue.int(spent.tokens),
            "optimization_cost_usd": dg.MetadataValue.float(round(spent.cost_usd, 6))}


def _spend(by_model: UsageByModel) -> Spend:
    t = llm_usage.total(by_model)
    return Spend(requests=t.requests, tokens=t.tokens, cost_usd=t.cost_usd, llm_calls=t.llm_calls,
                 cache_hits=t.cache_hits)


def _predict(client: LLMClient, prompt: PromptVersion, rows: pd.DataFrame, spec: DatasetSpec, label: str,
             split: str = "dev"):
    return predict(client, prompt, rows, spec.max_output_tokens, label=label,
                   progress_interval_s=get_settings().progress_interval_s, stop=tuple(spec.completion_stop),
                   where=spec.files[split])


def _splits(dataset_splits: pd.DataFrame, dataset: str) -> DatasetSplits:
    """The dataset's rows as stored by dataset_splits; an iteration cannot start without them."""
    if dataset_splits.empty:
        raise dg.Failure(f"Dataset '{dataset}' has no rows in the warehouse: its splits were never loaded "
                         f"(or failed to load). Materialize dataset_splits for '{dataset}' first: launch the "
                         f"prepare_dataset job for partition '{dataset}' (a backfill of prepare_dataset over "
                         "several datasets works too), then this iteration again. `promptopt optimize` does both.")
    return DatasetSplits.from_frame(dataset, dataset_splits)


def _dev_parts(dataset_splits: pd.DataFrame, dataset: str,
               optimization: OptimizationConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(select, confirm) rows of the dev split: the optimizer never sees the confirm rows."""
    return dev_parts(_splits(dataset_splits, dataset).dev, optimization.eval_size, optimization.select_size,
                     optimization.seed)


def _eval_rows(dataset_splits: pd.DataFrame, dataset: str, optimization: OptimizationConfig) -> pd.DataFrame:
    """The confirm rows, on which baseline and refined prompt are compared."""
    rows = _dev_parts(dataset_splits, dataset, optimization)[1]
    if rows.empty:
        raise dg.Failure(f"Dataset '{dataset}' has no dev rows to evaluate prompts on. Add rows to its dev file "
                         "and materialize dataset_splits again.")
    return rows


# --- dataset ----------------------------------------------------------------------------------

@dg.asset(
    partitions_def=dataset_partitions, metadata=DATASET_EXPR, group_name="datasets",
    check_specs=[dg.AssetCheckSpec("splits_valid_and_disjoint", asset="dataset_splits", blocking=True,
                                   description="Columns present, no split empty, no input in two splits.")],
)
def dataset_splits(context: dg.AssetExecutionContext, project: ProjectResource):
    """train / dev / test rows of one dataset, validated on load (bad files fail before any LLM call)."""
    spec = project.spec(context.partition_key)
    suite = project.suite(context.partition_key)  # an unknown scorer or option fails here, before any model call
    frame = project.splits(context.partition_key).to_frame()
    counts = frame["split"].value_counts().to_dict()
    yield dg.Output(frame, metadata={**{f"rows_{s}": dg.MetadataValue.int(int(n)) for s, n in counts.items()},
                                     "labels": ", ".join(spec.labels), "target_metric": suite.target,
                                     "scorers": suite.describe()})
    yield _gate("splits_valid_and_disjoint", dataset_gate(frame), "dataset_splits")


# --- one iteration ------------------------------------------------------------------------------

@dg.asset(partitions_def=iteration_partitions, metadata=ITERATION_EXPR, group_name=LOOP)
def baseline_prompt(context: dg.AssetExecutionContext, project: ProjectResource,
                    warehouse: DuckDBResource) -> pd.DataFrame:
    """The prompt this iteration tries to beat: the initial prompt, then the previous best_prompt."""
    dataset, iteration = split_key(context)
    if iteration == 0:
        prompt, state = project.initial_prompt(dataset), LoopState()
    else:
        row = _previous_best(warehouse, dataset, iteration - 1)
        prompt = PromptVersion.model_validate_json(row["prompt_json"])
        state = LoopState(best_score=row["best_score"],
                          iterations_without_improvement=int(row["iterations_without_improvement"]),
                          spent=Spend.from_json(row["spent_json"]))
        if row["stop_reason"]:
            context.log.warning(f"iteration {iteration - 1} decided to stop ({row['stop_reason']}); "
                                "running this iteration anyway because it was requested")
    context.add_output_metadata({"prompt": _prompt_md(prompt), "version": prompt.version, "prompt_id": prompt.id})
    return prompt_frame(dataset, iteration, prompt, status="baseline", best_score=state.best_score,
                        iterations_without_improvement=state.iterations_without_improvement, spent=state.spent)


def _fetch(con, sql: str, params: list) -> pd.DataFrame:
    """Rows of a query on the warehouse; empty when the table does not exist yet (nothing finished)."""
    import duckdb

    try:
        return con.execute(sql, params).fetchdf()
    except duckdb.CatalogException:
        return pd.DataFrame()


def _previous_best(warehouse: DuckDBResource, dataset: str, iteration: int) -> dict:
    with warehouse.get_connection() as con:
        found = _fetch(con, "select * from promptopt.best_prompt where dataset = ? and iteration = ?",
                       [dataset, iteration])
    if found.empty:
        raise dg.Failure(f"Iteration {iteration} of dataset '{dataset}' has no best_prompt yet, so iteration "
                         f"{iteration + 1} has nothing to start from. Materialize partition "
                         f"{dataset}|{iteration} first (the iteration sensor and `promptopt optimize` run them in order).")
    record = found.iloc[0].to_dict()
    record["best_score"] = None if pd.isna(record["best_score"]) else float(record["best_score"])
    record["stop_reason"] = None if pd.isna(record["stop_reason"]) else record["stop_reason"]
    return record


def _predictions(context: dg.AssetExecutionContext, asset: str, dataset_splits: pd.DataFrame,
                 prompt_table: pd.DataFrame, project: ProjectResource, task_model: LLMResource,
                 optimization: OptimizationConfig):
    dataset, iteration = split_key(context)
    spec, prompt = project.spec(dataset), prompt_from_frame(prompt_table)
    rows = _eval_rows(dataset_splits, dataset, optimization)
    preds = _predict(task_model.get_client(), prompt, rows, spec, f"{asset} {dataset}|{iteration}")
    usage = llm_usage.from_rows(preds.to_dict("records"))
    frame = with_partition(preds, dataset, iteration)
    frame.insert(2, "prompt_id", prompt.id)
    t = llm_usage.total(usage)
    context.log.info(f"{asset}: {len(frame)} rows, {t.llm_calls} answered by the model in {t.requests} requests, "
                     f"{t.cache_hits} from cache, {t.errors} failed")
    yield dg.Output(frame, metadata={"rows": len(frame), "prompt_id": prompt.id, **_usage_metadata(usage)})
    yield _gate("all_rows_answered", predictions_gate(frame, rows["row_id"], optimization.max_failed_fraction), asset)


def _completeness(asset: str) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec("all_rows_answered", asset=asset, blocking=True,
                              description="Every evaluation row has exactly one answer and failures stay under "
                                          "max_failed_fraction.")]


@dg.asset(partitions_def=iteration_partitions, metadata=ITERATION_EXPR, group_name=LOOP,
          check_specs=_completeness("baseline_predictions"))
def baseline_predictions(context: dg.AssetExecutionContext, dataset_splits: pd.DataFrame, baseline_prompt: pd.DataFrame,
                         project: ProjectResource, task_model: LLMResource, optimization: OptimizationConfig):
    """The task model's answers to the dev evaluation rows with the baseline prompt."""
    yield from _predictions(context, "baseline_predictions", dataset_splits, baseline_prompt, project, task_model,
                            optimization)


def _suite(project: ProjectResource, dataset: str, judge_model: LLMResource,
           optimization: OptimizationConfig) -> ScoringSuite:
    return project.suite(dataset, judge_model, optimization.target_metric)


def _score_answers(suite: ScoringSuite, judge_model: LLMResource, answers: pd.DataFrame):
    """Every scorer on a predictions table, plus what the judge model used doing it."""
    judge = [judge_model.get_client()] if suite.uses_judge else []
    before = _snapshot(judge)
    result = suite.score(answers["prediction"].tolist(), answers["ground_truth_output"].tolist(),
                         inputs=answers["user_input"].tolist())
    return result, _usage(judge, before)


def _metrics(context: dg.AssetExecutionContext, asset: str, predictions: pd.DataFrame, project: ProjectResource,
             judge_model: LLMResource, optimization: OptimizationConfig):
    dataset, iteration = split_key(context)
    suite = _suite(project, dataset, judge_model, optimization)
    result, usage = _score_answers(suite, judge_model, predictions)
    frame = with_partition(result.to_frame(predictions["row_id"].tolist()), dataset, iteration)
    frame["usage_json"] = llm_usage.to_json(usage)  # judge calls count toward the budget (comparison_report)
    summary = result.summary()
    context.log.info(f"{asset}: {suite.target} = {result.value:.4f} on {len(predictions)} rows ("
                     + ", ".join(f"{k} {v:.4f}" for k, v in summary.items()) + ")")
    details = {f"{name}.{k}": dg.MetadataValue.float(float(v)) for name, r in result.results.items()
               for k, v in r.details.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    scored = predictions.merge(wide_scores(frame), on="row_id")
    yield dg.Output(frame, metadata={
        "score": dg.MetadataValue.float(result.value),
        "target_metric": suite.target,
        **{name: dg.MetadataValue.float(v) for name, v in summary.items()},
        **details,
        "worst_rows": dg.MetadataValue.md(worst_rows_markdown(scored, [*result.results])),
        **(_usage_metadata(usage) if usage else {}),
    })
    yield _gate("scores_in_range", metric_range_gate(frame["score"]), asset, dg.AssetCheckSeverity.WARN)


def _in_range(asset: str) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec("scores_in_range", asset=asset, description="Every per-row score is in [0, 1].")]


@dg.asset(partitions_def=iteration_partitions, metadata=ITERATION_EXPR, group_name=LOOP,
          check_specs=_in_range("baseline_metrics"))
def baseline_metrics(context: dg.AssetExecutionContext, baseline_predictions: pd.DataFrame, project: ProjectResource,
                     judge_model: LLMResource, optimization: OptimizationConfig):
    """Per-row and aggregate scores of the baseline answers, per scorer and weighted (the iteration's baseline)."""
    yield from _metrics(context, "baseline_metrics", baseline_predictions, project, judge_model, optimization)


@dg.multi_asset(
    partitions_def=iteration_partitions, group_name=LOOP, can_subset=False,
    deps=["baseline_metrics"],  # so a failed blocking check on the baseline's answers stops the search too
    outs={"refined_prompt": dg.AssetOut(metadata=ITERATION_EXPR, description="The optimizer's proposal; when it has "
                                        "nothing usable, the baseline is kept and the reason recorded."),
          "candidate_pool": dg.AssetOut(metadata=ITERATION_EXPR, description="Every candidate of this optimization "
                                        "so far, with its per-row scores on the select rows, its parent and whether "
                                        "it passed the minibatch gate.")},
    check_specs=[dg.AssetCheckSpec("prompt_is_usable", asset="refined_prompt", blocking=True,
                                   description="Not empty, output_prompt keeps exactly one {user_input}, "
                                               "system_prompt has no {placeholders}."),
                 dg.AssetCheckSpec("no_held_out_rows", asset="refined_prompt", blocking=True,
                                   description="No demo or demo-pool row is a dev or test row, and the instructions "
                                               "copy no long span of one: those scores would be inflated.")],
)
def refined_prompt(context: dg.AssetExecutionContext, dataset_splits: pd.DataFrame, baseline_prompt: pd.DataFrame,
                   project: ProjectResource, task_model: LLMResource, optimizer_model: LLMResource,
                   judge_model: LLMResource, optimization: OptimizationConfig, warehouse: DuckDBResource):
    """The optimizer's proposal, chosen on the select rows; the confirm rows never reach the optimizer.

    The optimizer sees the baseline's per-row scores on the select rows and, from an LLM judge, why
    each row scored low; the candidate pool carries every earlier candidate into this iteration."""
    dataset, iteration = split_key(context)
    spec, prompt = project.spec(dataset), prompt_from_frame(baseline_prompt)
    suite = _suite(project, dataset, judge_model, optimization)
    splits = _splits(dataset_splits, dataset)
    select, confirm = _dev_parts(dataset_splits, dataset, optimization)
    held_out = {"dev": splits.dev, "test": splits.test}
    train = drop_held_out(splits.train, held_out)
    clients = [task_model.get_client(), optimizer_model.get_client()]
    clients += [judge_model.get_client()] if suite.uses_judge else []
    task, opt = clients[0], clients[1]
    before = _snapshot(clients)
    scored_rows = [0]

    def answer_and_score(candidate: PromptVersion, rows: pd.DataFrame):
        answers = _predict(task, candidate, rows, spec, f"candidate {dataset}|{iteration}")
        scored_rows[0] += len(rows)
        return answers, suite.score(answers["prediction"].tolist(), answers["ground_truth_output"].tolist(),
                                    inputs=answers["user_input"].tolist()).objective()

    def evaluate(candidate: PromptVersion, rows: pd.DataFrame):
        return answer_and_score(candidate, rows)[1]

    optimizer = get_optimizer(optimization.optimizer, **optimization.optimizer_options())
    history = _previous_pool(warehouse, dataset, iteration, optimizer.demo_pool(train))
    answers, result = answer_and_score(prompt, select)
    scored = answers.assign(score=result.per_row, rationale=result.rationales or None)
    proposal = optimizer.propose(
        OptimizerInput(prompt=prompt, scored_rows=scored, baseline_score=result.value, metric=suite.describe(),
                       train=train, labels=spec.labels, label_descriptions=spec.label_descriptions,
                       iteration=iteration, seed=optimization.seed, select_rows=select, history=history,
                       spare_rows=spare_rows(splits.dev, select, confirm), calibration=task.ranks_labels),
        evaluate, opt)
    usage = _usage(clients, before)
    if proposal.prompt is None:  # the optimizer already logged why; the reason is also stored below
        refined, status = prompt, "rejected_by_optimizer"
    else:
        refined, status = proposal.prompt, "proposed"
    pool = history + proposal.pool
    frontier = pareto_frontier(pool)
    top = best(pool)
    context.log.info(f"refined_prompt {dataset}|{iteration}: {status} ({refined.describe()}); "
                     f"{len(proposal.pool)} new candidates, pool {len(pool)}, frontier {len(frontier)}; "
                     f"{scored_rows[0]} rows scored on {len(select)} select rows")
    metadata = {"status": status, "prompt": _prompt_md(refined), "version": refined.version,
                "choices": refined.describe(), "select_rows": len(select), "confirm_rows": len(confirm),
                "metric_calls": scored_rows[0],
                "candidates": dg.MetadataValue.json(proposal.candidates), **_usage_metadata(usage)}
    if proposal.rejected_reason:
        metadata["rejected_reason"] = proposal.rejected_reason
    if proposal.raw_output is not None:
        metadata["optimizer_output"] = dg.MetadataValue.md(f"```\n{proposal.raw_output[:4000]}\n```")
    yield dg.Output(prompt_frame(dataset, iteration, refined, status=status, note=proposal.rejected_reason,
                                 usage_json=llm_usage.to_json(usage), metric_calls=scored_rows[0]),
                    output_name="refined_prompt", metadata=metadata)
    yield _gate("prompt_is_usable", prompt_gate(refined), "refined_prompt")
    yield _gate("no_held_out_rows", leakage_gate(refined, {**held_out, "confirm": confirm}), "refined_prompt")
    yield dg.Output(with_partition(pool_frame(pool), dataset, iteration), output_name="candidate_pool", metadata={
        "candidates": len(pool), "new_candidates": len(proposal.pool), "frontier": len(frontier),
        "best_select_score": dg.MetadataValue.float(float("nan") if top is None else top.select_score),
        "table": dg.MetadataValue.md(_pool_md(pool, frontier))})


def _pool_md(pool: list[Candidate], frontier: dict[str, int]) -> str:
    lines = ["| candidate | parent | born | kind | choices | minibatch | select | rows won |", "|---|---|---|---|---|---|---|---|"]
    for c in sorted(pool, key=lambda c: (c.select_score is None, -(c.select_score or 0.0))):
        select = "-" if c.select_score is None else f"{c.select_score:.4f}"
        mini = "-" if c.minibatch_score is None else f"{c.minibatch_score:.3f}"
        lines.append(f"| `{c.id}` | `{c.prompt.parent_id}` | {c.born_iteration} | {c.kind} | {c.prompt.describe()} "
                     f"| {mini} | {select} | {frontier.get(c.id, 0)} |")
    return "\n".join(lines)


def _previous_pool(warehouse: DuckDBResource, dataset: str, iteration: int, demo_pool) -> list[Candidate]:
    """The pool as the previous iteration left it (empty at iteration 0), retrieval pools re-attached."""
    if iteration == 0:
        return []
    with warehouse.get_connection() as con:
        rows = _fetch(con, "select * from promptopt.candidate_pool where dataset = ? and iteration = ? order by position",
                      [dataset, iteration - 1])
    return [Candidate.from_record(r, demo_pool) for r in rows.to_dict("records")]


@dg.asset(partitions_def=iteration_partitions, metadata=ITERATION_EXPR, group_name=LOOP,
          check_specs=_completeness("refined_predictions"))
def refined_predictions(context: dg.AssetExecutionContext, dataset_splits: pd.DataFrame, refined_prompt: pd.DataFrame,
                        project: ProjectResource, task_model: LLMResource, optimization: OptimizationConfig):
    """The task model's answers to the same dev rows with the refined prompt."""
    yield from _predictions(context, "refined_predictions", dataset_splits, refined_prompt, project, task_model,
                            optimization)


@dg.asset(partitions_def=iteration_partitions, metadata=ITERATION_EXPR, group_name=LOOP,
          check_specs=_in_range("refined_metrics"))
def refined_metrics(context: dg.AssetExecutionContext, refined_predictions: pd.DataFrame, project: ProjectResource,
                    judge_model: LLMResource, optimization: OptimizationConfig):
    """Per-row and aggregate scores of the refined answers, per scorer and weighted."""
    yield from _metrics(context, "refined_metrics", refined_predictions, project, judge_model, optimization)


@dg.asset(partitions_def=iteration_partitions, metadata=ITERATION_EXPR, group_name=LOOP)
def comparison_report(context: dg.AssetExecutionContext, baseline_prompt: pd.DataFrame, refined_prompt: pd.DataFrame,
                      baseline_predictions: pd.DataFrame, refined_predictions: pd.DataFrame,
                      baseline_metrics: pd.DataFrame, refined_metrics: pd.DataFrame, project: ProjectResource,
                      judge_model: LLMResource, optimization: OptimizationConfig) -> pd.DataFrame:
    """Baseline versus refined on the same rows, the accept/reject decision and whether to go on.

    It also sums what the iteration's model calls used, so the budget is part of the same decision."""
    dataset, iteration = split_key(context)
    metric = _target_name(baseline_metrics)
    base_row, ref_row = baseline_prompt.iloc[0], refined_prompt.iloc[0]
    baseline, refined = prompt_from_frame(baseline_prompt), prompt_from_frame(refined_prompt)
    state = LoopState(best_score=None if pd.isna(base_row["best_score"]) else float(base_row["best_score"]),
                      iterations_without_improvement=int(base_row["iterations_without_improvement"]),
                      spent=Spend.from_json(base_row["spent_json"]))
    baseline_score = objective_value(baseline_metrics)
    rejected = ref_row["status"] == "rejected_by_optimizer"
    refined_score = None if rejected else objective_value(refined_metrics)
    scores = {"baseline": summary_from_frame(baseline_metrics),
              "refined": None if rejected else summary_from_frame(refined_metrics)}
    usage = llm_usage.merge(llm_usage.from_rows(baseline_predictions.to_dict("records")),
                            _judge_usage(baseline_metrics), llm_usage.from_json(ref_row["usage_json"]),
                            llm_usage.from_rows(refined_predictions.to_dict("records")), _judge_usage(refined_metrics))
    metric_calls = len(baseline_predictions) + (0 if rejected else len(refined_predictions))
    metric_calls += int(0 if pd.isna(ref_row["metric_calls"]) else ref_row["metric_calls"])
    gain = None if rejected else _paired_gain(project, dataset, judge_model, optimization, baseline_predictions,
                                              refined_predictions, baseline_metrics, refined_metrics)
    decision = decide(iteration, baseline_score, refined_score, state, optimization.stop_policy(),
                      dataclasses.replace(_spend(usage), metric_calls=metric_calls), gain)
    report_md = comparison_markdown(metric, decision, baseline, refined,
                                    None if pd.isna(ref_row["note"]) else ref_row["note"], scores)
    columns = list(scores["baseline"])
    context.log.info(f"{dataset}|{iteration}: {decision.why}; "
                     f"{'stop: ' + decision.stop_reason if decision.stop_reason else 'continue'}")
    context.add_output_metadata({
        "report": dg.MetadataValue.md(report_md),
        "scores": dg.MetadataValue.table(
            records=[dg.TableRecord({"prompt": name, "version": prompt.version,
                                     **{c: (values or {}).get(c, float("nan")) for c in columns}})
                     for name, prompt, values in (("baseline", baseline, scores["baseline"]),
                                                  ("refined", refined, scores["refined"]))],
            schema=dg.TableSchema(columns=[dg.TableColumn("prompt", "string"), dg.TableColumn("version", "int"),
                                           *(dg.TableColumn(c, "float") for c in columns)])),
        "target_metric": metric,
        "baseline_score": dg.MetadataValue.float(baseline_score),
        "refined_score": dg.MetadataValue.float(float("nan") if refined_score is None else refined_score),
        "best_score": dg.MetadataValue.float(decision.best_score),
        "accepted": dg.MetadataValue.bool(decision.accepted),
        **({"gain": dg.MetadataValue.float(gain.gain), "gain_low": dg.MetadataValue.float(gain.low),
            "gain_high": dg.MetadataValue.float(gain.high), "confidence": dg.MetadataValue.float(gain.confidence),
            "confirm_rows": gain.rows} if gain else {}),
        "stop_reason": decision.stop_reason or "",
        **_usage_metadata(usage),
        **_optimization_metadata(decision.spent),
    })
    return pd.DataFrame([{
        "dataset": dataset, "iteration": iteration, "metric": metric, "baseline_prompt_id": baseline.id,
        "refined_prompt_id": refined.id, "baseline_score": baseline_score,
        "refined_score": float("nan") if refined_score is None else refined_score, "accepted": decision.accepted,
        "best_score": decision.best_score, "iterations_without_improvement": decision.iterations_without_improvement,
        "stop_reason": decision.stop_reason, "why": decision.why, "report_md": report_md,
        "scores_json": json.dumps(scores), "usage_json": llm_usage.to_json(usage),
        "spent_json": decision.spent.to_json(),
        "gain_json": json.dumps(dataclasses.asdict(gain) if gain else None),
    }]).astype({"stop_reason": "string"})


def _paired_gain(project: ProjectResource, dataset: str, judge_model: LLMResource, optimization: OptimizationConfig,
                 base_answers: pd.DataFrame, ref_answers: pd.DataFrame, base_metrics: pd.DataFrame,
                 ref_metrics: pd.DataFrame):
    """The paired bootstrap of refined minus baseline on the confirm rows.

    A target that is the mean of its row scores is resampled as such; one that is not (macro F1,
    corpus BLEU) is recomputed by its scorer on each resample, which needs no model call."""
    base = wide_scores(base_metrics).set_index("row_id")["score"]
    ref = wide_scores(ref_metrics).set_index("row_id")["score"].reindex(base.index)
    statistic = None
    if any(abs(float(rows.mean()) - objective_value(m)) > 1e-9 for rows, m in ((base, base_metrics), (ref, ref_metrics))):
        suite = _suite(project, dataset, judge_model, optimization)
        if not suite.uses_judge:
            b = base_answers.set_index("row_id").reindex(base.index)
            r = ref_answers.set_index("row_id").reindex(base.index)
            refs, bp, rp = (b["ground_truth_output"].to_numpy(), b["prediction"].to_numpy(),
                            r["prediction"].to_numpy())

            def statistic(ix):
                return (suite.score(list(bp[ix]), list(refs[ix])).value, suite.score(list(rp[ix]), list(refs[ix])).value)
    return paired_bootstrap_gain(base.to_numpy(), ref.to_numpy(), optimization.confidence,
                                 resamples=2000 if statistic is None else 400, seed=optimization.seed,
                                 statistic=statistic)


def _target_name(metrics: pd.DataFrame) -> str:
    target = metrics[metrics["is_target"].astype(bool)]["scorer"]
    return str(target.iloc[0]) if len(target) else "score"


def _judge_usage(metrics: pd.DataFrame) -> UsageByModel:
    return llm_usage.from_json(metrics["usage_json"].iloc[0]) if len(metrics) else {}


@dg.asset(partitions_def=iteration_partitions, metadata=ITERATION_EXPR, group_name=LOOP)
def best_prompt(context: dg.AssetExecutionContext, comparison_report: pd.DataFrame, baseline_prompt: pd.DataFrame,
                refined_prompt: pd.DataFrame) -> pd.DataFrame:
    """The best prompt so far and the loop state the next iteration inherits; the sensor watches this."""
    dataset, iteration = split_key(context)
    row = comparison_report.iloc[0]
    winner = prompt_from_frame(refined_prompt if row["accepted"] else baseline_prompt)
    stop_reason = None if pd.isna(row["stop_reason"]) else str(row["stop_reason"])
    context.add_output_metadata({
        "prompt": _prompt_md(winner), "version": winner.version, "prompt_id": winner.id,
        "best_score": dg.MetadataValue.float(float(row["best_score"])),
        "stop_reason": stop_reason or "", "continue": dg.MetadataValue.bool(stop_reason is None),
    })
    return prompt_frame(dataset, iteration, winner, status="best", note=row["why"], best_score=float(row["best_score"]),
                        iterations_without_improvement=int(row["iterations_without_improvement"]),
                        stop_reason=stop_reason, spent=Spend.from_json(row["spent_json"]))


# --- after the loop ---------------------------------------------------------------------------------

@dg.asset(partitions_def=dataset_partitions, metadata=DATASET_EXPR, group_name=LOOP, deps=[best_prompt])
def final_report(context: dg.AssetExecutionContext, dataset_splits: pd.DataFrame, project: ProjectResource,
                 task_model: LLMResource, judge_model: LLMResource, optimization: OptimizationConfig,
                 warehouse: DuckDBResource) -> pd.DataFrame:
    """The latest best prompt and the initial prompt scored on the held-out test split.

    The optimizer never sees test rows: they enter the loop only here, after it has stopped.
    """
    dataset = context.partition_key
    spec = project.spec(dataset)
    suite = _suite(project, dataset, judge_model, optimization)
    history = _optimization_history(warehouse, dataset)
    best = PromptVersion.model_validate_json(history["prompt_json"])
    initial = project.initial_prompt(dataset)
    test = sample_rows(_splits(dataset_splits, dataset).test, optimization.test_size, optimization.seed)
    client = task_model.get_client()
    test_scores, test_summaries, test_usage, intervals = {}, {}, {}, {}
    for name, prompt in (("initial", initial), ("best", best)):
        answers = _predict(client, prompt, test, spec, f"test {name} {dataset}", split="test")
        result, judge_usage = _score_answers(suite, judge_model, answers)
        test_scores[name], test_summaries[name] = result.value, result.summary()
        target = result.objective()
        interval = bootstrap_mean_interval(target.per_row, target.value, seed=optimization.seed)
        intervals[name] = [interval.low, interval.high] if interval else None
        test_usage = llm_usage.merge(test_usage, llm_usage.from_rows(answers.to_dict("records")), judge_usage)
    usage = llm_usage.merge(history["usage"], test_usage)
    totals = llm_usage.total(usage)
    report = {
        "dataset": dataset, "metric": suite.target, "iterations": int(history["iteration"]) + 1,
        "scorers": [s.model_dump() for s in suite.specs],
        "stop_reason": history["stop_reason"], "eval_size": optimization.eval_size, "test_size": len(test),
        "initial_dev_score": history["initial_dev_score"], "best_dev_score": float(history["best_score"]),
        "initial_test_score": test_scores["initial"], "best_test_score": test_scores["best"],
        # None where the target is not a mean of row scores (macro f1, corpus bleu/chrf)
        "test_intervals": {**intervals, "confidence": 0.95, "method": "percentile bootstrap of the mean row score"},
        "test_scores": test_summaries, "dev_scores": history["dev_scores"],
        "llm_calls": totals.llm_calls, "cache_hits": totals.cache_hits, "requests": totals.requests,
        "usage": {"total": totals.to_dict(), "by_model": {m: u.to_dict() for m, u in sorted(usage.items())},
                  "final_report": llm_usage.total(test_usage).to_dict()},
        "best_prompt": json.loads(best.to_json()),
    }
    context.log.info(f"{dataset}: test {suite.target} initial {test_scores['initial']:.4f} -> "
                     f"best {test_scores['best']:.4f}")
    context.add_output_metadata({
        "report": dg.MetadataValue.json(report),
        "initial_test_score": dg.MetadataValue.float(test_scores["initial"]),
        "best_test_score": dg.MetadataValue.float(test_scores["best"]),
        **{f"{name}_test_{end}": dg.MetadataValue.float(bounds[i]) for name, bounds in intervals.items() if bounds
           for i, end in enumerate(("low_95", "high_95"))},
        "best_prompt": _prompt_md(best),
        **_usage_metadata(test_usage),
        **_optimization_metadata(Spend.from_json(history["spent_json"]) + _spend(test_usage)),
    })
    return pd.DataFrame([{"dataset": dataset, "initial_test_score": test_scores["initial"],
                          "best_test_score": test_scores["best"], "report_json": json.dumps(report)}])


def _best_dev_scores(con, dataset: str, last: int) -> dict[str, float]:
    """Per-scorer dev scores of the best prompt: those of the last accepted refinement, else of iteration 0."""
    accepted = con.execute("select scores_json from promptopt.comparison_report where dataset = ? and iteration <= ?"
                           " and accepted order by iteration desc limit 1", [dataset, last]).fetchone()
    if accepted:
        return json.loads(accepted[0])["refined"]
    return json.loads(con.execute("select scores_json from promptopt.comparison_report where dataset = ? and "
                                  "iteration = 0", [dataset]).fetchone()[0])["baseline"]


def _optimization_history(warehouse: DuckDBResource, dataset: str) -> dict:
    """The latest finished iteration of a dataset plus the totals of the iterations leading to it."""
    with warehouse.get_connection() as con:
        best = _fetch(con, "select * from promptopt.best_prompt where dataset = ? order by written_at desc limit 1",
                      [dataset])
        if best.empty:
            raise dg.Failure(f"Dataset '{dataset}' has no finished iteration, so there is no best prompt to report. "
                             f"Run `promptopt optimize --dataset {dataset}` or materialize partition {dataset}|0 first.")
        row = best.iloc[0].to_dict()
        last = int(row["iteration"])
        args = [dataset, last]
        first = con.execute("select baseline_score, scores_json from promptopt.comparison_report"
                            " where dataset = ? and iteration = 0", [dataset]).fetchone()
        row["initial_dev_score"] = first[0]
        row["dev_scores"] = {"initial": json.loads(first[1])["baseline"], "best": _best_dev_scores(con, dataset, last)}
        per_iteration = con.execute("select usage_json from promptopt.comparison_report"
                                    " where dataset = ? and iteration <= ?", args).fetchall()
    row["usage"] = llm_usage.merge(*(llm_usage.from_json(u) for (u,) in per_iteration))
    row["stop_reason"] = None if pd.isna(row["stop_reason"]) else row["stop_reason"]
    return row


ITERATION_ASSETS = [baseline_prompt, baseline_predictions, baseline_metrics, refined_prompt, refined_predictions,
                    refined_metrics, comparison_report, best_prompt]
