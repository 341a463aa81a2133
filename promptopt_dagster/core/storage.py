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
    # start-up: google-cloud-storage takes ~0.3 s to import; only gs:// paths pay it
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials  # start-up: as above

        return storage.Client(
            project=os.environ.get("GOOGLE_CLOUD_PROJECT", "local"), credentials=AnonymousCredentials()
        )
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
        from google.api_core.exceptions import NotFound  # start-up: as _gcs_client's

        bucket, blob = _split_gs(uri)
        try:
            return _gcs_client().bucket(bucket).blob(blob).download_as_text()
        except NotFound:
            raise FileNotFoundError(uri) from None
    return Path(uri).read_text(encoding="utf-8")


def list_uris(uri: str) -> list[str]:
    """Every object under a gs://BUCKET/PREFIX (or file under a local directory), sorted."""
    uri = str(uri)
    if uri.startswith("gs://"):
        bucket, _, prefix = uri[len("gs://") :].partition("/")
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        return sorted(f"gs://{bucket}/{b.name}" for b in _gcs_client().list_blobs(bucket, prefix=prefix))
    return sorted(str(p) for p in Path(uri).rglob("*") if p.is_file())


def mirror(uri: str, dest: Path) -> Path:
    """Copy every object under gs://BUCKET/PREFIX to `dest`, keeping relative paths, and return `dest`.

    Datasets and initial prompts are read many times by pandas and the loaders; a local mirror made once
    per process keeps those readers (and their error messages, which name the file) unchanged."""
    bucket, _, prefix = uri[len("gs://") :].partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    client = _gcs_client()
    found = 0
    for blob in client.list_blobs(bucket, prefix=prefix):
        if blob.name.endswith("/"):
            continue
        target = dest / blob.name[len(prefix) :]
        target.parent.mkdir(parents=True, exist_ok=True)
        blob.download_to_filename(str(target))
        found += 1
    if not found:
        raise FileNotFoundError(
            f"{uri} holds no objects: upload the directory there first (e.g. `gcloud storage cp -r data {uri}`)"
        )
    return dest
