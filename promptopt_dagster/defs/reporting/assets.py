"""After the loop: the optimization's best prompt and its initial prompt on the held-out test split, and the
dataset's leaderboard of every optimization's final report."""

import json
from urllib.parse import urlparse

import dagster as dg
import pandas as pd

from promptopt_dagster.app.datasets import sample_rows
from promptopt_dagster.app.leaderboard import as_text as board_text
from promptopt_dagster.app.leaderboard import from_report_rows as board_of
from promptopt_dagster.app.migration import migration_section, usage_by_role
from promptopt_dagster.app.plots import score_cost_plot
from promptopt_dagster.app.reports import (
    best_iteration,
    fmt_dollars,
    fmt_interval,
    fmt_score,
    frontier_markdown,
    frontier_rows,
    migration_markdown,
    score_plot,
    summary_markdown,
)
from promptopt_dagster.app.settings import get_settings
from promptopt_dagster.core.intervals import bootstrap_mean_interval
from promptopt_dagster.defs.evaluation import predict_rows, score_answers, settings_of, splits_of, suite_of
from promptopt_dagster.defs.metadata import optimization_metadata, prompt_md, rounded, spend_of, usage_metadata, used
from promptopt_dagster.defs.names import ARTIFACTS, LOOP
from promptopt_dagster.defs.partitions import (
    DATASET_EXPR,
    OPTIMIZATION_EXPR,
    dataset_of_optimization,
    dataset_partitions,
    iteration_key,
    optimization_partitions,
)
from promptopt_dagster.defs.resources import LLMResource, ProjectResource
from promptopt_dagster.defs.state_store import WarehouseStateStore
from promptopt_dagster.defs.webserver_client import asset_partition_url
from promptopt_dagster.llm import ledger, store_location
from promptopt_dagster.llm import usage as llm_usage
from promptopt_dagster.optimizers.pool import row_cost

REPORT_COLUMNS = {
    "optimization": "string",
    "generation": "int64",
    "dataset": "string",
    "initial_test_score": "float64",
    "best_test_score": "float64",
    "report_json": "string",
}


