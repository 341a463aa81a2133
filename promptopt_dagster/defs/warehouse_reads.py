"""The reads an iteration and the final report make of earlier partitions of their optimization.

Dagster maps no dynamic partition to its predecessor (and custom partition mappings are not
supported, dagster #16023), so iteration N reads iteration N-1's best_prompt and candidate_pool here,
and the final report reads the history of its generation. Every read is one short query.
"""

import json

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource

from promptopt_dagster.defs.partitions import iteration_name
from promptopt_dagster.llm import usage as llm_usage
from promptopt_dagster.optimizers.pool import Candidate


def _fetch(con, sql: str, params: list) -> pd.DataFrame:
    """Rows of a query on the warehouse; empty when the table does not exist yet (nothing finished)."""
    import duckdb

    try:
        return con.execute(sql, params).fetchdf()
    except duckdb.CatalogException:
        return pd.DataFrame()


def previous_best(warehouse: DuckDBResource, optimization: str, generation: int, iteration: int) -> dict:
    key = iteration_name(generation, iteration)
    with warehouse.get_connection() as con:
        found = _fetch(
            con, "select * from promptopt.best_prompt where optimization = ? and iteration = ?", [optimization, key]
        )
    if found.empty:
        raise dg.Failure(
            f"Iteration {key} of optimization '{optimization}' has no best_prompt yet, so the next "
            f"iteration has nothing to start from. Materialize partition {optimization}|{key} first "
            "(the iteration sensor and `promptopt optimize` run them in order)."
        )
    record = found.iloc[0].to_dict()
    record["best_score"] = None if pd.isna(record["best_score"]) else float(record["best_score"])
    record["stop_reason"] = None if pd.isna(record["stop_reason"]) else record["stop_reason"]
    return record


def previous_pool(
    warehouse: DuckDBResource, optimization: str, generation: int, iteration: int, demo_pool
) -> list[Candidate]:
    """The pool as the previous iteration left it (empty at iteration 0), retrieval pools re-attached."""
    if iteration == 0:
        return []
    with warehouse.get_connection() as con:
        rows = _fetch(
            con,
            "select * from promptopt.candidate_pool where optimization = ? and iteration = ? order by position",
            [optimization, iteration_name(generation, iteration - 1)],
        )
    return [Candidate.from_record(r, demo_pool) for r in rows.to_dict("records")]


def _best_dev_scores(con, optimization: str, generation: int, last: int) -> dict[str, float]:
    """Per-scorer dev scores of the best prompt: those of the last accepted refinement, else of step 0."""
    accepted = con.execute(
        "select scores_json from promptopt.comparison_report where optimization = ? and "
        "generation = ? and step <= ? and accepted order by step desc limit 1",
        [optimization, generation, last],
    ).fetchone()
    if accepted:
        return json.loads(accepted[0])["refined"]
    return json.loads(
        con.execute(
            "select scores_json from promptopt.comparison_report where optimization = ? and "
            "generation = ? and step = 0",
            [optimization, generation],
        ).fetchone()[0]
    )["baseline"]


def optimization_history(warehouse: DuckDBResource, optimization: str, generation: int) -> dict:
    """The latest finished iteration of a generation, the totals of the iterations leading to it, and each
    iteration's scores and decision (`iterations`, for the summary)."""
    with warehouse.get_connection() as con:
        best = _fetch(
            con,
            "select * from promptopt.best_prompt where optimization = ? and generation = ? order by step desc limit 1",
            [optimization, generation],
        )
        if best.empty:
            raise dg.Failure(
                f"Generation {generation} of optimization '{optimization}' has no finished iteration, "
                f"so there is no best prompt to report. Run `promptopt optimize` for it, or "
                f"materialize partition {optimization}|{iteration_name(generation, 0)} first."
            )
        row = best.iloc[0].to_dict()
        last = int(row["step"])
        first = con.execute(
            "select baseline_score, scores_json from promptopt.comparison_report"
            " where optimization = ? and generation = ? and step = 0",
            [optimization, generation],
        ).fetchone()
        row["initial_dev_score"] = first[0]
        row["dev_scores"] = {
            "initial": json.loads(first[1])["baseline"],
            "best": _best_dev_scores(con, optimization, generation, last),
        }
        per_iteration = con.execute(
            "select usage_json from promptopt.comparison_report"
            " where optimization = ? and generation = ? and step <= ?",
            [optimization, generation, last],
        ).fetchall()
        steps = con.execute(
            "select step, baseline_score, refined_score, accepted, best_score, why "
            "from promptopt.comparison_report where optimization = ? and generation = ? and step <= ? "
            "order by step",
            [optimization, generation, last],
        ).fetchdf()
    row["iterations"] = [
        {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
        for r in steps.astype(object).to_dict("records")
    ]
    row["usage"] = llm_usage.merge(*(llm_usage.from_json(u) for (u,) in per_iteration))
    row["stop_reason"] = None if pd.isna(row["stop_reason"]) else row["stop_reason"]
    return row


def other_generation_reports(warehouse: DuckDBResource, optimization: str, generation: int) -> pd.DataFrame:
    """The final_report rows of the optimization's other generations, which its new report must keep:
    the IO manager replaces the optimization's whole partition, and an old generation stays readable."""
    with warehouse.get_connection() as con:
        return _fetch(
            con,
            "select * from promptopt.final_report where optimization = ? and generation <> ? order by generation",
            [optimization, generation],
        )


def promotion_events(warehouse: DuckDBResource, dataset: str) -> pd.DataFrame:
    """The dataset's promotion audit so far, which the next request appends to (the IO manager replaces
    the dataset's whole partition) and which says what is served now."""
    with warehouse.get_connection() as con:
        return _fetch(con, "select * from promptopt.promotion_audit where dataset = ? order by event_id", [dataset])
