"""Ad hoc: what TF-IDF retrieval costs on a large demo pool, and whether a dense matrix-vector product would help.

Reads the train split `bench/adhoc/large_pool.py` wrote (or any CSV with a `user_input` column) and prints the
time to build the retriever once, the time per query (a row's nearest rows, as rendering asks once per distinct
row), and the same query through a dense matrix-vector product, with whether every similarity is bit-identical.

    .venv/bin/python bench/adhoc/large_pool.py /tmp/large_pool --train 120000
    .venv/bin/python bench/adhoc/retrieval_scale.py /tmp/large_pool/set/train.csv
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from promptopt_dagster.core.retrieval import TfidfRetriever


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path, help="a CSV with a user_input column: the demo pool")
    parser.add_argument("--queries", type=int, default=50, help="pool rows asked as queries")
    args = parser.parse_args()
    texts = pd.read_csv(args.csv)["user_input"].astype(str).tolist()
    started = time.perf_counter()
    retriever = TfidfRetriever(texts)
    print(f"{len(texts)} rows: built in {time.perf_counter() - started:.1f} s")
    queries = texts[: args.queries]
    matrix, vectorizer = retriever._matrix, retriever._vectorizer

    def dense(query: str) -> np.ndarray:
        vector = vectorizer.transform([query])
        column = np.zeros(matrix.shape[1])
        column[vector.indices] = vector.data
        return matrix @ column

    for name, similarities in (("sparse product (the retriever's)", retriever._similarities), ("dense column", dense)):
        started = time.perf_counter()
        for q in queries:
            similarities(q)
        print(f"{name}: {(time.perf_counter() - started) / len(queries) * 1000:.0f} ms a query")
    same = all(np.array_equal(retriever._similarities(q), dense(q)) for q in queries)
    print(f"bit-identical similarities on {len(queries)} queries: {same}")


if __name__ == "__main__":
    main()
