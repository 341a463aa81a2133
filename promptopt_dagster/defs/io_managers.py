"""DuckDB tables for every asset, including the dataset x iteration ones.

dagster-duckdb-pandas fails on a MultiPartitionsDefinition with a dynamic dimension ("The instance
is not available to load partitions", dagster issues #32631 and #17838) because resolving the
dynamic keys needs the instance, which the IO manager is not given. Running the library's own
handle_output and load_input inside `partition_loading_context` with the run's instance fixes
that without re-implementing the table writes.
"""

from __future__ import annotations

import dagster as dg
from dagster_duckdb_pandas import DuckDBPandasIOManager


class _WithInstance(dg.IOManager):
    def __init__(self, inner: dg.IOManager) -> None:
        self._inner = inner

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        with dg.partition_loading_context(dynamic_partitions_store=context.step_context.instance):
            self._inner.handle_output(context, obj)

    def load_input(self, context: dg.InputContext):
        """A table that does not exist yet reads as no rows, as a partition never written does; the
        asset that needs the rows says what to materialize (e.g. `dataset_splits` on a fresh home)."""
        import duckdb
        import pandas as pd

        with dg.partition_loading_context(dynamic_partitions_store=context.instance):
            try:
                return self._inner.load_input(context)
            except duckdb.CatalogException:
                return pd.DataFrame()


class WarehouseIOManager(DuckDBPandasIOManager):
    """DuckDBPandasIOManager that works with dynamic partition dimensions."""

    def create_io_manager(self, context) -> dg.IOManager:
        return _WithInstance(super().create_io_manager(context))