@dg.asset(
    partitions_def=optimization_partitions,
    metadata=OPTIMIZATION_EXPR,
    group_name=LOOP,
    deps=[dg.AssetKey("best_prompt")],  # the loop area's last asset, by key: areas do not import each other
    io_manager_key=ARTIFACTS,
)
def final_report(
    context: dg.AssetExecutionContext,
    optimization_settings: pd.DataFrame,
    optimization_rows: pd.DataFrame,
    migration_references: pd.DataFrame,
    project: ProjectResource,
    task_model: LLMResource,
    judge_model: LLMResource,
    state_store: WarehouseStateStore,
) -> pd.DataFrame:
    """The latest best prompt and the initial prompt scored on the held-out test split.

    The optimizer never sees test rows: they enter the loop only here, after it has stopped. In a model
    migration the test scores are agreement with the source model, and the report adds what both
    models cost.
    """
    name = context.partition_key
    current = optimization_settings[optimization_settings["current"].astype(bool)]
    if current.empty:
        raise dg.Failure(f"Optimization '{name}' was never started: materialize `optimization` for it first.")
    generation = int(current.iloc[0]["generation"])
    optimization = settings_of(optimization_settings, generation)
    dataset = optimization.dataset
    spec = project.spec(dataset)
    suite = suite_of(project, dataset, judge_model, optimization)
    history = state_store.history(name, generation)
    outcome = history["state"].outcome
    stored_best = outcome.best_prompt  # a retrieval pool by reference: the report names it, the answers need it
    best = state_store.with_pool(stored_best)
    initial = project.initial_prompt(dataset)
    test = sample_rows(splits_of(optimization_rows, dataset).test, optimization.test_size, optimization.seed)
    client = task_model.client_for(optimization.task_model)
    test_scores, test_summaries, test_usage, intervals, test_answers = {}, {}, {}, {}, {}
    for which, prompt in (("initial", initial), ("best", best)):
        answers = test_answers[which] = predict_rows(client, prompt, test, spec, f"test {which} {name}", split="test")
        result, judge_usage = score_answers(suite, judge_model, answers)
        test_scores[which], test_summaries[which] = result.value, result.summary()
        target = result.objective()
        interval = bootstrap_mean_interval(target.per_row, target.value, seed=optimization.seed)
        intervals[which] = [interval.low, interval.high] if interval else None
        test_usage = llm_usage.merge(test_usage, llm_usage.from_rows(answers.to_dict("records")), judge_usage)
    usage = llm_usage.merge(history["usage"], test_usage)
    migration, source_usage = None, {}
    if optimization.source_model is not None:
        source = task_model.client_for(optimization.source_model, role="source")
        references = migration_references.astype(object).where(migration_references.notna(), None)
        source_usage = llm_usage.from_rows(references.to_dict("records"))
        migration = migration_section(
            source,
            client,
            references,
            test_answers,
            test_scores,
            intervals,
            suite,
            spec.labels,
            usage_by_role(usage, source_usage, source.model_key, client.model_key),
        )
        usage = llm_usage.merge(usage, source_usage)
    totals = llm_usage.total(usage)
    paid = paid_spend(task_model.cache_path, name, generation)
    search = history["state"].search
    frontier = frontier_rows(search.pool if search else [], best.id, optimization.seed)
    test_cost = {which: row_cost(answers) for which, answers in test_answers.items()}
    report = {
        "optimization": name,
        "generation": generation,
        "fingerprint": str(current.iloc[0]["fingerprint"]),
        "dataset": dataset,
        "optimizer": optimization.optimizer,
        "task_model": client.model_key,
        "metric": suite.target,
        "iterations": int(history["step"]) + 1,
        "scorers": [s.model_dump() for s in suite.specs],
        "stop_reason": outcome.stop_reason,
        "eval_size": optimization.eval_size,
        "test_size": len(test),
        "initial_dev_score": history["initial_dev_score"],
        "best_dev_score": float(outcome.loop.best_score),
        "initial_test_score": test_scores["initial"],
        "best_test_score": test_scores["best"],
        # None where the target is not a mean of row scores (macro f1, corpus bleu/chrf)
        "test_intervals": {**intervals, "confidence": 0.95, "method": "percentile bootstrap of the mean row score"},
        "test_scores": test_summaries,
        "dev_scores": history["dev_scores"],
        "llm_calls": totals.llm_calls,
        "cache_hits": totals.cache_hits,
        "requests": totals.requests,
        "usage": {
            "total": totals.to_dict(),
            "by_model": {m: u.to_dict() for m, u in sorted(used(usage).items())},
            "final_report": llm_usage.total(test_usage).to_dict(),
            **({"migration_references": llm_usage.total(source_usage).to_dict()} if migration else {}),
        },
        # What this generation paid, from the usage ledger: every run's calls, canceled and killed ones included;
        # a rerun answered from the cache adds nothing here (above, "usage" counts its answers as cache hits).
        **({"paid": paid} if paid is not None else {}),
        # stored form: a retrieval pool is a reference (the exported prompt, `promptopt optimize`'s
        # best_prompts/<name>.json and a promotion, carries the pool itself)
        "best_prompt": json.loads(stored_best.to_json()),
        # what each prompt costs a row, measured on the test rows; and the search's score-versus-cost frontier
        "cost_per_row": {
            which: {"prompt_tokens": cost.prompt_tokens, "seconds": cost.seconds} if cost else None
            for which, cost in test_cost.items()
        },
        "objective": optimization.objective.describe() if optimization.objective.stated else None,
        "frontier": frontier,
        **({"migration": migration} if migration else {}),
    }
    context.log.info(
        f"{dataset}: test {suite.target} initial {test_scores['initial']:.4f} -> best {test_scores['best']:.4f}"
    )
    context.add_output_metadata(
        {  # the story first: the UI lists metadata in this order
            "summary": dg.MetadataValue.md(
                summary_markdown(report, history["iterations"], summary_links(report, history["iterations"]))
            ),
            "score_per_iteration": dg.MetadataValue.md(score_plot(report, history["iterations"])),
            "report": dg.MetadataValue.json(report),
            "initial_test_score": rounded(test_scores["initial"]),
            "best_test_score": rounded(test_scores["best"]),
            **{
                f"{which}_test_{end}": rounded(bounds[i])
                for which, bounds in intervals.items()
                if bounds
                for i, end in enumerate(("low_95", "high_95"))
            },
            "best_prompt": prompt_md(best),
            "quality_vs_cost": dg.MetadataValue.md(frontier_markdown(frontier)),
            **(migration_metadata(migration) if migration else {}),
            **usage_metadata(test_usage),
            **(
                {
                    f"paid_{k}": (dg.MetadataValue.float(v) if k == "cost_usd" else dg.MetadataValue.int(v))
                    for k, v in paid["total"].items()
                    if k != "cache_hits"
                }
                if paid is not None
                else {}
            ),
            **optimization_metadata(outcome.loop.spent + spend_of(test_usage) + spend_of(source_usage)),
        }
    )
    row = pd.DataFrame(
        [
            {
                "optimization": name,
                "generation": generation,
                "dataset": dataset,
                "initial_test_score": test_scores["initial"],
                "best_test_score": test_scores["best"],
                "report_json": json.dumps(report),
            }
        ],
        columns=list(REPORT_COLUMNS),
    ).astype(REPORT_COLUMNS)
    older = state_store.other_generation_reports(name, generation)
    return (
        pd.concat([older[list(REPORT_COLUMNS)].astype(REPORT_COLUMNS), row], ignore_index=True) if len(older) else row
    )


