"""Ad hoc: what TF-IDF retrieval costs on a large demo pool, against the way it was computed before.

Reads the train split `bench/adhoc/large_pool.py` wrote (or any CSV with a `user_input` column) and prints the
time to build the retriever once, then the time per query (a row's 32 nearest rows, as rendering asks once per
distinct row) two ways in the same process: the reference (sparse matrix times the sparse query, a stable sort
of the whole pool, as up to session 26) and the retriever's own (the pool kept by term, a partial sort), with
the queries whose nearest rows come out in another order: rows of equal similarity, which rounding ordered
before and the pool index orders now. Then two parts against session 27's way, on the first 50 queries:
`nearest` against a partition of the whole pool (same similarities, same rows), and the pool's fingerprint
against a hash of its JSON.

    .venv/bin/python bench/adhoc/large_pool.py /tmp/large_pool --train 120000
    .venv/bin/python bench/adhoc/retrieval_scale.py /tmp/large_pool/set/train.csv
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from promptopt_dagster.core.retrieval import TfidfRetriever, fingerprint, nearest, tfidf_vectorizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path, help="a CSV with a user_input column: the demo pool")
    parser.add_argument("--queries", type=int, default=50, help="pool rows asked as queries (0: every one)")
    parser.add_argument("--also", type=Path, nargs="*", default=[], help="CSVs whose rows are asked too (dev, test)")
    args = parser.parse_args()
    texts = pd.read_csv(args.csv)["user_input"].astype(str).tolist()
    started = time.perf_counter()
    retriever = TfidfRetriever(texts)
    print(f"{len(texts)} rows: built in {time.perf_counter() - started:.1f} s")
    queries = (texts[: args.queries] if args.queries else texts) + [
        q for extra in args.also for q in pd.read_csv(extra)["user_input"].astype(str)
    ]
    vectorizer = tfidf_vectorizer()
    matrix = vectorizer.fit_transform(texts)  # the pool by row, as the retriever kept it up to session 26

    def reference(query: str) -> list[int]:
        similarities = (matrix @ vectorizer.transform([query]).T).toarray().ravel()
        return [int(i) for i in np.argsort(-similarities, kind="stable")[:32]]

    def own(query: str) -> list[int]:
        return retriever.top(query, 32)

    timings = {}
    for name, ranked in (("reference (sparse query, full sort)", reference), ("the retriever's", own)):
        started = time.perf_counter()
        for q in queries:
            ranked(q)
        timings[name] = (time.perf_counter() - started) / len(queries)
        print(f"{name}: {timings[name] * 1000:.0f} ms a query")
    ref, new = timings.values()
    print(f"the retriever's / reference: {new / ref:.2f}x")
    differ = [(a, b) for a, b in ((reference(q), own(q)) for q in queries) if a != b]
    print(f"queries whose 32 nearest rows differ in order: {len(differ)} of {len(queries)}")
    for a, b in differ[:5]:  # rows of equal similarity, ordered by rounding before and by pool index now
        i = next(i for i in range(32) if a[i] != b[i])
        print(f"  at rank {i + 1}: {texts[a[i]][:60]!r} before, {texts[b[i]][:60]!r} now")
    parts(retriever, texts, queries[:50])


def parts(retriever: TfidfRetriever, texts: list[str], queries: list[str]) -> None:
    """Two parts of a query's and a pool read's cost, each against the way session 27 did it, in this process:
    `nearest` (which partitions only the rows above the pool's floor) against a partition of the whole pool,
    on the same similarities; and the pool's fingerprint against a hash of its JSON."""

    def whole_pool(similarities: np.ndarray, n: int) -> np.ndarray:  # session 27's nearest
        size = len(similarities)
        cut = np.partition(similarities, size - n)[size - n]
        at_least = np.flatnonzero(similarities >= cut)
        return at_least[np.argsort(-similarities[at_least], kind="stable")][:n]

    vectors = [retriever._similarities(q) for q in queries]
    n = min(32, len(texts) - 1)
    for name, rank in (("whole-pool partition", whole_pool), ("nearest (above the floor)", nearest)):
        started = time.perf_counter()
        for v in vectors:
            rank(v, n)
        print(f"{name}: {(time.perf_counter() - started) / len(vectors) * 1000:.2f} ms a query")
    same = all(whole_pool(v, n).tolist() == nearest(v, n).tolist() for v in vectors)
    print(f"the same {n} nearest rows on all {len(vectors)} queries: {same}")
    for name, key in (
        ("fingerprint of the pool's JSON", lambda: hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode())),
        ("fingerprint (texts with their lengths)", lambda: fingerprint(texts)),
    ):
        started = time.perf_counter()
        key()
        print(f"{name}: {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
