"""Prompt versions: the unit the optimizer proposes and the platform accepts or rejects.

A version is immutable once created; a refinement is a new version whose parent_id points back,
so the lineage of the best prompt can be walked from the stored records alone.
"""

from __future__ import annotations

import difflib
import json
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from promptopt_dagster.core.errors import PromptError
from promptopt_dagster.core.retrieval import retriever_for_pool, texts_digest
from promptopt_dagster.core.storage import read_text, write_text

PLACEHOLDER = "{user_input}"
#: A vote's pseudo-count per label: a label none of the k retrieved rows carries still gets this much of a row.
VOTE_SMOOTHING = 0.1
#: Inputs that carry no content, for contextual calibration (the choice of Zhao et al., 2021).
CONTENT_FREE_INPUTS = ("N/A", "[MASK]", "")
# `{name}` where name is an identifier: anything else in braces (JSON examples) is literal text.
_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Demo(BaseModel):
    user_input: str
    ground_truth_output: str


def shorten(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters at a word boundary, marked with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip() + "…"


#: The shortest a retrieved demo is cut to (`Retrieval.max_chars`): shorter keeps too little of a row to show.
MIN_CUT_CHARS = 20


#: Pool ids computed in this process, by the pool list's identity (each entry keeps its list alive, so the id
#: cannot be reused by another list while cached).
_POOL_IDS: dict[int, tuple[list[Demo], str]] = {}


def pool_id(demos: list[Demo]) -> str:
    """A pool's content id: the digest of its rows' inputs and answers. Equal pools get equal ids, so a pool
    used by many versions is stored once.

    Remembered by the list's identity: a search's candidates share one pool list (`child()` passes the
    retrieval on as it is), and saving them all would otherwise hash 120,000 rows per candidate (80 ms
    each). Pools are never changed in place: a version with other rows gets another list."""
    hit = _POOL_IDS.get(id(demos))
    if hit is not None and hit[0] is demos:
        return hit[1]
    digest = texts_digest(text for demo in demos for text in (demo.user_input, demo.ground_truth_output))
    if len(_POOL_IDS) >= 16:  # a process sees a few pools; a long-lived one must not keep them all alive
        _POOL_IDS.pop(next(iter(_POOL_IDS)))
    _POOL_IDS[id(demos)] = (demos, digest)
    return digest


class PoolRef(BaseModel):
    """A retrieval pool stored apart from the version that uses it: its content id and size.

    Every version an optimization stores (baseline, refined and best of each iteration, the loop state,
    the report) retrieves from the same pool; on a 120,000-row news set that pool is ~60 MB of JSON,
    which each stored version used to carry. Stored versions hold this reference instead and the state
    store holds the pool once (defs/state_store.py); a version loaded from storage gets its pool back
    before it is used. Exported and promoted prompts carry the pool itself: applications read them alone."""

    model_config = ConfigDict(extra="forbid")

    id: str
    size: int = Field(ge=0)


class Retrieval(BaseModel):
    """Demos chosen per input: the k pool rows most similar to it, rendered after the static demos with
    the most similar last (nearest the input). The pool travels with an exported version, so it retrieves
    exactly what was measured; inside the platform a stored version refers to it (`PoolRef`)."""

    k: int = Field(ge=1)
    method: str = "tfidf"  # a name known to core.retrieval
    pool: list[Demo] | PoolRef
    # One demo per label: the nearest row of each of the k labels whose nearest row is closest. With many
    # labels the k nearest rows often share two or three labels, and a small model copies the label its
    # demos show most; covering more labels lets the right one appear at all.
    per_label: bool = False
    # Long rows as demos cost context on every row: a retrieved news paragraph is a few hundred tokens,
    # and k of them per row made inference several times slower. Cut to this many characters (at a word
    # boundary), a demo keeps what usually carries its label (a headline, a lead sentence).
    max_chars: int | None = Field(None, ge=MIN_CUT_CHARS)
    # The retrieved rows' labels as a vote beside the model's label scores (0: no vote). A label answer is then
    # the label with the highest log-probability (normalized over the labels) plus `vote` times the log of its
    # smoothed share of the k rows. A small model shown its neighbours can do worse than their majority: on
    # hwu64 (64 intents) the 8 nearest rows' majority scored 0.765 macro F1 on test where the model shown 16
    # of them scored 0.730. Needs label scores (llama.cpp); other backends answer without the vote.
    vote: float = Field(0.0, ge=0)
    # How many nearest rows vote (None: the k shown). The vote costs no model time, so more rows can vote than
    # are shown: on long inputs each shown demo costs a few hundred tokens on every row, a voting row nothing.
    voters: int | None = Field(None, ge=1)

    def pick(self, user_input: str) -> list[Demo]:
        demos = self._nearest(user_input)
        if self.max_chars is None:
            return demos
        return [
            d
            if len(d.user_input) <= self.max_chars
            else d.model_copy(update={"user_input": shorten(d.user_input, self.max_chars)})
            for d in demos
        ]

    @property
    def panel(self) -> int:
        """How many nearest rows vote: `voters`, or the k shown when unset."""
        return self.voters or self.k

    @property
    def size(self) -> int:
        """The pool's row count, attached or not."""
        return self.pool.size if isinstance(self.pool, PoolRef) else len(self.pool)

    @property
    def rows(self) -> list[Demo]:
        """The pool's demos. A version whose pool is a reference was loaded from storage without it: using
        it must fail loudly, not retrieve nothing."""
        if isinstance(self.pool, PoolRef):
            raise PromptError(
                f"this prompt's retrieval pool ({self.pool.size} rows, id {self.pool.id[:12]}) is stored apart "
                "and was not attached: load the prompt through the state store, or use an exported prompt file "
                "(`promptopt render`), which carries its pool"
            )
        return self.pool

    def voting_labels(self, user_input: str) -> list[str]:
        """The labels of the `panel` nearest rows: the rows that vote for this input."""
        pool = self.rows
        if not pool:
            return []
        return [pool[i].ground_truth_output for i in retriever_for_pool(self.method, pool).top(user_input, self.panel)]

    def _nearest(self, user_input: str) -> list[Demo]:
        pool = self.rows
        if not pool:
            return []
        retriever = retriever_for_pool(self.method, pool)
        if not self.per_label:
            nearest = retriever.top(user_input, self.k)
        else:
            nearest, seen = [], set()
            # the ranked pool is searched far enough to find k labels in all but pathological pools
            for i in retriever.top(user_input, min(len(pool), max(256, 32 * self.k))):
                label = pool[i].ground_truth_output
                if label not in seen:
                    seen.add(label)
                    nearest.append(i)
                    if len(nearest) == self.k:
                        break
        return [pool[i] for i in reversed(nearest)]


class PromptVersion(BaseModel):
    system_prompt: str
    output_prompt: str
    demos: list[Demo] = Field(default_factory=list)  # static: the same for every input, rendered first
    retrieval: Retrieval | None = None
    # "label": the answer is restricted to one of `labels` (the backend ranks or constrains); "free": any text.
    answer: Literal["free", "label"] = "free"
    labels: list[str] = Field(default_factory=list)
    # Contextual calibration of label answers (Zhao et al., 2021): each label's probability is divided by
    # the one it gets when the input is content-free, which removes the bias a demo set puts on one
    # label. Needs label scores, so only backends that rank labels (llama.cpp) apply it.
    calibrate: bool = False
    # Further static demo sets: with label answers, each label's log-probability (normalized over the
    # labels) is summed over the prompt rendered with `demos` and with each of these. Which train rows
    # a set holds moves a small model's test score by several points; a sum over sets averages that
    # out. Needs label scores (llama.cpp); other backends answer with `demos` alone, with a warning.
    ensemble: list[list[Demo]] = Field(default_factory=list)
    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    parent_id: str | None = None
    version: int = 0
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    def child(self, **changes: Any) -> PromptVersion:
        """A new version derived from this one; id, parent and version are set here, never by callers.

        The retrieval settings pass as the model they are, not dumped and validated again: their pool can be
        120,000 rows (0.3 s a child, `bench/adhoc/prompt_child.py`). Versions are never changed in place, so
        parent and child may share it."""
        fields = self.model_dump(exclude={"id", "parent_id", "version", "created_at", "metadata", "retrieval"})
        fields["retrieval"] = self.retrieval
        fields.update(changes)
        fields.setdefault("metadata", {})
        return PromptVersion(parent_id=self.id, version=self.version + 1, **fields)

    def content_equals(self, other: PromptVersion) -> bool:
        return (
            self.system_prompt == other.system_prompt
            and self.output_prompt == other.output_prompt
            and self.demos == other.demos
            and self.retrieval == other.retrieval
            and self.answer == other.answer
            and self.labels == other.labels
            and self.calibrate == other.calibrate
            and self.ensemble == other.ensemble
        )

    def demos_for(self, user_input: str) -> list[Demo]:
        """The demos this input is shown: the static ones, then those retrieved for it."""
        return self.demos + (self.retrieval.pick(user_input) if self.retrieval else [])

    @property
    def choices(self) -> tuple[str, ...]:
        """The answers a constrained prompt allows, sent with each request; () for free answers."""
        return tuple(self.labels) if self.answer == "label" else ()

    def describe(self) -> str:
        """One line of the search choices, for logs and tables."""
        parts = [f"{len(self.demos)} static demos" + (f" x {1 + len(self.ensemble)} sets" if self.ensembled else "")]
        if self.retrieval:
            cover = ", one per label" if self.retrieval.per_label else ""
            cover += f", cut to {self.retrieval.max_chars} chars" if self.retrieval.max_chars else ""
            voters = f" of {self.retrieval.panel}" if self.retrieval.panel != self.retrieval.k else ""
            cover += f", vote {self.retrieval.vote:g}{voters}" if self.voted else ""
            # a stored candidate's pool is its size only (optimizers/pool.py): no "pool 0" for a pool not re-attached
            pool = f", pool {self.retrieval.size}" if self.retrieval.size else ""
            parts.append(f"{self.retrieval.k} retrieved ({self.retrieval.method}{cover}{pool})")
        parts.append("label answers" if self.answer == "label" else "free answers")
        if self.calibrated:
            parts.append("calibrated")
        return ", ".join(parts)

    @property
    def ensembled(self) -> bool:
        """Whether answers are summed over several demo sets: only label answers can be."""
        return bool(self.ensemble) and self.answer == "label" and bool(self.labels)

    def ensemble_members(self) -> list[PromptVersion]:
        """One plain prompt per demo set (this one's first), each answered on its own; [] when not ensembled.

        Members are the prompts that were raced, so their answers (and label scores) come from the cache."""
        if not self.ensembled:
            return []
        return [self.model_copy(update={"demos": demos, "ensemble": []}) for demos in [self.demos, *self.ensemble]]

    @property
    def voted(self) -> bool:
        """Whether the retrieved rows' labels weigh in on the answer: label answers on nearest rows only (one row
        per label would give every label the same vote), not summed over sets or calibrated."""
        return (
            self.retrieval is not None
            and self.retrieval.vote > 0
            and not self.retrieval.per_label
            and self.answer == "label"
            and bool(self.labels)
            and not self.ensembled
            and not self.calibrated
        )

    def vote_shares(self, user_input: str) -> dict[str, float]:
        """Each label's share of the rows retrieved for this input, smoothed (VOTE_SMOOTHING rows per label) so a
        label none of them carries keeps a small share and the model's scores can still choose it."""
        counts = {label: VOTE_SMOOTHING for label in self.labels}
        for label in self.retrieval.voting_labels(user_input):
            if label in counts:
                counts[label] += 1
        total = sum(counts.values())
        return {label: n / total for label, n in counts.items()}

    @property
    def calibrated(self) -> bool:
        """Whether answers are calibrated: only label answers can be."""
        return self.calibrate and self.answer == "label" and bool(self.labels)

    # --- rendering -------------------------------------------------------------------------
    # The shared part (instruction, demos) comes first and the row's input last: llama.cpp reuses
    # the KV cache for the common prefix, so a dataset pass only pays for each row's tail.

    def render_completion(self, user_input: str) -> str:
        return self._render(self.demos_for(user_input), user_input)

    def calibration_prompts(self, user_input: str) -> tuple[str, ...]:
        """The prompts this row's label scores are calibrated against: its own demos, a content-free input.

        Several content-free inputs, averaged, so no one string's own lean decides; () when not calibrated."""
        if not self.calibrated:
            return ()
        demos = self.demos_for(user_input)
        return tuple(self._render(demos, text) for text in CONTENT_FREE_INPUTS)

    def _render(self, demos: list[Demo], user_input: str) -> str:
        parts = [self.system_prompt.strip()] if self.system_prompt.strip() else []
        for demo in demos:
            parts.append(fill(self.output_prompt, demo.user_input) + " " + demo.ground_truth_output)
        parts.append(fill(self.output_prompt, user_input))
        return "\n\n".join(parts)

    def render_chat(self, user_input: str) -> list[dict[str, str]]:
        messages = []
        if self.system_prompt.strip():
            messages.append({"role": "system", "content": self.system_prompt.strip()})
        for demo in self.demos_for(user_input):
            messages.append({"role": "user", "content": fill(self.output_prompt, demo.user_input)})
            messages.append({"role": "assistant", "content": demo.ground_truth_output})
        messages.append({"role": "user", "content": fill(self.output_prompt, user_input)})
        return messages

    # --- persistence -----------------------------------------------------------------------

    def without_pool(self) -> tuple[PromptVersion, list[Demo] | None]:
        """This version with its retrieval pool replaced by a `PoolRef`, and the pool itself for the store to
        keep once; (self, None) when there is no attached pool to take out."""
        if not self.carries_pool:
            return self, None
        r = self.retrieval
        ref = PoolRef(id=pool_id(r.pool), size=len(r.pool))
        return self.model_copy(update={"retrieval": r.model_copy(update={"pool": ref})}), r.pool

    @property
    def carries_pool(self) -> bool:
        """Whether the version holds retrieval rows itself (not a reference, not an empty pool)."""
        r = self.retrieval
        return r is not None and not isinstance(r.pool, PoolRef) and bool(r.pool)

    @property
    def pool_ref(self) -> PoolRef | None:
        """The reference to attach a pool for; None when the version has none stored apart."""
        r = self.retrieval
        return r.pool if r is not None and isinstance(r.pool, PoolRef) else None

    def with_pool(self, demos: list[Demo]) -> PromptVersion:
        """This version with the pool its `PoolRef` names attached (the caller found it by the ref's id)."""
        ref = self.pool_ref
        if ref is None:
            return self
        if len(demos) != ref.size:
            raise PromptError(f"retrieval pool {ref.id[:12]} has {len(demos)} rows where the prompt expects {ref.size}")
        return self.model_copy(update={"retrieval": self.retrieval.model_copy(update={"pool": demos})})

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    def save(self, uri: str | Path) -> None:
        write_text(uri, self.to_json())

    @classmethod
    def load(cls, uri: str | Path) -> PromptVersion:
        """Load a saved version or a seed file (only system_prompt and output_prompt required)."""
        try:
            raw = json.loads(read_text(uri))
        except FileNotFoundError:
            raise PromptError(
                f"Prompt file {uri} does not exist. Create it with the keys "
                f'"system_prompt" and "output_prompt" (containing {PLACEHOLDER}).'
            ) from None
        except json.JSONDecodeError as exc:
            raise PromptError(
                f"Prompt file {uri} is not valid JSON ({exc}). Fix the JSON syntax; "
                f'it needs the keys "system_prompt" and "output_prompt".'
            ) from None
        try:
            prompt = cls.model_validate(raw)
        except ValidationError as exc:
            fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors())
            raise PromptError(
                f"Prompt file {uri} has missing or invalid fields: {fields}. It needs "
                f'string values for "system_prompt" and "output_prompt".'
            ) from None
        problem = prompt_problem(prompt.system_prompt, prompt.output_prompt)
        if problem:
            raise PromptError(f"Prompt file {uri}: {problem}")
        return prompt


