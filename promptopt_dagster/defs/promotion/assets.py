"""Promotion with approval: the audit of every request, the gates, and the prompt applications read.

Only the `promote_prompt` job materializes these assets (the UI's launchpad, or `promptopt promote`
and `promptopt rollback`); no sensor or schedule targets them. `promotion_audit` scores the candidate
and the served prompt on the same test rows and records the request with its verdict; `promoted_prompt`
writes only what an approved request serves, so a refused candidate never reaches the serving
location, but its refusal stays in the audit.

A refused request is a decision, not a crash, so its run succeeds: `promotion_audit` materializes with
verdict `blocked` and the reason, the gate that refused it is a failed (red) asset check on that
materialization, and `promoted_prompt` is skipped (no materialization: nothing served changed). The
gates are therefore not Dagster *blocking* checks: a failed blocking check fails its step and paints
the run red, the same red as a model or disk error, so a person scanning the runs page could not tell
"ana's promotion was refused, as designed" from "the promotion broke". `promoted_prompt` enforces the
gates itself: it serves what the audit alone says (`core.promotion.served_stack`), and does nothing
when the newest request was refused. A run does fail (red) when no request could be judged at all:
an unknown action, or an optimization with nothing to promote yet (never started, no final report);
those are errors with nothing to record, and their message says what to run first.
"""

import json

import dagster as dg
import pandas as pd
from pydantic import Field

from promptopt_dagster.app import promotion as po
from promptopt_dagster.app.datasets import DatasetSplits, sample_rows
from promptopt_dagster.app.quality import leakage_gate
from promptopt_dagster.core.prompts import PromptVersion, prompt_problem
from promptopt_dagster.core.storage import write_text
from promptopt_dagster.defs.evaluation import predict_rows, score_answers, settings_of, splits_of, suite_of
from promptopt_dagster.defs.metadata import prompt_md
from promptopt_dagster.defs.names import ARTIFACTS
from promptopt_dagster.defs.partitions import DATASET_EXPR, dataset_of_optimization, dataset_partitions, iteration_name
from promptopt_dagster.defs.resources import LLMResource, ProjectResource
from promptopt_dagster.defs.state_store import WarehouseStateStore

PROMOTION = "promotion"


class PromotionConfig(dg.Config):
    action: str = Field(
        "promote",
        description="promote: serve an optimization's best prompt; rollback: serve the "
        "version that was served before the current one",
    )
    optimization: str = Field(
        "", description="promote: the optimization whose best prompt (current generation) is promoted"
    )
    note: str = Field("", description="why: kept in the audit table")
    requested_by: str = Field("", description="who asks (the CLI fills in the user; empty: the run's launcher)")
    margin: float = Field(
        0.0,
        ge=0.0,
        description="how far below the served prompt's test score the candidate may be and still be promoted",
    )
    force: bool = Field(
        False,
        description="serve it even if it scores below the served prompt (beyond the margin); "
        "the audit records the override, and the other gates still apply",
    )


#: check name -> (the audit column holding its problem, what it checks); one asset check each
GATES = {
    "not_worse_than_promoted": (
        "score_problem",
        "The candidate (for a rollback: the version it restores) scores "
        "at least the served prompt's test score, less the request's margin, on the same "
        "test rows; a request with force passes with a warning.",
    ),
    "no_held_out_rows": (
        "leakage_problem",
        "No dev or test row as a demo, in the demo pool, or copied 40+ characters verbatim into the instructions.",
    ),
    "prompt_is_usable": ("prompt_problem", "{user_input} exactly once in the template, no other placeholder anywhere."),
    "earlier_version_exists": (
        "history_problem",
        "A rollback has an earlier served version to restore (a promotion always passes).",
    ),
}
#: a request with force passes this gate with a warning
FORCEABLE = "score_problem"
#: what the prompt columns of an audit row are, for a rollback taken from the promotion it restores
PROMPT_FIELDS = (
    "optimization",
    "generation",
    "iterations",
    "iteration",
    "prompt_id",
    "prompt_version",
    "metric",
    "candidate_score",
    "test_rows",
    "document_json",
)


