"""Read and write small text artifacts at a local path or a gs:// URI.

GCS goes through the official google-cloud-storage client, which honours STORAGE_EMULATOR_HOST,
so the same code is tested against the emulator and used against real buckets.
"""

from __future__ import annotations

import os
from pathlib import Path


def _split_gs(uri: str) -> tuple[str, str]:
    bucket, _, blob = uri[len("gs://") :].partition("/")
    if not bucket or not blob:
        raise ValueError(f"{uri!r} is not a gs://BUCKET/OBJECT URI")
    return bucket, blob


def _gcs_client():
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "local"), credentials=AnonymousCredentials())
    return storage.Client()


def write_text(uri: str | Path, text: str) -> None:
    uri = str(uri)
    if uri.startswith("gs://"):
        bucket, blob = _split_gs(uri)
        _gcs_client().bucket(bucket).blob(blob).upload_from_string(text, content_type="application/json")
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # atomic: a crash never leaves a half-written prompt behind


def read_text(uri: str | Path) -> str:
    uri = str(uri)
    if uri.startswith("gs://"):
        from google.api_core.exceptions import NotFound

        bucket, blob = _split_gs(uri)
        try:
            return _gcs_client().bucket(bucket).blob(blob).download_as_text()
        except NotFound:
            raise FileNotFoundError(uri) from None
    return Path(uri).read_text(encoding="utf-8")
