"""Partitions: datasets, optimizations, and each optimization's iterations.

Datasets and optimizations are static (read from data/manifest.yaml and data/optimizations.yaml when
the code location loads, so a new one appears after a reload). Iterations are dynamic because the
sensor adds each one only after the previous iteration decided to go on. An iteration key names its
generation too (`g1-i0`, `g1-i1`, ... then `g2-i0` after the optimization's settings changed), so a
new generation never overwrites the rows of an old one.
"""

from __future__ import annotations

import re
import warnings

import dagster as dg

from promptopt_dagster.app.datasets import load_manifest
from promptopt_dagster.app.optimizations import load_optimizations
from promptopt_dagster.app.settings import get_settings
from promptopt_dagster.app.state import partition_name

DATASET_NAMES = sorted(load_manifest(get_settings().manifest_path))
OPTIMIZATIONS = load_optimizations(get_settings().optimizations_path, DATASET_NAMES)
DATASET_OF = {name: spec.dataset for name, spec in sorted(OPTIMIZATIONS.items())}

dataset_partitions = dg.StaticPartitionsDefinition(DATASET_NAMES)
optimization_partitions = dg.StaticPartitionsDefinition(sorted(OPTIMIZATIONS))
iteration_dimension = dg.DynamicPartitionsDefinition(name="iteration")
iteration_partitions = dg.MultiPartitionsDefinition(
    {"optimization": optimization_partitions, "iteration": iteration_dimension}
)

#: an optimization's partition reads its dataset's partition
optimizations_of_dataset = dg.StaticPartitionMapping(
    {dataset: [name for name, of in DATASET_OF.items() if of == dataset] for dataset in DATASET_NAMES}
)
#: a dataset's leaderboard reads the partitions of every optimization of the dataset
dataset_of_optimization = dg.StaticPartitionMapping(DATASET_OF)
#: an iteration reads its optimization's partition (a beta API since Dagster 1.10; its warning says nothing
#: a user can act on, so it is not printed on every `promptopt` start)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)
    of_optimization = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="optimization")

# How the DuckDB IO manager finds a partition's rows in each table.
DATASET_EXPR = {"partition_expr": "dataset"}
OPTIMIZATION_EXPR = {"partition_expr": "optimization"}
ITERATION_EXPR = {"partition_expr": {"optimization": "optimization", "iteration": "iteration"}}

_ITERATION = re.compile(r"^g(\d+)-i(\d+)$")


def iteration_name(generation: int, iteration: int) -> str:
    return partition_name(generation, iteration)  # spelled once, with the state's keys


def parse_iteration(name: str) -> tuple[int, int]:
    """(generation, iteration) from "g2-i3"."""
    found = _ITERATION.match(name)
    if not found:
        raise ValueError(f"iteration partition {name!r} is not of the form g<generation>-i<iteration>, e.g. g1-i0")
    return int(found.group(1)), int(found.group(2))


def ensure_iteration(instance: dg.DagsterInstance, generation: int, iteration: int) -> None:
    """Add the dynamic `iteration` partition if this instance does not have it yet."""
    name = iteration_name(generation, iteration)
    if not instance.has_dynamic_partition(iteration_dimension.name, name):
        instance.add_dynamic_partitions(iteration_dimension.name, [name])


def iteration_key(optimization: str, generation: int, iteration: int) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"optimization": optimization, "iteration": iteration_name(generation, iteration)})


def parse_key(partition_key: str) -> tuple[str, int, int]:
    """(optimization, generation, iteration) from "sst2|g1-i3" or a MultiPartitionKey.

    Runs launched from the UI, a backfill or the GraphQL API carry the key as a plain string, not a
    MultiPartitionKey, so never rely on `keys_by_dimension` being there.
    """
    keys = iteration_partitions.get_partition_key_from_str(str(partition_key)).keys_by_dimension
    return (keys["optimization"], *parse_iteration(keys["iteration"]))


def split_key(context: dg.AssetExecutionContext) -> tuple[str, int, int]:
    return parse_key(context.partition_key)
