"""Artifacts: tables that people open (prompt versions, comparison and final reports, candidate pools).

They stay warehouse tables, which the next assets read, and each materialization is also written as
readable JSON to `<root>/<asset>/<partition>.json`: the deployment decides the root. `local` writes
under `.promptopt/artifacts/`; `gcs` and `cluster` write to `gs://BUCKET/PREFIX/` through dagster-gcp's
GCSResource, whose client uses Application Default Credentials (and STORAGE_EMULATOR_HOST in tests).
Columns ending in `_json` are embedded as JSON, not as strings of JSON, so a reader sees the prompt.
"""

import json
from pathlib import Path

import dagster as dg
import pandas as pd
from dagster_gcp import GCSResource

from promptopt_dagster.core.storage import write_text
from promptopt_dagster.defs.io_managers import PostgresWarehouseIOManager, WarehouseIOManager


def artifact_path(context: dg.OutputContext) -> str:
    """`<asset>/<partition>.json`; a multi-partition key gives `<asset>/<optimization>/<iteration>.json`."""
    asset = "/".join(context.asset_key.path)
    if not context.has_partition_key:
        return f"{asset}.json"
    key = context.partition_key
    if isinstance(key, dg.MultiPartitionKey):
        dims = key.keys_by_dimension
        return f"{asset}/{dims['optimization']}/{dims['iteration']}.json"
    return f"{asset}/{key}.json"


def artifact_text(frame: pd.DataFrame) -> str:
    """The rows as a JSON list, `*_json` columns parsed, ready for a person or another program."""
    records = json.loads(frame.to_json(orient="records", date_format="iso"))
    for record in records:
        for column, value in list(record.items()):
            if column.endswith("_json") and isinstance(value, str):
                try:
                    record[column] = json.loads(value)
                except ValueError:
                    pass
    return json.dumps(records, indent=2, ensure_ascii=False) + "\n"


class _TableAndArtifact(dg.IOManager):
    def __init__(self, table: dg.IOManager, write) -> None:
        self._table, self._write = table, write

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        self._table.handle_output(context, obj)  # the table first: the JSON copy never runs ahead of it
        if isinstance(obj, pd.DataFrame):
            path = artifact_path(context)
            self._write(path, artifact_text(obj))
            context.add_output_metadata({"artifact": dg.MetadataValue.text(path)})

    def load_input(self, context: dg.InputContext):
        return self._table.load_input(context)


class LocalArtifactIOManager(WarehouseIOManager):
    """The local deployment: the DuckDB table plus a JSON file under `root`."""

    root: str

    def create_io_manager(self, context) -> dg.IOManager:
        def write(path: str, text: str) -> None:
            write_text(Path(self.root) / path, text)

        return _TableAndArtifact(super().create_io_manager(context), write)


class _GCSArtifacts(dg.ConfigurableIOManagerFactory):
    """The table (the warehouse IO manager this is mixed into) plus a JSON object at
    gs://bucket/prefix/<asset>/<partition>.json."""

    gcs: GCSResource
    gcs_bucket: str
    gcs_prefix: str = "promptopt"

    def create_io_manager(self, context) -> dg.IOManager:
        bucket = self.gcs.get_client().bucket(self.gcs_bucket)
        prefix = self.gcs_prefix.strip("/")

        def write(path: str, text: str) -> None:
            bucket.blob(f"{prefix}/{path}").upload_from_string(text, content_type="application/json")

        return _TableAndArtifact(super().create_io_manager(context), write)


class GCSArtifactIOManager(_GCSArtifacts, WarehouseIOManager):
    """The gcs deployment: the DuckDB table plus a JSON object in the bucket."""


class ClusterArtifactIOManager(_GCSArtifacts, PostgresWarehouseIOManager):
    """The cluster deployment: the Postgres table plus a JSON object in the bucket."""
