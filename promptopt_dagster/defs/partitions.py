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


def ensure_iteration(instance: dg.DagsterInstance, iteration: int) -> None:
    """Add the dynamic `iteration` partition if this instance does not have it yet."""
    if not instance.has_dynamic_partition(iteration_dimension.name, str(iteration)):
        instance.add_dynamic_partitions(iteration_dimension.name, [str(iteration)])


def iteration_key(dataset: str, iteration: int) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"dataset": dataset, "iteration": str(iteration)})


def parse_key(partition_key: str) -> tuple[str, int]:
    """(dataset, iteration) from "sst2|3" or a MultiPartitionKey.

    Runs launched from the UI, a backfill or the GraphQL API carry the key as a plain string, not a
    MultiPartitionKey, so never rely on `keys_by_dimension` being there.
    """
    keys = iteration_partitions.get_partition_key_from_str(str(partition_key)).keys_by_dimension
    return keys["dataset"], int(keys["iteration"])


def split_key(context: dg.AssetExecutionContext) -> tuple[str, int]:
    return parse_key(context.partition_key)
