"""What model calls cost: counts, tokens and an estimated price, per client and per model.

Usage is recorded where it happens (per row in prediction tables, per asset in metadata) and summed
upwards, so the report of an optimization can be checked against what the provider billed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml


@dataclass
class UsageStats:
    llm_calls: int = 0  # rows answered by the model (not the cache)
    requests: int = 0  # calls sent to the model, retries included: what a provider counts and bills
    cache_hits: int = 0
    errors: int = 0  # rows that ended in an error after every retry
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: UsageStats) -> UsageStats:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def since(self, before: UsageStats) -> UsageStats:
        """What was used after the snapshot `before` (take one with dataclasses.replace(usage))."""
        return UsageStats(**{f.name: getattr(self, f.name) - getattr(before, f.name) for f in dataclasses.fields(self)})

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["cost_usd"] = round(out["cost_usd"], 6)
        return out


#: Usage keyed by "backend/model", the unit a price and a rate limit apply to.
UsageByModel = dict[str, UsageStats]


def merge(*parts: Mapping[str, UsageStats]) -> UsageByModel:
    out: UsageByModel = {}
    for part in parts:
        for model, usage in part.items():
            out.setdefault(model, UsageStats()).add(usage)
    return out


def total(by_model: Mapping[str, UsageStats]) -> UsageStats:
    out = UsageStats()
    for usage in by_model.values():
        out.add(usage)
    return out


def to_json(by_model: Mapping[str, UsageStats]) -> str:
    return json.dumps({m: u.to_dict() for m, u in sorted(by_model.items())})


def from_json(text: str | None) -> UsageByModel:
    if not text:
        return {}
    return {m: UsageStats(**d) for m, d in json.loads(text).items()}


def from_rows(rows: Iterable[Mapping]) -> UsageByModel:
    """Usage of a prediction table: one record per row with model, cached, attempts, error, tokens, cost."""
    out: UsageByModel = {}
    for r in rows:
        u = out.setdefault(str(r["model"]), UsageStats())
        if r["cached"]:
            u.cache_hits += 1
            continue
        u.llm_calls += 1
        u.requests += int(r["attempts"])
        u.errors += r["error"] is not None and r["error"] == r["error"]  # NaN-safe: NaN != NaN
        u.prompt_tokens += int(r["prompt_tokens"])
        u.completion_tokens += int(r["completion_tokens"])
        u.cost_usd += float(r["cost_usd"])
    return out


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens; a model missing from the table costs 0 (and is flagged as unpriced)."""

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    known: bool = True

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6


PRICE_TABLE = Path(__file__).with_name("prices.yaml")


@lru_cache(maxsize=8)
def _table(path: str) -> dict:
    return yaml.safe_load(Path(path).read_text()) or {}


def price_for(
    backend: str,
    model: str,
    input_per_mtok: float | None = None,
    output_per_mtok: float | None = None,
    table: Path = PRICE_TABLE,
) -> Price:
    """Explicit prices win; then the packaged table by model name; local and fake models are free."""
    if input_per_mtok is not None or output_per_mtok is not None:
        return Price(input_per_mtok or 0.0, output_per_mtok or 0.0)
    if backend in ("local", "fake"):
        return Price()
    entry = _table(str(table)).get(model)
    if entry is None:
        return Price(known=False)
    return Price(float(entry["input"]), float(entry["output"]))
