"""Label-constrained answers on llama.cpp: rank the labels by likelihood instead of generating text.

A small base model asked to classify often answers a word outside the label set, or a label with the
wrong case; scoring only the label continuations makes every answer a label and costs one prompt
evaluation per row (plus one short evaluation for each point where two labels share a prefix of
tokens, e.g. `flight` and `flight_time`), which is less than generating the answer.

A label's score is the sum of its tokens' log-probabilities after the prompt and the separator the
demos use (" "). Where one label's tokens are a prefix of another's, the shorter one also pays for
ending there, measured as the probability of a newline (the demos end every answer with one);
otherwise the longer label could never lose to it.

Each short evaluation costs about a generated token, most of it the output layer over Gemma's 262k-token
vocabulary, so a label set that parts ways at many points pays for each: hwu64's 64 `scenario_intent`
labels part at 19 (after the first token, again after `alarm_`, `iot_hue_light`, ...). Unless every
label's score is wanted (summed over demo sets, or calibrated), the ranking visits the points best
first and stops when no unscored label can still win, 2 to 3 points a row on hwu64 instead of 19, with
the same choice (bench/local_inference.py --many-labels measures it).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

SEPARATOR = " "  # what PromptVersion.render_completion puts between a demo's input and its answer


@dataclass
class Ranked:
    choice: str
    prompt_tokens: int
    evaluations: int  # model evaluations it took (1 when the labels' first tokens differ)
    scores: dict[str, float]
    label_tokens: int = 0  # tokens evaluated past the prompt, over all its evaluations


#: Label totals closer than this are equal (log-probabilities; the noise below is about 1e-16).
TIE = 1e-9


def first_best(totals: Sequence[float] | np.ndarray) -> int:
    """The index of the highest total, the first of those within TIE of it.

    Totals that are equal in exact arithmetic (a calibrated row that adds nothing to its content-free lean,
    two voting labels with the same score) can differ in their last bits with the CPU's vector code: numpy's
    exp and log round differently under AVX2 and AVX-512. A tie must go to the first label on every machine,
    so that an answer rebuilt from cached label scores is the same wherever it is rebuilt."""
    values = np.asarray(totals, dtype=np.float64)
    top = values.max()
    if not np.isfinite(top):  # -inf everywhere, or a NaN: what argmax gives
        return int(np.argmax(values))
    return int(np.flatnonzero(values >= top - TIE)[0])


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    top = float(logits.max())
    return logits - (top + np.log(np.exp(logits - top).sum()))


@dataclass
class _Read:
    """What one loaded model read while ranking its last prompt: log-probabilities after each token sequence."""

    head: list[int] | None = None
    logprobs: dict[tuple[int, ...], np.ndarray] = field(default_factory=dict)


#: Per loaded model (weakly: a model let go takes its entry with it).
_READ: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class LabelRanker:
    """Works on one loaded `llama_cpp.Llama`; the caller holds the model's lock.

    The same prompt ranked again (the same row asked for every label's score after a ranking that stopped
    early, or answered again by another demo set of an ensemble) reads the log-probabilities it read the first
    time instead of evaluating its last token again: the same request then gets the same scores. Evaluated
    again, the last token alone is a batch of another shape than the whole prompt was, and llama.cpp's sums
    round differently for different shapes; on an AVX2 machine (no AVX-512) that moved a label's score by 0.1."""

    def __init__(self, llm) -> None:
        self.llm = llm
        self._read = _READ.setdefault(llm, _Read())
        self._newlines = sorted(
            {t for text in ("\n", "\n\n") for t in llm.tokenize(text.encode(), add_bos=False, special=False)[:1]}
        )

    def _tokens(self, text: str, bos: bool = True) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=bos, special=False)

    def _eval_to(self, tokens: list[int]) -> np.ndarray:
        """Log-probabilities of the next token after `tokens`, reusing the KV cache for the shared prefix (and
        what was read after these very tokens while ranking this prompt, see the class)."""
        from llama_cpp import Llama  # start-up: the native llama.cpp library, loaded only with a local model

        key = tuple(tokens)
        if key in self._read.logprobs:
            return self._read.logprobs[key]
        llm = self.llm
        keep = min(Llama.longest_token_prefix(llm.input_ids[: llm.n_tokens].tolist(), tokens), len(tokens) - 1)
        if keep <= 0 or not llm._ctx.kv_cache_seq_rm(-1, keep, -1):
            keep = 0
        llm.n_tokens = keep
        llm.eval(tokens[keep:])
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
        self._read.logprobs[key] = logprobs = _log_softmax(logits.astype(np.float64))
        return logprobs

    def _eval_node(self, head: list[int], node: tuple) -> np.ndarray:
        """Log-probabilities after `head` + `node`, always evaluated from the end of `head`.

        A node's logits then depend on the prompt and the node alone, not on which node came before:
        llama.cpp's sums round differently for different batch shapes, so reusing a sibling's tokens
        would make a label's score depend on the order nodes are visited, and pruned ranking (which
        visits fewer, in another order) could disagree with the complete one."""
        llm = self.llm
        if len(node) and llm.n_tokens > len(head) and llm._ctx.kv_cache_seq_rm(-1, len(head), -1):
            llm.n_tokens = len(head)  # drop the previous node's tokens; the prompt's stay cached
        return self._eval_to(head + list(node))

    def rank(self, prompt: str, choices: Sequence[str], complete: bool = True) -> Ranked:
        """The most likely label; with `complete`, every label's score, else only as many as it takes.

        Each evaluation past the prompt costs about as much as a token of generation, mostly the output
        layer over Gemma's 262k-token vocabulary, so 64 labels that part ways at 19 points cost 19 of
        them per row. A label's score only falls as its tokens are added (log-probabilities are <= 0),
        so the score so far bounds every label below a node: without `complete`, nodes are visited
        best bound first and the search stops when no unscored label's bound reaches the best complete
        score. The choice is the complete ranking's (same node logits, same tie rule: the earlier
        label); `scores` then holds only the labels scored to the end."""
        base = self._tokens(prompt)
        full = {c: self._tokens(prompt + SEPARATOR + c) for c in choices}
        # Usually the prompt's tokens are a prefix of every labelled text; if a label merged with the
        # prompt's last token, the shared context stops before it.
        from llama_cpp import Llama  # start-up: the native llama.cpp library, loaded only with a local model

        context = min([len(base), *(Llama.longest_token_prefix(base, f) for f in full.values())])
        context = max(context, 1)
        tails = {c: tuple(f[context:]) for c, f in full.items()}

        # Logits are needed only where labels part ways: below a node with one way on, every label
        # shares that token's probability, so it cannot change the ranking.
        def ways(node: tuple) -> set:
            nexts = {t[len(node)] for t in tails.values() if len(t) > len(node) and t[: len(node)] == node}
            return nexts | ({"end"} if node in tails.values() else set())

        nodes = {t[:i] for t in tails.values() for i in range(len(t) + 1)}
        needed = {()} | {node for node in nodes if len(ways(node)) > 1}
        # Each label's needed points, root first: the nodes whose logits its score reads.
        points = {c: [t[:i] for i in range(len(t) + 1) if t[:i] in needed] for c, t in tails.items()}
        logprobs: dict[tuple, np.ndarray] = {}
        head = list(full[choices[0]][:context])
        if self._read.head != head:  # another prompt: what was read for the last one is of no use
            self._read.head, self._read.logprobs = head, {}

        def score(choice: str) -> float:
            """The label's score from the nodes evaluated so far: exact once all its points are."""
            tail, total = tails[choice], 0.0
            for node in points[choice]:
                if node not in logprobs:
                    break
                total += float(logprobs[node][tail[len(node)]] if len(node) < len(tail) else 0.0)
                if node == tail:  # a shorter label inside a longer one pays for stopping here
                    total += float(np.logaddexp.reduce(logprobs[tail][self._newlines]))
            return total

        if complete:
            for node in sorted(needed, key=len):
                logprobs[node] = self._eval_node(head, node)
        else:
            order = {c: i for i, c in enumerate(choices)}
            while True:
                pending = [c for c in choices if any(p not in logprobs for p in points[c])]
                done = [c for c in choices if c not in pending]
                best = max(done, key=lambda c: (score(c), -order[c])) if done else None
                bounds = {c: score(c) for c in pending}
                # expand the pending label that could still win, best bound first (earlier label on ties)
                hopeful = [c for c in pending if best is None or (bounds[c], -order[c]) > (score(best), -order[best])]
                if not hopeful:
                    break
                top = max(hopeful, key=lambda c: (bounds[c], -order[c]))
                node = next(p for p in points[top] if p not in logprobs)
                logprobs[node] = self._eval_node(head, node)
        scores = {c: score(c) for c in choices if all(p in logprobs for p in points[c])}
        best = max(scores, key=lambda c: (scores[c], -choices.index(c)))
        return Ranked(best, len(base), len(logprobs), scores, sum(len(node) for node in logprobs))