@dg.asset(
    partitions_def=dataset_partitions,
    metadata=DATASET_EXPR,
    group_name=PROMOTION,
    io_manager_key=ARTIFACTS,
    ins={
        "final_report": dg.AssetIn(partition_mapping=dataset_of_optimization),
        "optimization_settings": dg.AssetIn(partition_mapping=dataset_of_optimization),
    },
    check_specs=[
        dg.AssetCheckSpec(name, asset="promotion_audit", description=description)
        for name, (_, description) in GATES.items()
    ],
)
def promotion_audit(
    context: dg.AssetExecutionContext,
    config: PromotionConfig,
    final_report: pd.DataFrame,
    optimization_settings: pd.DataFrame,
    dataset_splits: pd.DataFrame,
    project: ProjectResource,
    task_model: LLMResource,
    judge_model: LLMResource,
    state_store: WarehouseStateStore,
):
    """Every promotion and rollback request of the dataset, approved or blocked: who, when, which
    optimization, the scores compared, the note. The last row is this run's request.

    A blocked request materializes too (verdict `blocked`, with the reason), and the gate that refused it
    is a failed asset check: the run itself succeeds, since refusing is this asset's job (see the module)."""
    dataset = context.partition_key
    if config.action not in po.ACTIONS:
        raise dg.Failure(f"action must be one of {', '.join(po.ACTIONS)}, not {config.action!r}.")
    audit = state_store.promotion_events(dataset)
    stack = po.served_stack(audit)
    who = config.requested_by or context.run.tags.get("dagster/user", "") or "unknown"
    row = {
        "event_id": int(audit["event_id"].max()) + 1 if len(audit) else 1,
        "dataset": dataset,
        "action": config.action,
        "requested_by": who,
        "note": config.note,
        "requested_at": po.now(),
        "margin": config.margin,
        "score_problem": None,
        "current_prompt_id": None,
        "current_score": None,
        "leakage_problem": None,
        "prompt_problem": None,
        "history_problem": None,
    }
    scorer = _Scorer(dataset, optimization_settings, dataset_splits, project, task_model, judge_model)
    if config.action == "promote":
        row.update(_candidate(config, dataset, final_report, optimization_settings, stack, scorer, state_store))
    else:
        row.update(_rollback(config, dataset, stack, scorer))
    prompt = po.prompt_of(json.loads(row["document_json"])) if row.get("document_json") else None
    if prompt is not None:
        splits = scorer.splits()
        gate = leakage_gate(prompt, {"dev": splits.dev, "test": splits.test})
        row["leakage_problem"] = None if gate.passed else gate.message
        row["prompt_problem"] = prompt_problem(prompt.system_prompt, prompt.output_prompt)
    forced = bool(config.force and row["score_problem"])
    if row["score_problem"] and not forced:
        row["score_problem"] += f". {po.SCORE_ADVICE[config.action]}"
    problems = [row[field] for field, _ in GATES.values() if row[field] and not (forced and field == FORCEABLE)]
    row["verdict"] = po.BLOCKED if problems else po.APPROVED
    if problems:
        row["reason"] = "; ".join(problems)
    else:
        served_version = po.promotions(audit) + 1 if config.action == "promote" else stack[-2]["served_version"]
        row["reason"] = (
            ("passed every gate" if config.action == "promote" else "restores the version served before")
            + f"; served as {po.version_name(served_version)}"
            + (f"; forced although {row['score_problem']}" if forced else "")
        )
    what = (
        f"{config.action} of {row['prompt_id']} ({row['optimization']})"
        if prompt is not None
        else f"{config.action} of {dataset}"
    )
    context.log.info(f"{dataset}: {what} {row['verdict']}: {row['reason']}")
    columns = list(po.AUDIT_COLUMNS)
    out = pd.DataFrame([row]).reindex(columns=columns).astype(po.AUDIT_COLUMNS)
    if len(audit):  # older rows may lack the columns added since: empty there
        out = pd.concat([audit.reindex(columns=columns).astype(po.AUDIT_COLUMNS), out], ignore_index=True)
    scores = {
        name: dg.MetadataValue.float(float(row[name]))
        for name in ("candidate_score", "current_score")
        if row.get(name) is not None and not pd.isna(row[name])
    }
    yield dg.Output(
        out,
        metadata={
            "request": f"{what} by {who}",
            "verdict": row["verdict"],
            "reason": row["reason"],
            "events": len(out),
            **scores,
            **({"prompt": prompt_md(prompt)} if prompt is not None else {}),
        },
    )
    for check, (field, _) in GATES.items():
        problem = row[field]
        if problem and forced and field == FORCEABLE:
            yield dg.AssetCheckResult(
                check_name=check,
                passed=False,
                severity=dg.AssetCheckSeverity.WARN,
                description=f"overridden with --force: {problem}",
                metadata={"event_id": row["event_id"]},
            )
        else:
            unchecked = prompt is None and field != "history_problem"  # a rollback with nothing to restore
            yield dg.AssetCheckResult(
                check_name=check,
                passed=problem is None,
                description=problem or ("not checked: no version to restore" if unchecked else "passed"),
                metadata={"event_id": row["event_id"]},
            )


