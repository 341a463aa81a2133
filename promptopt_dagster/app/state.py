"""An optimization's state between iterations, explicit: what iteration N leaves to iteration N+1.

Iteration N+1 may run on another machine, in another process, days later: it must find everything
it continues from in one place, not in the previous run's local files. `IterationState` is that
place's unit, and `StateStore` the one interface that saves and loads it by (optimization,
generation, iteration). The Dagster layer provides the implementation (defs/state_store.py), which
is the only code that knows where and in which tables the state lives.

An iteration writes its state in two steps, because two assets make it: the search (refined_prompt)
leaves its candidate pool and the optimizer's own opaque state; the decision (best_prompt) leaves
the best prompt and the loop state (best score, patience streak, spend, stop reason). An iteration
is finished, and can be continued from, once the decision is saved.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Protocol

from promptopt_dagster.core.decisions import LoopState, Spend
from promptopt_dagster.core.prompts import Demo, PromptVersion
from promptopt_dagster.optimizers.pool import Candidate


def partition_name(generation: int, iteration: int) -> str:
    """The iteration dimension of a partition key, as the UI shows it: g<generation>-i<iteration>."""
    return f"g{generation}-i{iteration}"


@dataclass(frozen=True)
class IterationKey:
    optimization: str
    generation: int
    iteration: int

    @property
    def name(self) -> str:
        return partition_name(self.generation, self.iteration)

    def previous(self) -> IterationKey | None:
        """The iteration this one continues from; None for the first of its generation."""
        return None if self.iteration == 0 else IterationKey(self.optimization, self.generation, self.iteration - 1)

    def __str__(self) -> str:
        """The partition key as the Dagster UI shows and accepts it: the two dimensions in name order
        (iteration, optimization), joined by `|`."""
        return f"{self.name}|{self.optimization}"


@dataclass(frozen=True)
class Search:
    """What an iteration's search leaves: every candidate so far (in pool order, which parent draws
    follow) and the optimizer's own state (opaque bytes, e.g. GEPA's search archive), or None."""

    pool: list[Candidate] = field(default_factory=list)
    optimizer_state: bytes | None = None


@dataclass(frozen=True)
class Outcome:
    """What an iteration's decision leaves: the prompt to beat next and the loop state."""

    best_prompt: PromptVersion
    loop: LoopState
    stop_reason: str | None = None


@dataclass(frozen=True)
class IterationState:
    key: IterationKey
    continued_from: IterationKey | None
    search: Search | None = None  # None until the search has run
    outcome: Outcome | None = None  # None until the decision is made

    @property
    def finished(self) -> bool:
        return self.outcome is not None


class StateStore(Protocol):
    """Saves and loads IterationState. Each save replaces its part of the key's state (a rerun of an
    iteration overwrites what its earlier attempt left) in one transaction."""

    def save_search(self, key: IterationKey, search: Search) -> list[Candidate]:
        """Save the search; its candidates are stored as `stored_form` stores a prompt, and returned so."""
        ...

    def save_outcome(self, key: IterationKey, outcome: Outcome) -> None: ...

    def load(self, key: IterationKey, demo_pool: list[Demo] | None = None) -> IterationState | None:
        """The key's state, None when nothing was saved for it, its candidates usable (each with the retrieval
        pool it was stored with). `demo_pool`: the train rows retrieved demos are drawn from, which most
        candidates retrieve from (read from the caller, not the store) and which candidates saved before
        pools were stored apart get back."""
        ...

    def stored_form(self, prompt: PromptVersion) -> PromptVersion:
        """The prompt as it is stored: a retrieval pool kept once in the store, a `PoolRef` in its place. Saving
        an outcome does this itself; a Dagster asset that stores a prompt does it before writing it."""
        ...

    def with_pool(self, prompt: PromptVersion) -> PromptVersion:
        """A stored prompt with the pool its `PoolRef` names attached: what answering with it needs."""
        ...


class NotContinuable(Exception):
    """The iteration a run continues from has not finished: its message says what to run first."""


def continue_from(store: StateStore, key: IterationKey, demo_pool: list[Demo] | None = None) -> IterationState | None:
    """The finished state `key` continues from; None for a first iteration. Raises NotContinuable
    when the previous iteration has not finished."""
    previous = key.previous()
    if previous is None:
        return None
    state = store.load(previous, demo_pool)
    if state is None or not state.finished:
        raise NotContinuable(
            f"Iteration {previous.name} of optimization '{key.optimization}' has not finished (no decision "
            f"saved), so iteration {key.name} has nothing to start from. Materialize partition {previous} "
            "first (the iteration sensor and `promptopt optimize` run them in order)."
        )
    return state


def loop_before(state: IterationState | None) -> LoopState:
    """The loop state an iteration starts with: the previous outcome's, or a fresh one."""
    return state.outcome.loop if state and state.outcome else LoopState()


# --- the stored form: JSON for what people may read, bytes for the optimizer's own state ----------


def outcome_to_json(outcome: Outcome) -> str:
    loop = outcome.loop
    return json.dumps(
        {
            "best_prompt": json.loads(outcome.best_prompt.to_json()),
            "best_score": loop.best_score,
            "iterations_without_improvement": loop.iterations_without_improvement,
            "spent": json.loads(loop.spent.to_json()),
            "stop_reason": outcome.stop_reason,
        }
    )


def outcome_from_json(text: str) -> Outcome:
    data = json.loads(text)
    loop = LoopState(
        best_score=data["best_score"],
        iterations_without_improvement=int(data["iterations_without_improvement"]),
        spent=Spend.from_json(json.dumps(data["spent"])),
    )
    return Outcome(PromptVersion.model_validate(data["best_prompt"]), loop, data["stop_reason"])


def pool_to_json(pool: list[Candidate]) -> str:
    return json.dumps([c.to_record() for c in pool])


def pool_from_json(text: str, demo_pool: list[Demo] | None = None) -> list[Candidate]:
    return [Candidate.from_record(record, demo_pool) for record in json.loads(text)]
