"""Demos chosen per input: the k rows of a demo pool most similar to the row being answered.

A small model copies the labels of demos that look like its input far better than it follows an
instruction, so on multi-class data the nearest train rows beat any fixed demo set. TF-IDF cosine
(scikit-learn) needs no model download and ranks a few thousand rows in about a millisecond.

Retrievers are deterministic: ties go to the lower pool index, and the same pool gives the same
retriever (shared by fingerprint), so a prompt version renders identically on every run.
Another retriever (embeddings on a remote setup) plugs in with `register_retriever`.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import numpy as np


class Retriever(Protocol):
    def top(self, query: str, k: int) -> list[int]:
        """Indices of the k most similar pool texts, most similar first."""


#: what a word is, for every retriever: lower-cased runs of word characters, any language
TOKEN_PATTERN = r"(?u)\b\w+\b"


def nearest(similarities: np.ndarray, n: int) -> np.ndarray:
    """The n most similar indices, most similar first, equal similarities in pool order.

    The same as a stable argsort's first n, without sorting the whole pool: on 120,000 rows a full sort
    costs more than the similarities. Every index as similar as the n-th is kept before sorting, so a tie
    at the cut still goes to the lower index.

    Only the rows above the pool's least similarity are partitioned: in a large pool most rows share no
    word with a query and tie at that floor (zero), and numpy partitions mostly equal values slowly: on a
    120,000-paragraph pool a partition of the whole pool took 15 ms a query, of the rows above the floor
    0.08 ms (`bench/adhoc/retrieval_scale.py`). Floor rows come last, in pool order, as the stable sort
    puts them."""
    size = len(similarities)
    if n >= size:
        return np.argsort(-similarities, kind="stable")
    floor = similarities.min()
    above = np.flatnonzero(similarities > floor)  # in pool order
    if len(above) < n:  # all of them, then the first floor rows
        ranked = above[np.argsort(-similarities[above], kind="stable")]
        return np.concatenate([ranked, np.flatnonzero(similarities == floor)[: n - len(above)]])
    values = similarities[above]
    cut = np.partition(values, len(values) - n)[len(values) - n]  # the n-th largest similarity, above the floor
    at_least = above[values >= cut]  # in pool order, ties at the cut included
    return at_least[np.argsort(-similarities[at_least], kind="stable")][:n]


class _RankedRetriever:
    """What every retriever shares: a similarity per pool text, ranked stably (equal similarity keeps
    pool order, so ties are deterministic), remembered per query (rendering asks once per row, and
    the rows of a search repeat)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._memo: dict[str, np.ndarray] = {}

    def _similarities(self, query: str) -> np.ndarray:
        raise NotImplementedError

    def top(self, query: str, k: int) -> list[int]:
        order = self._memo.get(query)
        if order is None or len(order) < min(k, self._size):
            order = nearest(self._similarities(query), max(k, 32))
            if len(self._memo) > 50_000:
                self._memo.clear()
            self._memo[query] = order
        return [int(i) for i in order[:k]]


def tfidf_vectorizer():
    """TF-IDF as retrieval uses it: word unigrams and bigrams, sublinear term frequency, no stop-word list."""
    # start-up: scikit-learn takes ~0.5 s to import; only a prompt with retrieved demos pays it
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True, token_pattern=TOKEN_PATTERN)


class TfidfRetriever(_RankedRetriever):
    """Cosine similarity of TF-IDF vectors (`tfidf_vectorizer`), English-agnostic.

    The pool is kept by term (a column per word or bigram): a query's similarities are the sum of the few
    columns of its own terms, rather than a pass over every entry of the pool. On 120,000 paragraphs
    (16.5 million entries) that is 1 to 2 ms a query against 200 ms (`bench/adhoc/retrieval_scale.py`).
    Each row's terms are summed in one order, the terms' (the same for every row), so rows whose similarity
    is equal come out exactly equal and the tie goes to the lower pool index."""

    def __init__(self, texts: Sequence[str]) -> None:
        super().__init__(len(texts))
        self._vectorizer = tfidf_vectorizer()
        self._columns = self._vectorizer.fit_transform(list(texts)).tocsc()  # rows are L2-normalised

    def _similarities(self, query: str) -> np.ndarray:
        vector = self._vectorizer.transform([query])
        columns = self._columns
        similarities = np.zeros(self._size)
        for term, weight in zip(vector.indices, vector.data):
            start, end = columns.indptr[term], columns.indptr[term + 1]
            similarities[columns.indices[start:end]] += columns.data[start:end] * weight
        return similarities


