"""Label-constrained answers on llama.cpp: rank the labels by likelihood instead of generating text.

A small base model asked to classify often answers a word outside the label set, or a label with the
wrong case; scoring only the label continuations makes every answer a label and costs one prompt
evaluation per row (plus one short evaluation for each point where two labels share a prefix of
tokens, e.g. `flight` and `flight_time`), which is less than generating the answer.

A label's score is the sum of its tokens' log-probabilities after the prompt and the separator the
demos use (" "). Where one label's tokens are a prefix of another's, the shorter one also pays for
ending there, measured as the probability of a newline (the demos end every answer with one);
otherwise the longer label could never lose to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SEPARATOR = " "  # what PromptVersion.render_completion puts between a demo's input and its answer


@dataclass
class Ranked:
    choice: str
    prompt_tokens: int
    evaluations: int  # model evaluations it took (1 when the labels' first tokens differ)
    scores: dict[str, float]


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    top = float(logits.max())
    return logits - (top + np.log(np.exp(logits - top).sum()))


class LabelRanker:
    """Works on one loaded `llama_cpp.Llama`; the caller holds the model's lock."""

    def __init__(self, llm) -> None:
        self.llm = llm
        self._newlines = sorted(
            {t for text in ("\n", "\n\n") for t in llm.tokenize(text.encode(), add_bos=False, special=False)[:1]}
        )

    def _tokens(self, text: str, bos: bool = True) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=bos, special=False)

    def _eval_to(self, tokens: list[int]) -> np.ndarray:
        """Log-probabilities of the next token after `tokens`, reusing the KV cache for the shared prefix."""
        from llama_cpp import Llama  # start-up: the native llama.cpp library, loaded only with a local model

        llm = self.llm
        keep = min(Llama.longest_token_prefix(llm.input_ids[: llm.n_tokens].tolist(), tokens), len(tokens) - 1)
        if keep <= 0 or not llm._ctx.kv_cache_seq_rm(-1, keep, -1):
            keep = 0
        llm.n_tokens = keep
        llm.eval(tokens[keep:])
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
        return _log_softmax(logits.astype(np.float64))

    def rank(self, prompt: str, choices: Sequence[str]) -> Ranked:
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
        logprobs: dict[tuple, np.ndarray] = {}
        head = full[choices[0]][:context]
        for node in sorted(needed, key=len):
            logprobs[node] = self._eval_to(list(head) + list(node))
        scores = {}
        for choice, tail in tails.items():
            score = 0.0
            for i, token in enumerate(tail):
                if tail[:i] in logprobs:
                    score += float(logprobs[tail[:i]][token])
            if tail in logprobs:  # a shorter label inside a longer one pays for stopping here
                score += float(np.logaddexp.reduce(logprobs[tail][self._newlines]))
            scores[choice] = score
        best = max(choices, key=lambda c: (scores[c], -choices.index(c)))
        return Ranked(best, len(base), len(logprobs), scores)