class _Scorer:
    """Scores prompts on one optimization generation's test rows, with its task model and metric."""

    def __init__(
        self,
        dataset: str,
        optimization_settings: pd.DataFrame,
        dataset_splits: pd.DataFrame,
        project: ProjectResource,
        task_model: LLMResource,
        judge_model: LLMResource,
    ) -> None:
        self.dataset, self.settings, self.rows = dataset, optimization_settings, dataset_splits
        self.project, self.task_model, self.judge_model = project, task_model, judge_model

    def splits(self) -> DatasetSplits:
        return splits_of(self.rows, self.dataset)

    def knows(self, name: str, generation: int) -> bool:
        settings = self.settings
        return (
            not settings.empty
            and not settings[(settings["optimization"] == name) & (settings["generation"] == generation)].empty
        )

    def on_rows_of(self, name: str, generation: int):
        """(score(prompt, which) -> float, metric, test rows, task client, dataset spec) for that generation."""
        optimization = settings_of(self.settings[self.settings["optimization"] == name], generation)
        spec = self.project.spec(self.dataset)
        client = self.task_model.client_for(optimization.task_model)
        suite = suite_of(self.project, self.dataset, self.judge_model, optimization)
        test = sample_rows(self.splits().test, optimization.test_size, optimization.seed)

        def score(prompt: PromptVersion, which: str) -> float:  # a final report answered most: the cache has them
            answers = predict_rows(client, prompt, test, spec, f"promotion {which} {self.dataset}", split="test")
            return float(score_answers(suite, self.judge_model, answers)[0].value)

        return score, suite.target, test, client, spec


def _run_first(name: str) -> str:
    return (
        f"Run `promptopt optimize --optimization {name}` (or `promptopt submit {name}` while `promptopt ui` "
        f"runs), then promote it"
    )


def _candidate(
    config: PromotionConfig,
    dataset: str,
    final_report: pd.DataFrame,
    optimization_settings: pd.DataFrame,
    stack: list[dict],
    scorer: _Scorer,
    state_store: WarehouseStateStore,
) -> dict:
    """The named optimization's best prompt, and both it and the served prompt scored on its test rows.

    The report holds the prompt in stored form; the exported document carries its retrieval pool itself."""
    name = config.optimization
    settings = (
        optimization_settings[
            (optimization_settings["optimization"] == name) & optimization_settings["current"].astype(bool)
        ]
        if not optimization_settings.empty
        else optimization_settings
    )
    if settings.empty:
        raise dg.Failure(
            f"nothing to promote: optimization '{name}' of dataset '{dataset}' has not been started "
            f"here. {_run_first(name)}."
        )
    generation = int(settings.iloc[0]["generation"])
    reports = (
        final_report[(final_report["optimization"] == name) & (final_report["generation"] == generation)]
        if not final_report.empty
        else final_report
    )
    if reports.empty:
        raise dg.Failure(
            f"nothing to promote yet: optimization '{name}' (generation {generation}) has no final "
            "report, and only a prompt scored on the held-out test split can be promoted. "
            f"`promptopt status {name}` shows where it is; `promptopt optimize --optimization {name}` "
            "runs it to its final report."
        )
    if scorer.rows.empty:
        raise dg.Failure(f"nothing to promote: dataset '{dataset}' has no rows in this warehouse. {_run_first(name)}.")
    report = json.loads(reports.iloc[0]["report_json"])
    candidate = state_store.with_pool(PromptVersion.model_validate(report["best_prompt"]))
    score, metric, test, client, spec = scorer.on_rows_of(name, generation)
    candidate_score = score(candidate, "candidate")
    current = stack[-1] if stack else None
    current_score = score(po.prompt_of(json.loads(current["document_json"])), "served") if current else None
    iteration = iteration_name(generation, int(report["iterations"]) - 1)
    document = po.export_document(
        candidate,
        dataset=dataset,
        max_output_tokens=spec.max_output_tokens,
        stop=list(spec.completion_stop),
        task_model=client.model_key,
        mode=client.mode,
        source={
            "optimization": name,
            "generation": generation,
            "iteration": iteration,
            "metric": metric,
            "test_score": candidate_score,
            "test_rows": len(test),
        },
    )
    return {
        "optimization": name,
        "generation": generation,
        "iterations": int(report["iterations"]),
        "iteration": iteration,
        "prompt_id": candidate.id,
        "prompt_version": candidate.version,
        "metric": metric,
        "candidate_score": candidate_score,
        "test_rows": len(test),
        "document_json": json.dumps(document),
        "current_prompt_id": current["prompt_id"] if current else None,
        "current_score": current_score,
        "score_problem": po.score_problem(
            "promote",
            metric,
            candidate_score,
            current_score,
            current["prompt_id"] if current else None,
            config.margin,
            len(test),
        ),
    }


