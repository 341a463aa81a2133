"""Promotion with approval: the audit of every request, the gates, and the prompt applications read.

Only the `promote_prompt` job materializes these assets (the UI's launchpad, or `promptopt promote`
and `promptopt rollback`); no sensor or schedule targets them. `promotion_audit` scores the candidate
and the served prompt on the same test rows and records the request with its verdict; its blocking
checks stop a blocked request before `promoted_prompt` writes anything, so a refused candidate never
reaches the serving location, but its refusal stays in the audit.
"""


import json

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource
from pydantic import Field

from promptopt_dagster.core import promotion as po
from promptopt_dagster.core.datasets import sample_rows
from promptopt_dagster.core.prompts import PromptVersion, prompt_problem
from promptopt_dagster.core.quality import leakage_gate
from promptopt_dagster.core.storage import write_text
from promptopt_dagster.defs.iteration_assets import _predict, _score_answers, _splits, _suite, settings_of
from promptopt_dagster.defs.loop import ARTIFACTS
from promptopt_dagster.defs.metadata import prompt_md
from promptopt_dagster.defs.partitions import (DATASET_EXPR, dataset_of_optimization, dataset_partitions,
                                               iteration_name)
from promptopt_dagster.defs.resources import LLMResource, ProjectResource
from promptopt_dagster.defs.warehouse_reads import promotion_events

PROMOTION = "promotion"


class PromotionConfig(dg.Config):
    action: str = Field("promote", description="promote: serve an optimization's best prompt; rollback: serve the "
                                               "version that was served before the current one")
    optimization: str = Field("", description="promote: the optimization whose best prompt (current generation) "
                                              "is promoted")
    note: str = Field("", description="why: kept in the audit table")
    requested_by: str = Field("", description="who asks (the CLI fills in the user; empty: the run's launcher)")
    margin: float = Field(0.0, ge=0.0, description="how far below the served prompt's test score the candidate "
                                                   "may be and still be promoted")


#: check name -> (the audit column holding its problem, what it checks); one blocking check each
GATES = {
    "not_worse_than_promoted": ("score_problem", "The candidate's test score is not below the served prompt's, "
                                "beyond the request's margin, on the same test rows (not checked for a rollback)."),
    "no_held_out_rows": ("leakage_problem", "No dev or test row as a demo, in the demo pool, or copied 40+ "
                         "characters verbatim into the instructions."),
    "prompt_is_usable": ("prompt_problem", "{user_input} exactly once in the template, no other placeholder "
                         "anywhere."),
}


@dg.asset(partitions_def=dataset_partitions, metadata=DATASET_EXPR, group_name=PROMOTION, io_manager_key=ARTIFACTS,
          ins={"final_report": dg.AssetIn(partition_mapping=dataset_of_optimization),
               "optimization_settings": dg.AssetIn(partition_mapping=dataset_of_optimization)},
          check_specs=[dg.AssetCheckSpec(name, asset="promotion_audit", blocking=True, description=description)
                       for name, (_, description) in GATES.items()])