def paid_spend(cache_path: str | None, name: str, generation: int) -> dict | None:
    """What the generation paid, from the usage ledger (None without a response cache, which holds it).

    Calls made before the generation was known (its migration references) or in this report are claimed
    for it first."""
    if not store_location.exists(cache_path):
        return None
    location = store_location.resolve(cache_path)
    ledger.claim(location, name, generation)
    by_model = ledger.spend_by_model(location, name, generation)
    return {
        "total": llm_usage.total(by_model).to_dict(),
        "by_model": {m: u.to_dict() for m, u in sorted(by_model.items())},
        "by_role": {r: u.to_dict() for r, u in sorted(ledger.spend_by_role(location, name, generation).items())},
    }


@dg.asset(
    partitions_def=dataset_partitions,
    metadata=DATASET_EXPR,
    group_name=LOOP,
    io_manager_key=ARTIFACTS,
    ins={
        "final_report": dg.AssetIn(partition_mapping=dataset_of_optimization),
        "optimization_settings": dg.AssetIn(partition_mapping=dataset_of_optimization),
    },
)
def leaderboard(
    context: dg.AssetExecutionContext, final_report: pd.DataFrame, optimization_settings: pd.DataFrame
) -> pd.DataFrame:
    """Every optimization of the dataset, ranked by its best prompt's held-out test score, with cost.

    One row per optimization and generation that has a final report; an optimization's older
    generations stay on the board, marked not current. `promptopt leaderboard DATASET` prints it."""
    dataset = context.partition_key
    current = (
        {}
        if optimization_settings.empty
        else {
            row["optimization"]: int(row["generation"])
            for row in optimization_settings[optimization_settings["current"].astype(bool)].to_dict("records")
        }
    )
    board = board_of(dataset, final_report, current)
    metadata = {"optimizations": dg.MetadataValue.int(int(board["optimization"].nunique())), **board_metadata(board)}
    if not board.empty:
        top = board.iloc[0]
        metadata.update(
            {
                "leader": f"{top['optimization']} (generation {top['generation']})",
                "leader_test_score": rounded(float(top["best_test_score"])),
                "score_vs_cost": dg.MetadataValue.md(score_cost_plot(board)),
            }
        )
    context.add_output_metadata(metadata)
    return board


