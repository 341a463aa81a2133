"""The generated dagster.yaml follows the settings until a person takes it over."""

from __future__ import annotations

import yaml

from promptopt_dagster.defs.home import _EARLIER_YAML, ensure_dagster_home


def _limit(path) -> int:
    return yaml.safe_load((path / "dagster.yaml").read_text())["run_queue"]["max_concurrent_runs"]


def test_the_queue_limit_follows_the_setting_and_earlier_files_are_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))  # ensure_dagster_home sets it; the test puts it back
    ensure_dagster_home(tmp_path, max_concurrent_runs=3)
    assert _limit(tmp_path) == 3
    ensure_dagster_home(tmp_path, max_concurrent_runs=5)
    assert _limit(tmp_path) == 5
    for earlier in _EARLIER_YAML:  # what earlier versions wrote: one run at a time
        (tmp_path / "dagster.yaml").write_text(earlier)
        ensure_dagster_home(tmp_path, max_concurrent_runs=3)
        assert _limit(tmp_path) == 3


def test_a_file_without_the_header_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    mine = "run_queue:\n  max_concurrent_runs: 7\n"
    (tmp_path / "dagster.yaml").write_text(mine)
    ensure_dagster_home(tmp_path, max_concurrent_runs=3)
    assert (tmp_path / "dagster.yaml").read_text() == mine