def _rollback(config: PromotionConfig, dataset: str, stack: list[dict], scorer: _Scorer) -> dict:
    """The version served before the current one, and both scored on the test rows of the optimization it
    came from (as its promotion was). Nothing to restore is a problem of its own, recorded like any other."""
    served = stack[-1] if stack else None
    current = {
        "current_prompt_id": served["prompt_id"] if served else None,
        "current_score": float(served["candidate_score"]) if served else None,
    }
    problem = po.history_problem(dataset, stack)
    if problem:
        return {**current, "history_problem": problem}
    back = stack[-2]
    row = {**{k: back[k] for k in PROMPT_FIELDS}, **current}
    name, generation = back["optimization"], int(back["generation"])
    same_rows = scorer.knows(name, generation) and not scorer.rows.empty
    if same_rows:
        score, metric, test, *_ = scorer.on_rows_of(name, generation)
        row.update(
            candidate_score=score(po.prompt_of(json.loads(back["document_json"])), "rollback target"),
            current_score=score(po.prompt_of(json.loads(served["document_json"])), "served"),
            metric=metric,
            test_rows=len(test),
        )
    row["score_problem"] = po.score_problem(
        "rollback",
        row["metric"],
        float(row["candidate_score"]),
        row["current_score"],
        served["prompt_id"],
        config.margin,
        int(row["test_rows"]),
        candidate_id=back["prompt_id"],
        same_rows=same_rows,
    )
    return row


@dg.asset(partitions_def=dataset_partitions, metadata=DATASET_EXPR, group_name=PROMOTION, output_required=False)
def promoted_prompt(context: dg.AssetExecutionContext, promotion_audit: pd.DataFrame, project: ProjectResource):
    """The prompt applications read: `<prompts dir>/promoted/<dataset>.json` (gcs deployment:
    `gs://BUCKET/PREFIX/promoted/<dataset>/current.json`), plus a copy per served version beside it,
    `v<N>-<prompt id>.json` for the dataset's Nth approved promotion.

    What is served follows from the audit alone. When the newest request was refused this asset does not
    materialize (the step succeeds with no output): nothing served changed, and the refusal is on
    `promotion_audit`, its verdict and its failed check."""
    dataset = context.partition_key
    stack = po.served_stack(promotion_audit)
    last = promotion_audit.sort_values("event_id").iloc[-1]
    if last["verdict"] != po.APPROVED or not stack:
        context.log.info(
            f"{dataset}: the {last['action']} request {int(last['event_id'])} was {last['verdict']}: "
            f"{last['reason']}. Nothing served changed."
        )
        return
    served = stack[-1]
    document = json.loads(served["document_json"])
    current, versioned = po.serving_paths(
        project.promoted_dir(), dataset, served["served_version"], served["prompt_id"]
    )
    # The copy is the version as its promotion served it; the stable file says which request serves it now.
    copy = {**document, "promotion": _stamp(served, served)}
    write_text(versioned, json.dumps(copy, indent=2, ensure_ascii=False) + "\n")
    document["promotion"] = _stamp(last, served)
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    write_text(current, text)  # atomic: a reader sees the old file or the new one, never half of one
    context.log.info(
        f"{dataset}: serving {served['prompt_id']} from {served['optimization']} "
        f"({po.version_name(served['served_version'])}) at {current}"
    )
    yield dg.Output(
        pd.DataFrame(
            [
                {
                    "dataset": dataset,
                    "event_id": int(last["event_id"]),
                    "prompt_id": served["prompt_id"],
                    "optimization": served["optimization"],
                    "path": str(current),
                    "version_path": str(versioned),
                    "served_at": po.now(),
                }
            ]
        ),
        metadata={
            "path": dg.MetadataValue.path(current),
            "version_path": dg.MetadataValue.path(versioned),
            "version": po.version_name(served["served_version"]),
            "prompt_id": served["prompt_id"],
            "optimization": served["optimization"],
            "test_score": dg.MetadataValue.float(float(served["candidate_score"])),
            "action": last["action"],
            "by": last["requested_by"],
            "prompt": prompt_md(po.prompt_of(document)),
        },
    )


def _stamp(request, served: dict) -> dict:
    """The `promotion` block of a served document: the request that serves it, and which served version it is."""
    return {
        "event_id": int(request["event_id"]),
        "action": request["action"],
        "by": request["requested_by"],
        "at": request["requested_at"],
        "note": request["note"],
        "version": int(served["served_version"]),
    }
