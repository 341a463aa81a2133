"""Settings from the environment and `.env`: a name that is no setting, or a value a setting cannot take, is refused.

The CLI cases (one error line, exit 2, nothing stored) are rows of test_bad_inputs.py's table."""

from __future__ import annotations

import pytest

from promptopt_dagster.app.settings import SettingsError, check_dotenv, get_settings


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


def test_a_bad_value_from_the_environment_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROMPTOPT_LLM_THREADS", "two")
    get_settings.cache_clear()
    try:
        with pytest.raises(
            SettingsError,
            match=r"^environment variable PROMPTOPT_LLM_THREADS: Input should be a valid "
            r"integer.*\(got 'two'\)\.$",
        ):
            get_settings()
    finally:
        get_settings.cache_clear()
