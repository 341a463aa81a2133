"""Model migration (the dao-ai seed): move a prompt written for one model to another.

An optimization that names a `source_model` has that model answer its rows with the dataset's initial
prompt. Those answers become the references (`ground_truth_output`) of the rows the loop reads, so
every scorer, optimizer and check runs unchanged and measures one thing: agreement with the source
(exact label match on a labeled dataset, the dataset's own scorers such as rouge or the judge on
free text). The dataset's own labels, where its files have them, are kept beside the references to
be shown, never optimized for. No Dagster here: the asset is defs/datasets/migration.py.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable

import pandas as pd

from promptopt_dagster.app.datasets import MIGRATION_HINT, SPLITS, DatasetSplits, sample_rows
from promptopt_dagster.core.errors import PromptOptError
from promptopt_dagster.core.prompts import PromptVersion
from promptopt_dagster.llm import usage as llm_usage
from promptopt_dagster.scoring.normalize import normalize, to_label
from promptopt_dagster.scoring.registry import load_metric

#: one row per row the source model answered (the `migration_references` table)
REFERENCE_COLUMNS = {
    "optimization": "string",
    "split": "string",
    "row_id": "int64",
    "user_input": "string",
    "reference": "string",
    "source_answer": "string",
    "dataset_label": "string",
    "status": "string",
    "error": "string",
    "model": "string",
    "attempts": "int64",
    "prompt_tokens": "int64",
    "completion_tokens": "int64",
    "cost_usd": "float64",
    "latency_s": "float64",
    "cached": "bool",
    "fingerprint": "string",
}
#: why a row has no reference: the call failed, or the answer names no label of the dataset / is empty
STATUSES = ("ok", "failed", "off_label", "unreadable", "empty")  # unreadable: no number for numeric_match


class MigrationError(PromptOptError):
    """References that are missing, stale or too few: says what to materialize or change."""


def empty_references() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in REFERENCE_COLUMNS.items()})


def references_fingerprint(spec, initial: PromptVersion) -> str:
    """What decides the references: the source model, the dataset, the prompt it answers with and
    the test rows the report will use. References made under another fingerprint are stale."""
    payload = {
        "source_model": spec.source_model.model_dump(mode="json"),
        "dataset": spec.dataset,
        "prompt": initial.model_dump(mode="json", exclude={"id", "parent_id", "version", "metadata", "created_at"}),
        "test_size": spec.test_size,
        "seed": spec.seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def rows_to_answer(splits: DatasetSplits, spec) -> dict[str, pd.DataFrame]:
    """Per split, the rows the optimization can read: every train row (the demo pool), every dev row
    (select, confirm and the race's spare rows) and the test rows its report scores."""
    out = {}
    for split in SPLITS:
        rows = splits.split(split)
        out[split] = sample_rows(rows, spec.test_size, spec.seed) if split == "test" else rows.reset_index(drop=True)
    return out


def reference_form(scorers: list[str]) -> Callable[[str], str | None] | None:
    """How a free-text source answer becomes a reference the dataset's scorers accept, or None (as it is).

    numeric_match compares the LAST number of an answer with a reference that must be a plain number,
    so a source's worked solution ("... Answer: 38") gives the reference "38", found the same way the
    scorer reads the target's answers (its module's own `last_number`, from the registry's loaded copy)."""
    if "numeric_match" not in scorers:
        return None
    module = inspect.getmodule(type(load_metric("numeric_match")))  # the copy the scorer itself runs

    def number(answer: str) -> str | None:
        value = module.last_number(answer)
        return None if value is None else format(value, "f")

    return number


def reference_of(
    answer: str | None, labels: list[str], form: Callable[[str], str | None] | None = None
) -> tuple[str | None, str]:
    """(reference, status) of one source answer: on a labeled dataset the label it names, in the
    manifest's spelling; on free text the answer itself, trimmed, or in the scorers' `form`."""
    if answer is None or not str(answer).strip():
        return None, "empty"
    if not labels:
        if form is None:
            return str(answer).strip(), "ok"
        reference = form(str(answer))
        return (reference, "ok") if reference is not None else (None, "unreadable")
    named = to_label(answer, labels)
    if named is None:
        return None, "off_label"
    spelled = {normalize(label): label for label in labels}
    return spelled[named], "ok"


def build_references(
    optimization: str,
    split: str,
    rows: pd.DataFrame,
    answers: pd.DataFrame,
    labels: list[str],
    fingerprint: str,
    form: Callable[[str], str | None] | None = None,
) -> pd.DataFrame:
    """The references of one split from the source model's answers (llm.inference.predict's table)."""
    records = []
    for row, answer in zip(rows.to_dict("records"), answers.to_dict("records")):
        failed = answer["error"] is not None and answer["error"] == answer["error"]
        reference, status = (None, "failed") if failed else reference_of(answer["prediction"], labels, form)
        label = row["ground_truth_output"]
        records.append(
            {
                "optimization": optimization,
                "split": split,
                "row_id": int(row["row_id"]),
                "user_input": row["user_input"],
                "reference": reference,
                "source_answer": None if failed else answer["prediction"],
                "dataset_label": None if label is None or label is pd.NA or label != label else str(label),
                "status": status,
                "error": answer["error"] if failed else None,
                "model": answer["model"],
                "attempts": int(answer["attempts"]),
                "prompt_tokens": int(answer["prompt_tokens"]),
                "completion_tokens": int(answer["completion_tokens"]),
                "cost_usd": float(answer["cost_usd"]),
                "latency_s": float(answer["latency_s"]),
                "cached": bool(answer["cached"]),
                "fingerprint": fingerprint,
            }
        )
    return typed(pd.DataFrame.from_records(records, columns=list(REFERENCE_COLUMNS)))


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[list(REFERENCE_COLUMNS)].astype(REFERENCE_COLUMNS)


def check_references(references: pd.DataFrame, max_failed_fraction: float, source: str) -> None:
    """Refuse references the loop cannot use: too many failed calls, or a split left with no reference."""
    failed = references[references["status"] == "failed"]
    if len(references) and len(failed) / len(references) > max_failed_fraction:
        examples = "; ".join(dict.fromkeys(failed["error"].astype(str).head(3)))
        raise MigrationError(
            f"The source model {source} failed on {len(failed)} of {len(references)} rows "
            f"({len(failed) / len(references):.1%} > max_failed_fraction {max_failed_fraction:.1%}), e.g. {examples}. "
            "Answers already received are cached: fix the cause and start the optimization again, which asks "
            "only for the failed rows."
        )
    for split in SPLITS:
        rows = references[references["split"] == split]
        if len(rows) and not (rows["status"] == "ok").any():
            shown = rows["source_answer"].dropna().astype(str).head(3).tolist()
            raise MigrationError(
                f"The source model {source} gave no usable answer on the {split} rows ({len(rows)} rows; "
                f"statuses {rows['status'].value_counts().to_dict()}; answers e.g. {shown}). On a labeled dataset "
                "an answer must start with one of the labels: check the source model and the initial prompt."
            )


def apply_references(rows: pd.DataFrame, references: pd.DataFrame, fingerprint: str, optimization: str) -> pd.DataFrame:
    """The dataset's rows with each reference as its ground_truth_output; rows without one are left out
    (the test rows the report does not score, failed or off-label source answers)."""
    if references.empty:
        raise MigrationError(
            f"Optimization '{optimization}' names a source_model, but migration_references holds "
            f"no references for it. Materialize migration_references[{optimization}] together with "
            "its optimization (the start_optimization job, `promptopt optimize` and `promptopt "
            "submit` do)."
        )
    stale = set(references["fingerprint"].dropna()) - {fingerprint}
    if stale:
        raise MigrationError(
            f"The references of optimization '{optimization}' were made for other settings (source "
            "model, initial prompt, test rows). Materialize migration_references and optimization "
            "together (the start_optimization job does)."
        )
    ok = references[references["status"] == "ok"][["split", "row_id", "user_input", "reference"]]
    merged = rows.merge(
        ok.astype({"user_input": object, "reference": object}),
        on=["split", "row_id", "user_input"],
        how="inner",
        sort=False,
    )
    merged["ground_truth_output"] = merged.pop("reference")
    return merged[list(rows.columns)].reset_index(drop=True)


def unlabeled_files(rows: pd.DataFrame, files: dict[str, str]) -> list[str]:
    """The files (manifest paths) of the splits stored without labels."""
    if rows.empty:
        return []
    missing = rows[rows["ground_truth_output"].isna()]
    return [files[s] for s in SPLITS if (missing["split"] == s).any()]


def unlabeled_message(optimization: str, files: list[str], data_dir) -> str:
    paths = ", ".join(str(data_dir / f) if data_dir is not None else f for f in files)
    return (
        f"Optimization '{optimization}' has no source_model, and dataset file(s) {paths} have no "
        f"ground_truth_output column (the dataset was loaded for a model migration of the same dataset). "
        f"{MIGRATION_HINT.replace('on the optimization', f'for optimizations.{optimization}')}"
    )


def label_agreement(answers: list, references: list, labels: list[str]) -> float | None:
    """Share of rows whose answer names the same label as the reference (equal normalized text on free
    text); None with no rows."""
    pairs = [(a, r) for a, r in zip(answers, references) if r is not None and r == r]
    if not pairs:
        return None
    if labels:
        same = [to_label(a, labels) is not None and to_label(a, labels) == to_label(r, labels) for a, r in pairs]
    else:
        same = [normalize(a) == normalize(r) for a, r in pairs]
    return sum(same) / len(pairs)


def references_summary(references: pd.DataFrame, labels: list[str]) -> dict:
    """Rows per split and status, and how often the source agrees with the dataset's own labels."""
    by_split = {s: int((references["split"] == s).sum()) for s in SPLITS}
    usable = {s: int(((references["split"] == s) & (references["status"] == "ok")).sum()) for s in SPLITS}
    statuses = {k: int(v) for k, v in references["status"].value_counts().items()}
    labeled = references[references["dataset_label"].notna() & (references["status"] == "ok")]
    agreement = label_agreement(labeled["reference"].tolist(), labeled["dataset_label"].tolist(), labels)
    return {
        "rows": int(len(references)),
        "answered_by_split": by_split,
        "references_by_split": usable,
        "statuses": statuses,
        "source_vs_dataset_labels": agreement,
        "dataset_labeled_rows": int(len(labeled)),
    }


def per_answer(prompt_tokens: pd.Series, completion_tokens: pd.Series, price) -> dict:
    """Mean tokens of one answer and what 1,000 answers cost at the model's price (cached answers count
    at their tokens: this is the model's price of an answer, not what this run paid)."""
    if not len(prompt_tokens):
        return {"answers": 0}
    p, c = float(prompt_tokens.mean()), float(completion_tokens.mean())
    return {
        "answers": int(len(prompt_tokens)),
        "prompt_tokens": round(p, 1),
        "completion_tokens": round(c, 1),
        "cost_usd_per_1k_answers": round(price.cost(p, c) * 1000, 6),
        "price_known": bool(price.known),
    }


def usage_by_role(loop_usage: dict, source_usage: dict, source_key: str, task_key: str) -> dict:
    """What each model of a migration used: the source model (its references), the task model (the loop and
    the test rows) and any other (optimizer, judge) by model name. Counts as last materialized: a rerun
    served from the cache shows cache hits, not calls."""
    return {
        "source": {"model": source_key, **llm_usage.total(source_usage).to_dict()},
        "task": {"model": task_key, **loop_usage.get(task_key, llm_usage.UsageStats()).to_dict()},
        "other": {
            model: u.to_dict()
            for model, u in sorted(loop_usage.items())
            if model != task_key and u.llm_calls + u.cache_hits + u.errors
        },
    }


def migration_section(
    source,
    task,
    references: pd.DataFrame,
    test_answers: dict[str, pd.DataFrame],
    test_scores: dict[str, float],
    intervals: dict,
    suite,
    labels: list[str],
    cost: dict,
) -> dict:
    """The report's `migration`: agreement with the source on the test rows before (initial prompt) and
    after (best prompt), with their intervals; the dataset's own labels where the files have them; and
    what both models cost, as used and per answer."""
    test_refs = references[(references["split"] == "test") & (references["status"] == "ok")]
    dataset_labels = None
    labeled = test_refs[test_refs["dataset_label"].notna()]
    if labels and len(labeled):
        label_of = dict(zip(labeled["row_id"].astype(int), labeled["dataset_label"]))

        def agreement(answers: pd.DataFrame) -> float | None:
            rows = answers[answers["row_id"].astype(int).isin(label_of)]
            return label_agreement(rows["prediction"].tolist(), [label_of[int(i)] for i in rows["row_id"]], labels)

        dataset_labels = {
            "rows": int(len(labeled)),
            "source": label_agreement(labeled["reference"].tolist(), labeled["dataset_label"].tolist(), labels),
            "initial": agreement(test_answers["initial"]),
            "best": agreement(test_answers["best"]),
        }
    ok = references[references["status"] == "ok"]
    best = test_answers["best"][test_answers["best"]["error"].isna()]
    return {
        "source_model": source.model_key,
        "task_model": task.model_key,
        "metric": suite.target,
        "agreement": {
            "before": test_scores["initial"],
            "after": test_scores["best"],
            "test_rows": int(len(test_answers["best"])),
            "intervals": {"initial": intervals.get("initial"), "best": intervals.get("best"), "confidence": 0.95},
        },
        "references": references_summary(references, labels),
        "dataset_labels": dataset_labels,
        "cost": cost,
        "per_answer": {
            "source": per_answer(
                ok["prompt_tokens"].astype(float), ok["completion_tokens"].astype(float), source.price
            ),
            "task": per_answer(
                best["prompt_tokens"].astype(float), best["completion_tokens"].astype(float), task.price
            ),
        },
    }