def promotion_audit(context: dg.AssetExecutionContext, config: PromotionConfig, final_report: pd.DataFrame,
                    optimization_settings: pd.DataFrame, dataset_splits: pd.DataFrame, project: ProjectResource,
                    task_model: LLMResource, judge_model: LLMResource, warehouse: DuckDBResource):
    """Every promotion and rollback request of the dataset, approved or blocked: who, when, which
    optimization, the scores compared, the note. The last row is this run's request."""
    dataset = context.partition_key
    if config.action not in po.ACTIONS:
        raise dg.Failure(f"action must be one of {', '.join(po.ACTIONS)}, not {config.action!r}.")
    audit = promotion_events(warehouse, dataset)
    stack = po.served_stack(audit) if len(audit) else []
    splits = _splits(dataset_splits, dataset)
    who = config.requested_by or context.run.tags.get("dagster/user", "") or "unknown"
    row = {"event_id": int(audit["event_id"].max()) + 1 if len(audit) else 1, "dataset": dataset,
           "action": config.action, "requested_by": who, "note": config.note, "requested_at": po.now(),
           "margin": config.margin, "score_problem": None, "current_prompt_id": None, "current_score": None}
    if config.action == "promote":
        row.update(_candidate(context, config, dataset, final_report, optimization_settings, splits, stack,
                              project, task_model, judge_model))
    else:
        if len(stack) < 2:
            raise dg.Failure(f"Nothing to roll back to for dataset '{dataset}': "
                             f"{'no prompt is served' if not stack else 'only one version was ever promoted'}.")
        served, back = stack[-1], stack[-2]
        row.update({k: back[k] for k in ("optimization", "generation", "iterations", "iteration", "prompt_id",
                                         "prompt_version", "metric", "candidate_score", "test_rows", "document_json")})
        row.update(current_prompt_id=served["prompt_id"], current_score=served["candidate_score"])
    prompt = po.prompt_of(json.loads(row["document_json"]))
    gate = leakage_gate(prompt, {"dev": splits.dev, "test": splits.test})
    row["leakage_problem"] = None if gate.passed else gate.message
    row["prompt_problem"] = prompt_problem(prompt.system_prompt, prompt.output_prompt)
    problems = [row[field] for field, _ in GATES.values() if row[field]]
    row["verdict"] = po.BLOCKED if problems else po.APPROVED
    row["reason"] = "; ".join(problems) if problems else (
        "restores the version served before" if config.action == "rollback" else "passed every gate")
    context.log.info(f"{dataset}: {config.action} of {row['prompt_id']} ({row['optimization']}) {row['verdict']}: "
                     f"{row['reason']}")
    out = pd.concat([audit[list(po.AUDIT_COLUMNS)], pd.DataFrame([row])], ignore_index=True) if len(audit) \
        else pd.DataFrame([row])
    out = out[list(po.AUDIT_COLUMNS)].astype(po.AUDIT_COLUMNS)
    yield dg.Output(out, metadata={
        "request": f"{config.action} {row['prompt_id']} from {row['optimization']} by {who}",
        "verdict": row["verdict"], "reason": row["reason"], "events": len(out),
        "candidate_score": dg.MetadataValue.float(float(row["candidate_score"])),
        **({"current_score": dg.MetadataValue.float(float(row["current_score"]))}
           if row["current_score"] is not None else {}),
        "prompt": prompt_md(prompt)})
    for check, (field, _) in GATES.items():
        problem = row[field]
        yield dg.AssetCheckResult(check_name=check, passed=problem is None,
                                  description=problem or "passed", metadata={"event_id": row["event_id"]})


