"""Dataset x iteration partitions.

Datasets are static (read from data/manifest.yaml when the code location loads, so a new dataset
appears after a reload); iterations are dynamic because the sensor adds each one only after the
previous iteration decided to go on.
"""

import dagster as dg

from promptopt_dagster.core.datasets import load_manifest
from promptopt_dagster.settings import get_settings

DATASET_NAMES = sorted(load_manifest(get_settings().manifest_path))

dataset_partitions = dg.StaticPartitionsDefinition(DATASET_NAMES)
iteration_dimension = dg.DynamicPartitionsDefinition(name="iteration")
iteration_partitions = dg.MultiPartitionsDefinition({"dataset": dataset_partitions, "iteration": iteration_dimension})

# How the DuckDB IO manager finds a partition's rows in each table.
DATASET_EXPR = {"partition_expr": "dataset"}
ITERATION_EXPR = {"partition_expr": {"dataset": "dataset", "iteration": "iteration"}}


def iteration_key(dataset: str, iteration: int) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"dataset": dataset, "iteration": str(iteration)})


def split_key(context: dg.AssetExecutionContext) -> tuple[str, int]:
    keys = context.partition_key.keys_by_dimension  # type: ignore[union-attr]
    return keys["dataset"], int(keys["iteration"])
