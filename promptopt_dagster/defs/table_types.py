"""dagster-pandas types of the tables the loop's quality rests on: dataset splits, predictions, metrics.

Each column is declared once here and gives two things: the dagster-pandas constraint checked on
every materialization (a missing column or a null where none may be fails the step, naming the
column, before the IO manager stores anything), and the column schema the UI shows on the asset.
The friendly loader errors (app/datasets.py) still come first for a bad CSV: these types catch
what code, not users, gets wrong.
"""

import re
import warnings
from dataclasses import dataclass

import dagster as dg
import pandas as pd
from dagster_pandas import PandasColumn, create_dagster_pandas_dataframe_type


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # string | text (nullable, any object) | int | float | bool | category
    description: str
    non_nullable: bool = False
    min_value: float | None = None
    max_value: float | None = None
    categories: tuple[str, ...] = ()

    def pandas(self) -> PandasColumn:
        bounds = {k: v for k, v in (("min_value", self.min_value), ("max_value", self.max_value)) if v is not None}
        if self.kind == "string":
            return PandasColumn.string_column(self.name, non_nullable=self.non_nullable)
        if self.kind == "int":
            return PandasColumn.integer_column(self.name, non_nullable=self.non_nullable, **bounds)
        if self.kind == "float":
            return PandasColumn.float_column(
                self.name, non_nullable=self.non_nullable, ignore_missing_vals=not self.non_nullable, **bounds
            )
        if self.kind == "bool":
            return PandasColumn.boolean_column(self.name, non_nullable=self.non_nullable)
        if self.kind == "category":
            return PandasColumn.categorical_column(
                self.name,
                set(self.categories),
                of_types=frozenset({"object", "string", "category"}),
                non_nullable=self.non_nullable,
            )
        return PandasColumn.exists(self.name, non_nullable=self.non_nullable)

    def table_column(self) -> dg.TableColumn:
        rules = [
            r
            for r in (
                "not null" if self.non_nullable else "",
                f">= {self.min_value:g}" if self.min_value is not None else "",
                f"<= {self.max_value:g}" if self.max_value is not None else "",
                f"one of {', '.join(self.categories)}" if self.categories else "",
            )
            if r
        ]
        kind = {"text": "string", "category": "string"}.get(self.kind, self.kind)
        described = self.description + (f" ({'; '.join(rules)})" if rules else "")
        return dg.TableColumn(
            self.name,
            kind,
            description=described,
            constraints=dg.TableColumnConstraints(nullable=not self.non_nullable),
        )


ITERATION_KEY = [
    Column("optimization", "string", "the optimization (partition)", non_nullable=True),
    Column("iteration", "string", "g<generation>-i<n> (partition)", non_nullable=True),
    Column("generation", "int", "settings generation of the optimization", non_nullable=True, min_value=1),
    Column("step", "int", "iteration number within the generation", non_nullable=True, min_value=0),
]

SPLITS = [
    Column("dataset", "string", "the dataset (partition)", non_nullable=True),
    Column(
        "split", "category", "which split the row belongs to", non_nullable=True, categories=("train", "dev", "test")
    ),
    Column("row_id", "int", "the row's number in its CSV (data rows from 1)", non_nullable=True, min_value=0),
    Column("user_input", "string", "the input filled in for {user_input}", non_nullable=True),
    Column("ground_truth_output", "text", "the expected answer; empty only for a model migration's rows"),
]

PREDICTIONS = [
    *ITERATION_KEY,
    Column("prompt_id", "string", "the prompt version that was answered", non_nullable=True),
    Column("row_id", "int", "the dev row answered", non_nullable=True, min_value=0),
    Column("user_input", "string", "the row's input", non_nullable=True),
    Column("ground_truth_output", "text", "the expected answer"),
    Column("prediction", "text", "the task model's answer, normalised as scored"),
    Column("error", "text", "why the row has no answer after every retry; empty when answered"),
    Column("attempts", "int", "calls it took, retries included; 0 from the cache", non_nullable=True, min_value=0),
    Column("model", "string", "backend/model that answered", non_nullable=True),
    Column("prompt_tokens", "int", "prompt tokens billed", non_nullable=True, min_value=0),
    Column("completion_tokens", "int", "completion tokens billed", non_nullable=True, min_value=0),
    Column("cost_usd", "float", "estimated cost of the row", non_nullable=True, min_value=0),
    Column("latency_s", "float", "seconds the answer took", non_nullable=True, min_value=0),
    Column("cached", "bool", "answered from the response cache", non_nullable=True),
]

