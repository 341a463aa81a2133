"""What assets attach to their materializations: gate results, prompt cards, model usage and spend.

Numbers are Dagster metadata values so the UI can plot them across partitions."""

import dataclasses

import dagster as dg

from promptopt_dagster.app.quality import GateResult
from promptopt_dagster.core.decisions import Spend
from promptopt_dagster.core.prompts import PromptVersion
from promptopt_dagster.llm import usage as llm_usage
from promptopt_dagster.llm.base import LLMClient
from promptopt_dagster.llm.usage import UsageByModel, UsageStats


def gate(
    check: str, result: GateResult, asset: str, severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR
) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=check,
        asset_key=asset,
        passed=result.passed,
        severity=severity,
        description=result.message,
        metadata={k: v for k, v in result.details.items()},
    )


def prompt_md(prompt: PromptVersion) -> dg.MetadataValue:
    demos = "\n".join(f"- `{d.user_input[:100]}` → **{d.ground_truth_output}**" for d in prompt.demos) or "(none)"
    return dg.MetadataValue.md(
        f"**v{prompt.version}** `{prompt.id}` (parent `{prompt.parent_id}`)\n\n"
        f"**System prompt**\n```\n{prompt.system_prompt}\n```\n"
        f"**Output prompt**\n```\n{prompt.output_prompt}\n```\n**Demos** ({prompt.describe()})\n"
        f"{demos}"
    )


def usage_since(clients: list[LLMClient], before: list[UsageStats]) -> UsageByModel:
    """What each client used since the snapshot, keyed by model (two roles on one model add up)."""
    return llm_usage.merge(*({c.model_key: c.usage.since(b)} for c, b in zip(clients, before)))


def snapshot(clients: list[LLMClient]) -> list[UsageStats]:
    return [dataclasses.replace(c.usage) for c in clients]


def rounded(value: float, digits: int = 4) -> dg.MetadataValue:
    """A score as float metadata the UI prints as a person reads it (0.2475, not 0.24749999999999872: the
    UI shows the float's full repr). NaN stays NaN."""
    value = float(value)
    return dg.MetadataValue.float(value if value != value else round(value, digits))


def used(by_model: UsageByModel) -> UsageByModel:
    """The models that did something: a resource's client that was built but never called (the embedded
    default judge under an OpenAI run, say) has an all-zero entry, which says nothing and misleads."""
    return {m: u for m, u in by_model.items() if any(u.to_dict().values())}


def usage_metadata(by_model: UsageByModel) -> dict:
    """This materialization's model use: numbers (plottable across partitions in the UI) plus the split by model
    (models that were not used are left out).

    A rerun served from the response cache shows 0 calls here and every row under cache_hits."""
    totals = llm_usage.total(by_model).to_dict()
    out: dict = {k: dg.MetadataValue.int(v) for k, v in totals.items() if k != "cost_usd"}
    out["cost_usd"] = dg.MetadataValue.float(totals["cost_usd"])
    out["usage_by_model"] = dg.MetadataValue.json({m: u.to_dict() for m, u in sorted(used(by_model).items())})
    return out


def optimization_metadata(spent: Spend) -> dict:
    """The whole optimization so far (every iteration as last materialized), beside this run's numbers."""
    return {
        "optimization_llm_calls": dg.MetadataValue.int(spent.llm_calls),
        "optimization_cache_hits": dg.MetadataValue.int(spent.cache_hits),
        "optimization_answers": dg.MetadataValue.int(spent.llm_calls + spent.cache_hits),
        "optimization_requests": dg.MetadataValue.int(spent.requests),
        "optimization_metric_calls": dg.MetadataValue.int(spent.metric_calls),
        "optimization_tokens": dg.MetadataValue.int(spent.tokens),
        "optimization_cost_usd": dg.MetadataValue.float(round(spent.cost_usd, 6)),
    }


def spend_of(by_model: UsageByModel) -> Spend:
    t = llm_usage.total(by_model)
    return Spend(
        requests=t.requests, tokens=t.tokens, cost_usd=t.cost_usd, llm_calls=t.llm_calls, cache_hits=t.cache_hits
    )