def summary_links(report: dict, iterations: list[dict]) -> dict[str, str]:
    """The summary's links to the pages of the UI that belong to this optimization: each goes to the
    partition's own page (webserver_client.asset_partition_url), since the asset's overview shows the
    newest materialization of any partition. Paths without a host, so they work wherever the UI is served
    (under the path prefix of PROMPTOPT_DAGSTER_URL, if it has one)."""
    base = urlparse(get_settings().dagster_url).path.rstrip("/")
    name, generation = report["optimization"], int(report["generation"])
    links = {"this final report": asset_partition_url("final_report", name, base)}
    found = best_iteration(iterations)
    if found is not None:
        links[f"iteration {found}, where the best prompt was accepted"] = asset_partition_url(
            "comparison_report", str(iteration_key(name, generation, found)), base
        )
    last = max((int(it["step"]) for it in iterations), default=None)
    if last is not None:
        links["the best prompt"] = asset_partition_url("best_prompt", str(iteration_key(name, generation, last)), base)
    links[f"the leaderboard of {report['dataset']}"] = asset_partition_url("leaderboard", report["dataset"], base)
    return links


def migration_metadata(migration: dict) -> dict:
    """The migration's numbers as metadata the UI plots, and its table."""
    agreement, intervals = migration["agreement"], migration["agreement"]["intervals"]
    out = {
        "migration": dg.MetadataValue.md(migration_markdown(migration)),
        "source_model": migration["source_model"],
        "agreement_before": rounded(agreement["before"]),
        "agreement_after": rounded(agreement["after"]),
        "source_cost_usd": dg.MetadataValue.float(migration["cost"]["source"]["cost_usd"]),
    }
    for which, key in (("initial", "before"), ("best", "after")):
        if intervals.get(which):
            out[f"agreement_{key}_low_95"] = rounded(intervals[which][0])
            out[f"agreement_{key}_high_95"] = rounded(intervals[which][1])
    return out


#: the leaderboard table the UI shows: what ranks and tells the rows apart, narrow enough for the asset page's
#: metadata column (about 330 pixels in the overview and 650 in the Partitions tab on a 1400-pixel screen; a
#: wider table is cut off at its right edge with no visible scrollbar: all 16 columns were cut after
#: test_low_95). Every column of every row is in `leaderboard_json`.
BOARD_TABLE = [
    ("#", "int", "rank among the rows scored against the same references"),
    ("optimization", "string", "name and generation; * marks the optimization's current generation"),
    (
        "test",
        "string",
        "the best prompt's score on the held-out test rows, with its 95% bootstrap "
        "interval (none for macro f1 and the like)",
    ),
    ("cost", "string", "what the optimization cost (USD) and the model calls it made"),
]


def board_metadata(board: pd.DataFrame) -> dict:
    """The leaderboard as the UI shows it: `leaderboard`, a narrow table of the columns that rank and tell
    apart (a migration's rows add what they are scored against), and `leaderboard_json`, every column
    of every row, numbers rounded for reading."""
    if board.empty:
        return {"leaderboard": dg.MetadataValue.md(board_text(board))}
    columns = list(BOARD_TABLE)
    migrations = bool((board["references"] != "labels").any()) if "references" in board else False
    if migrations:
        columns.append(("scored against", "string", "the dataset's labels, or a migration's source model"))
    records = []
    for row in board.to_dict("records"):
        interval = fmt_interval((row["test_low_95"], row["test_high_95"]))
        cells = {
            "#": int(row["rank"]),
            "optimization": f"{row['optimization']} g{int(row['generation'])}{'*' if row['current'] else ''}",
            "test": fmt_score(row["best_test_score"]) + (f" {interval}" if interval else ""),
            "cost": f"{fmt_dollars(row['cost_usd'])}, {int(row['llm_calls']):,} calls",
        }
        if migrations:
            cells["scored against"] = str(row["references"])
        records.append(dg.TableRecord(cells))
    every = [{k: _readable(v) for k, v in row.items()} for row in board.to_dict("records")]
    return {
        "leaderboard": dg.MetadataValue.table(
            records=records, schema=dg.TableSchema(columns=[dg.TableColumn(n, t, d) for n, t, d in columns])
        ),
        "leaderboard_json": dg.MetadataValue.json(every),
    }


def _readable(value):
    """A JSON value of the board: NaN as null, numpy scalars as Python, floats without binary noise."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return None if value != value else round(value, 6)
    return value