def fill(template: str, user_input: str) -> str:
    """Substitute the row's input without str.format, so braces in the input or prompt stay literal."""
    return template.replace(PLACEHOLDER, user_input)


def placeholder_problem(output_prompt: str) -> str | None:
    """Why this output prompt cannot be used, or None. Shared by loading, the optimizer and the gate."""
    if not output_prompt.strip():
        return f"output_prompt is empty. Write the template for one row, containing {PLACEHOLDER}."
    count = output_prompt.count(PLACEHOLDER)
    if count != 1:
        return (
            f"output_prompt must contain the placeholder {PLACEHOLDER} exactly once (found {count}). "
            f'Put {PLACEHOLDER} where the row\'s input goes, e.g. "Review: {PLACEHOLDER}\\nSentiment:".'
        )
    unknown = sorted({m for m in _PLACEHOLDER_RE.findall(output_prompt) if m != "user_input"})
    if unknown:
        names = ", ".join("{" + u + "}" for u in unknown)
        return f"output_prompt has unknown placeholders {names}; only {PLACEHOLDER} is filled in. Remove them."
    return None


def system_prompt_problem(system_prompt: str) -> str | None:
    """Why this system prompt cannot be used, or None.

    The system prompt is sent as written, so a `{name}` in it would reach the model as literal text
    and the row's input would never be seen there. Braces around anything else (JSON) are fine.
    """
    found = sorted(set(_PLACEHOLDER_RE.findall(system_prompt)))
    if not found:
        return None
    names = ", ".join("{" + f + "}" for f in found)
    other = next((f for f in found if f != "user_input"), None)
    literal = f" To mean literal text, write e.g. <{other}> instead of {{{other}}}." if other else ""
    return (
        f"system_prompt contains the placeholder(s) {names}, but it is sent to the model as written: the "
        f"row's input is only filled in at {PLACEHOLDER} in output_prompt. Remove them from system_prompt "
        f"(and put {PLACEHOLDER} in output_prompt if it is not there yet).{literal}"
    )


