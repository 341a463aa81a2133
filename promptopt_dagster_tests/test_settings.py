"""Settings from the environment and `.env`: a name that is no setting, or a value a setting cannot take, is refused."""

from __future__ import annotations

import pytest

from promptopt_dagster.settings import SettingsError, check_dotenv, get_settings
from promptopt_dagster_tests.test_cli import _promptopt, _small_project


@pytest.mark.parametrize("line, fragment", [
    ("PROMPTOPT_STAT_DIR=elsewhere", ".env: PROMPTOPT_STAT_DIR is not a promptopt setting; did you mean PROMPTOPT_STATE_DIR?"),
    ("PROMPTOPT_TASK__BAKEND=openai", "PROMPTOPT_TASK__BAKEND is not a promptopt setting; did you mean PROMPTOPT_TASK__BACKEND?"),
    ("PROMPTOPT_MAX_CONCURRENT_RUNS=many", "setting PROMPTOPT_MAX_CONCURRENT_RUNS (environment or .env): Input should be a "
                                           "valid integer"),
    ("PROMPTOPT_DEPLOYMENT=cloud", "setting PROMPTOPT_DEPLOYMENT (environment or .env): Input should be 'local' or 'gcs'"),
])
def test_a_bad_dotenv_line_is_one_error_line_and_nothing_runs(tmp_path, line, fragment):
    project = _small_project(tmp_path / "project")
    (project / ".env").write_text(f"# mine\nOPENAI_API_KEY=sk-not-ours-to-judge\n{line}\n")
    done = _promptopt(project, "optimize", "--dataset", "sst2")
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ") and fragment in done.stderr
    assert "sk-not" not in done.stderr
    assert not (project / "state").exists()  # refused before anything was created


def test_other_variables_in_dotenv_are_left_alone(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("OPENAI_API_KEY=x\nPROMPTOPT_TASK__BACKEND=fake\nPROMPTOPT_LLM_THREADS=1\n")
    check_dotenv(tmp_path / ".env")
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    try:
        assert get_settings().llm_threads == 1
    finally:
        get_settings.cache_clear()
    with pytest.raises(SettingsError):
        (tmp_path / ".env").write_text("promptopt_nope=1\n")
        check_dotenv(tmp_path / ".env")