METRICS = [
    *ITERATION_KEY,
    Column("row_id", "int", "the dev row scored", non_nullable=True, min_value=0),
    Column("scorer", "string", "scorer name, or aggregate", non_nullable=True),
    Column("score", "float", "the row's score (the scores_in_range check warns outside [0, 1])"),
    Column("value", "float", "the scorer's value over all rows"),
    Column("weight", "float", "the scorer's weight in the aggregate", min_value=0),
    Column("is_target", "bool", "whether this scorer decides acceptance", non_nullable=True),
    Column("rationale", "text", "the LLM judge's reason, when the scorer is a judge"),
    Column("usage_json", "text", "judge model usage while scoring"),
]


def offending_rows(frame: pd.DataFrame, column: Column, limit: int = 10) -> tuple[list, list]:
    """The rows (their row_id where the table has one) that break one column's rules, and their values."""
    values = frame[column.name]
    bad = values.isna() if column.non_nullable else pd.Series(False, index=values.index)
    numbers = pd.to_numeric(values, errors="coerce") if column.kind in ("int", "float") else None
    if numbers is not None and column.min_value is not None:
        bad |= numbers < column.min_value
    if numbers is not None and column.max_value is not None:
        bad |= numbers > column.max_value
    if column.categories:
        bad |= values.notna() & ~values.isin(column.categories)
    by_row_id = "row_id" in frame and column.name != "row_id"
    ids = frame["row_id"] if by_row_id else pd.Series(frame.index, index=frame.index)
    return _plain(ids[bad].head(limit)), _plain(values[bad].head(limit))


def _plain(series: pd.Series) -> list:
    """numpy scalars as Python values, so a message prints 3, not np.int64(3)."""
    return [v.item() if hasattr(v, "item") else v for v in series]


_NAMED = re.compile(r'column "([^"]+)"')


def frame_type(name: str, description: str, columns: list[Column]) -> dg.DagsterType:
    """The dagster-pandas type, whose failure message also names the offending rows: the library's own
    message prints a Python zip object, or a truncated frame, where the rows should be (dagster-pandas 0.29)."""
    with warnings.catch_warnings():  # dagster-pandas marks its column API beta; said once in docs/design.md
        warnings.simplefilter("ignore", dg.BetaWarning)
        inner = create_dagster_pandas_dataframe_type(
            name, description=description, columns=[c.pandas() for c in columns]
        )
    by_name = {c.name: c for c in columns}

    def check(context, value) -> dg.TypeCheck:
        result = inner.type_check(context, value)
        if result.success or not isinstance(value, pd.DataFrame):
            return result
        text = result.description or ""
        named = _NAMED.search(text)
        if named and named.group(1) in by_name and named.group(1) in value:
            rows, values = offending_rows(value, by_name[named.group(1)])
            which = "row_id" if "row_id" in value and named.group(1) != "row_id" else "index"
            # the library appends a zip object's repr or a truncated frame dump; the row ids say more
            text = text.split("The offending", 1)[0].rstrip() + f" Offending rows with {which} {rows}, values {values}."
        return dg.TypeCheck(success=False, description=f"{name}: {text}", metadata=result.metadata)

    return dg.DagsterType(name=name, type_check_fn=check, description=inner.description, typing_type=pd.DataFrame)


def column_schema(columns: list[Column]) -> dict:
    """Definition metadata that makes the UI show the table's columns on the asset page."""
    return {"dagster/column_schema": dg.TableSchema(columns=[c.table_column() for c in columns])}


DatasetSplitsFrame = frame_type("DatasetSplitsFrame", "One dataset's rows, every split.", SPLITS)
PredictionsFrame = frame_type("PredictionsFrame", "One answer per dev row, with its cost.", PREDICTIONS)
MetricsFrame = frame_type("MetricsFrame", "Per-row scores per scorer.", METRICS)