def _candidate(context, config: PromotionConfig, dataset: str, final_report: pd.DataFrame,
               optimization_settings: pd.DataFrame, splits, stack: list[dict], project: ProjectResource,
               task_model: LLMResource, judge_model: LLMResource) -> dict:
    """The named optimization's best prompt, and both it and the served prompt scored on its test rows."""
    name = config.optimization
    settings = optimization_settings[(optimization_settings["optimization"] == name)
                                     & optimization_settings["current"].astype(bool)]
    if settings.empty:
        raise dg.Failure(f"Optimization '{name}' of dataset '{dataset}' was never started; known here: "
                         f"{', '.join(sorted(set(optimization_settings['optimization']))) or 'none'}.")
    generation = int(settings.iloc[0]["generation"])
    reports = final_report[(final_report["optimization"] == name) & (final_report["generation"] == generation)]
    if reports.empty:
        raise dg.Failure(f"Optimization '{name}' (generation {generation}) has no final report yet: only a prompt "
                         "scored on the held-out test split can be promoted. Let it finish first.")
    report = json.loads(reports.iloc[0]["report_json"])
    optimization = settings_of(optimization_settings, generation)
    spec = project.spec(dataset)
    candidate = PromptVersion.model_validate(report["best_prompt"])
    client = task_model.client_for(optimization.task_model)
    suite = _suite(project, dataset, judge_model, optimization)
    test = sample_rows(splits.test, optimization.test_size, optimization.seed)

    def score(prompt: PromptVersion, which: str) -> float:  # the final report answered these: the cache has them
        answers = _predict(client, prompt, test, spec, f"promotion {which} {dataset}", split="test")
        return float(_score_answers(suite, judge_model, answers)[0].value)

    candidate_score = score(candidate, "candidate")
    current = stack[-1] if stack else None
    current_score = score(po.prompt_of(json.loads(current["document_json"])), "served") if current else None
    document = po.export_document(candidate, dataset=dataset, max_output_tokens=spec.max_output_tokens,
                                  stop=list(spec.completion_stop), task_model=client.model_key, mode=client.mode,
                                  source={"optimization": name, "generation": generation,
                                          "iteration": iteration_name(generation, int(report["iterations"]) - 1),
                                          "metric": suite.target,
                                          "test_score": candidate_score, "test_rows": len(test)})
    return {"optimization": name, "generation": generation, "iterations": int(report["iterations"]),
            "iteration": iteration_name(generation, int(report["iterations"]) - 1), "prompt_id": candidate.id,
            "prompt_version": candidate.version, "metric": suite.target,
            "candidate_score": candidate_score, "test_rows": len(test), "document_json": json.dumps(document),
            "current_prompt_id": current["prompt_id"] if current else None, "current_score": current_score,
            "score_problem": po.score_problem(suite.target, candidate_score, current_score,
                                              current["prompt_id"] if current else None, config.margin, len(test))}


@dg.asset(partitions_def=dataset_partitions, metadata=DATASET_EXPR, group_name=PROMOTION)
def promoted_prompt(context: dg.AssetExecutionContext, promotion_audit: pd.DataFrame,
                    project: ProjectResource) -> pd.DataFrame:
    """The prompt applications read: `<prompts dir>/promoted/<dataset>.json` (gcs deployment:
    `gs://BUCKET/PREFIX/promoted/<dataset>/current.json`), plus a copy per version beside it.

    Runs only after the audit's gates passed; what is served follows from the audit alone."""
    dataset = context.partition_key
    stack = po.served_stack(promotion_audit)
    last = promotion_audit.sort_values("event_id").iloc[-1]
    if last["verdict"] != po.APPROVED or not stack:
        raise dg.Failure(f"The last request for '{dataset}' was {last['verdict']}: {last['reason']}. Nothing changed.")
    served = stack[-1]
    document = json.loads(served["document_json"])
    document["promotion"] = {"event_id": int(last["event_id"]), "action": last["action"],
                             "by": last["requested_by"], "at": last["requested_at"], "note": last["note"]}
    current, versioned = po.serving_paths(project.promoted_dir(), dataset, int(served["prompt_version"]),
                                          served["prompt_id"])
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    write_text(versioned, text)
    write_text(current, text)  # atomic: a reader sees the old file or the new one, never half of one
    context.log.info(f"{dataset}: serving {served['prompt_id']} from {served['optimization']} at {current}")
    context.add_output_metadata({"path": dg.MetadataValue.path(current),
                                 "version_path": dg.MetadataValue.path(versioned),
                                 "prompt_id": served["prompt_id"], "optimization": served["optimization"],
                                 "test_score": dg.MetadataValue.float(float(served["candidate_score"])),
                                 "action": last["action"], "by": last["requested_by"],
                                 "prompt": prompt_md(po.prompt_of(document))})
    return pd.DataFrame([{"dataset": dataset, "event_id": int(last["event_id"]), "prompt_id": served["prompt_id"],
                          "optimization": served["optimization"], "path": str(current),
                          "version_path": str(versioned), "served_at": po.now()}])
