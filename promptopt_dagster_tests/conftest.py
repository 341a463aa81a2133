"""Shared fixtures. Every test gets its own state dir, so no test touches the project's .promptopt/."""

from __future__ import annotations

import os

import pytest

from promptopt_dagster.app.settings import PROJECT_ROOT

# Nothing in the test suite may reach the network; Hugging Face libraries must not try.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")


@pytest.fixture
def project_root():
    return PROJECT_ROOT


@pytest.fixture
def adc(tmp_path, monkeypatch):
    """Point Application Default Credentials at each test's fake token endpoint (remote-backend tests)."""
    from promptopt_dagster_tests.remote_helpers import adc_file

    def use(server):
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc_file(tmp_path, server)))

    return use


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gcs_emulator(request, monkeypatch):
    from gcp_storage_emulator.server import create_server

    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="promptopt-test")
    request.addfinalizer(server.stop)  # registered before start: the thread never outlives the test
    server.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "promptopt-test-project")
    return server


@pytest.fixture(scope="session")
def postgres_server():
    """One throwaway Postgres cluster for the session (postgres_server.py); tests take a database each."""
    from promptopt_dagster_tests.postgres_server import PostgresServer

    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server):
    """A new, empty database on the session's cluster."""
    return postgres_server.database()
