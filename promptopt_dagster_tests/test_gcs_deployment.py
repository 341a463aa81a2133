"""The gcs deployment against gcp-storage-emulator: data and prompts read from the bucket, every artifact written
there through dagster-gcp's GCSResource (the real google-cloud-storage client), read back by another process,
and a promoted prompt served from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from promptopt_dagster_tests.fake_llm_servers import FakeLLMServer
from promptopt_dagster_tests.test_gepa_end_to_end import task, toy_project

BUCKET = "promptopt-test"


def upload(root: Path, prefix: str) -> None:
    from promptopt_dagster.core.storage import _gcs_client

    bucket = _gcs_client().bucket(BUCKET)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        bucket.blob(f"{prefix}/{path.relative_to(root).as_posix()}").upload_from_filename(str(path))


@pytest.mark.slow
def test_a_gcs_deployment_reads_its_inputs_from_and_writes_every_artifact_to_the_bucket(tmp_path, gcs_emulator):
    from promptopt_dagster.core.storage import list_uris

    root = toy_project(tmp_path / "project")
    (root / "data" / "optimizations.yaml").write_text(
        yaml.safe_dump(
            {
                "optimizations": {
                    "toy": {
                        "dataset": "toy",
                        "select_size": 20,
                        "spare_size": 20,
                        "eval_size": 20,
                        "test_size": 40,
                        "options": {"num_candidates": 2},
                        "stop": {"max_iterations": 2, "patience": 2, "target_score": 1.1},
                    }
                }
            }
        )
    )
    upload(root / "data", "project/data")
    upload(root / "prompts", "project/prompts")
    state = tmp_path / "state"
    with FakeLLMServer("openai", answer=task) as task_srv:
        env = {
            **os.environ,
            "PROMPTOPT_DATA_DIR": f"gs://{BUCKET}/project/data",
            "PROMPTOPT_PROMPTS_DIR": f"gs://{BUCKET}/project/prompts",
            "PROMPTOPT_STATE_DIR": str(state),
            "PROMPTOPT_DEPLOYMENT": "gcs",
            "PROMPTOPT_GCS_BUCKET": BUCKET,
            "PROMPTOPT_GCS_PREFIX": "runs",
            "PROMPTOPT_TASK__BACKEND": "openai",
            "PROMPTOPT_TASK__BASE_URL": task_srv.openai_base_url,
            "OPENAI_API_KEY": "sk-gcs-test-secret",
            "PROMPTOPT_OPTIMIZER__BACKEND": "fake",
        }
        env.pop("DAGSTER_HOME", None)

        def promptopt(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [sys.executable, "-m", "promptopt_dagster.cli", *args],
                env=env,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=600,
            )

        done = promptopt("optimize", "--optimization", "toy", "--report-json", str(tmp_path / "report.json"))
        assert done.returncode == 0, done.stderr[-3000:]
        promoted = promptopt("promote", "toy", "--note", "from the bucket")
        assert promoted.returncode == 0, promoted.stderr[-3000:]
        rendered = promptopt("render", "toy", "a quiet film")
    report = json.loads((tmp_path / "report.json").read_text())
    iterations = report["iterations"]

    objects = [u.removeprefix(f"gs://{BUCKET}/runs/") for u in list_uris(f"gs://{BUCKET}/runs")]
    for asset in ("baseline_prompt", "refined_prompt", "candidate_pool", "comparison_report", "best_prompt"):
        assert [o for o in objects if o.startswith(f"{asset}/toy/")] == [
            f"{asset}/toy/g1-i{i}.json" for i in range(iterations)
        ], (asset, objects)
    for single in (
        "final_report/toy.json",
        "leaderboard/toy.json",
        "promotion_audit/toy.json",
        "promoted/toy/current.json",
    ):
        assert single in objects, objects
    assert any(o.startswith("promoted/toy/v") for o in objects)
    assert not any(o.startswith("baseline_predictions") for o in objects)  # big tables stay in DuckDB only
    assert not (state / "artifacts").exists()  # nothing written to the local artifacts folder instead

    # Another process, knowing only the bucket, reads the best prompt back, as a PromptVersion.
    reader = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import json; from promptopt_dagster.core.storage import read_text; "
                "from promptopt_dagster.core.prompts import PromptVersion; "
                f"rows = json.loads(read_text('gs://{BUCKET}/runs/best_prompt/toy/g1-i{iterations - 1}.json')); "
                "p = PromptVersion.model_validate(rows[0]['prompt_json']); print(p.id); print(p.system_prompt)"
            ),
        ],
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert reader.returncode == 0, reader.stderr[-2000:]
    assert reader.stdout.splitlines()[0] == report["best_prompt"]["id"]
    final = json.loads(
        __import__("promptopt_dagster.core.storage", fromlist=["read_text"]).read_text(
            f"gs://{BUCKET}/runs/final_report/toy.json"
        )
    )
    assert final[0]["report_json"]["best_test_score"] == report["best_test_score"]
    assert rendered.returncode == 0 and rendered.stdout.rstrip().endswith("Review: a quiet film\nSentiment:")
    everything = "".join(
        __import__("promptopt_dagster.core.storage", fromlist=["read_text"]).read_text(u)
        for u in list_uris(f"gs://{BUCKET}/runs")
    )
    assert "sk-gcs-test-secret" not in everything  # no secret reaches an artifact