def prompt_problem(system_prompt: str, output_prompt: str) -> str | None:
    """Why this prompt cannot be used, or None: one check for loading, the optimizer and the gate, so
    a prompt one of them refuses is refused by all."""
    return placeholder_problem(output_prompt) or system_prompt_problem(system_prompt)


def _vote_text(p: PromptVersion) -> str:
    if not p.voted:
        return ""
    return f", the labels of the {p.retrieval.panel} nearest rows voting x{p.retrieval.vote:g}"


def unified_diff(old: PromptVersion, new: PromptVersion) -> str:
    """A line diff of everything the model sees, for the UI's fenced diff block."""

    def lines(p: PromptVersion) -> list[str]:
        out = ["[system_prompt]", *p.system_prompt.splitlines(), "[output_prompt]", *p.output_prompt.splitlines()]
        out.append(f"[demos: {len(p.demos)}]")
        out += [f"- {d.user_input!r} -> {d.ground_truth_output}" for d in p.demos]
        for n, demos in enumerate(p.ensemble, start=2):
            out.append(f"[demo set {n}: {len(demos)}]")
            out += [f"- {d.user_input!r} -> {d.ground_truth_output}" for d in demos]
        if p.retrieval:
            out.append(
                f"[retrieved demos: {p.retrieval.k} nearest of {p.retrieval.size} pool rows "
                f"({p.retrieval.method}{_vote_text(p)})]"
            )
        out.append(
            f"[answer: {'one of ' + ', '.join(p.labels) if p.answer == 'label' else 'free text'}"
            f"{', calibrated' if p.calibrated else ''}]"
        )
        return out

    return "\n".join(difflib.unified_diff(lines(old), lines(new), f"v{old.version}", f"v{new.version}", lineterm=""))
