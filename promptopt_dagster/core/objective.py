"""What an optimization values when its candidates differ in cost as well as in score.

Prompts differ a lot in what every future row costs: retrieved demos are rendered anew for each
row, a static set sits in a prefix the server caches, an ensemble answers each row several times.
Which trade is right is the user's call, not the optimizer's: a batch job may pay for the last
point, an online classifier may not. So the choice is stated in the user's terms (prompt tokens or
seconds per row, points of score) and the optimizer applies it; the reports show the frontier of
score against cost, so the user sees what a cheaper prompt would cost in points before choosing.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True)
class RowCost:
    """What a prompt costs per row, measured on the rows it was scored on (the select rows)."""

    prompt_tokens: float  # mean prompt tokens sent per row, every member of an ensemble counted
    seconds: float | None  # mean seconds the model took per row when each answer was made; None: not measured


class Objective(BaseModel):
    """optimizations.yaml's `objective:`. Empty (the default): the best score (for fewshot: the winner of
    its race on the spare rows)."""

    model_config = ConfigDict(extra="forbid")

    max_tokens_per_row: int | None = Field(
        None,
        ge=1,
        description="never propose a prompt that sends more prompt tokens per row than this (mean on the select "
        "rows; none: no ceiling)",
    )
    max_seconds_per_row: float | None = Field(
        None,
        gt=0,
        description="never propose a prompt whose answers took longer than this per row (mean on the select "
        "rows, as measured when each answer was made; none: no ceiling)",
    )
    within_points: float | None = Field(
        None,
        ge=0,
        le=1,
        description="propose the prompt with the fewest tokens per row among those within this much of the best "
        "select score (0.02: two points of accuracy); none: the best score",
    )

    @property
    def stated(self) -> bool:
        """Whether the user said anything: an empty objective leaves the choice to the optimizer's rule."""
        return any(v is not None for v in self.model_dump().values())

    def allows(self, cost: RowCost | None) -> bool:
        """Within the ceilings. A prompt whose cost was never measured is allowed only without ceilings."""
        if self.max_tokens_per_row is None and self.max_seconds_per_row is None:
            return True
        if cost is None:
            return False
        if self.max_tokens_per_row is not None and cost.prompt_tokens > self.max_tokens_per_row:
            return False
        if self.max_seconds_per_row is not None and (cost.seconds is None or cost.seconds > self.max_seconds_per_row):
            return False
        return True

    def describe(self) -> str:
        parts = []
        if self.max_tokens_per_row is not None:
            parts.append(f"at most {self.max_tokens_per_row} prompt tokens per row")
        if self.max_seconds_per_row is not None:
            parts.append(f"at most {self.max_seconds_per_row:g} s per row")
        parts.append(
            "the best score"
            if self.within_points is None
            else f"the fewest tokens within {self.within_points:g} of the best score"
        )
        return ", ".join(parts)