class Bm25Retriever(_RankedRetriever):
    """Okapi BM25 (rank-bm25) over the same lower-cased word tokens as TF-IDF.

    BM25 saturates term frequency and normalises by length, where TF-IDF cosine does neither in the
    same way: on long inputs (a news paragraph) a row that repeats one query word can outrank the row
    that shares most of them, and on short ones (intent queries) the two mostly agree. Which pays is
    data-dependent, so both are offered to the search (fewshot's `retrievers` option)."""

    _TOKEN = re.compile(TOKEN_PATTERN)

    def __init__(self, texts: Sequence[str]) -> None:
        from rank_bm25 import BM25Okapi  # start-up: only a prompt that retrieves with BM25 pays the import

        super().__init__(len(texts))
        self._bm25 = BM25Okapi([self._TOKEN.findall(t.lower()) or [""] for t in texts])

    def _similarities(self, query: str) -> np.ndarray:
        return np.asarray(self._bm25.get_scores(self._TOKEN.findall(query.lower())), dtype=float)


_FACTORIES: dict[str, Callable[[Sequence[str]], Retriever]] = {"tfidf": TfidfRetriever, "bm25": Bm25Retriever}
_BUILT: OrderedDict[tuple[str, str], Retriever] = OrderedDict()


def register_retriever(name: str, factory: Callable[[Sequence[str]], Retriever]) -> None:
    """Make `method: <name>` usable in prompt versions (e.g. an embedding retriever for remote setups)."""
    _FACTORIES[name] = factory


def retriever_names() -> list[str]:
    return sorted(_FACTORIES)


def texts_digest(texts: Iterable[str]) -> str:
    """The sha256 of the texts, each prefixed by its length, so no two sequences share the bytes hashed: on
    120,000 paragraphs 0.05 s, where hashing their JSON took 0.4 (`bench/adhoc/retrieval_scale.py`)."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def fingerprint(texts: Sequence[str]) -> str:
    """A pool's key in this process's retrievers (its texts' digest). Every prompt read from storage brings its
    own copy of the pool, so this runs once per read."""
    return texts_digest(texts)[:16]


def get_retriever(method: str, texts: Sequence[str]) -> Retriever:
    """One retriever per (method, pool), kept for the process: candidates of a search share the pool."""
    if method not in _FACTORIES:
        raise ValueError(f"Unknown retriever {method!r}; known: {', '.join(retriever_names())}.")
    key = (method, fingerprint(texts))
    if key not in _BUILT:
        _BUILT[key] = _FACTORIES[method](texts)
        while len(_BUILT) > 4:
            _BUILT.popitem(last=False)
    _BUILT.move_to_end(key)
    return _BUILT[key]


_BY_POOL: dict[tuple[str, int], tuple[object, Retriever]] = {}


def retriever_for_pool(method: str, pool: Sequence) -> Retriever:
    """get_retriever for a pool of demos (objects with `user_input`), found by the pool's identity.

    Rendering asks for the retriever once per row; listing and fingerprinting a pool of thousands of
    rows each time cost more than the lookup itself. The entry keeps the pool alive, so its id
    cannot be reused by another list while cached."""
    key = (method, id(pool))
    hit = _BY_POOL.get(key)
    if hit is None or hit[0] is not pool:
        if len(_BY_POOL) > 64:
            _BY_POOL.clear()
        hit = (pool, get_retriever(method, [d.user_input for d in pool]))
        _BY_POOL[key] = hit
    return hit[1]
