"""The cluster deployment's Dagster instance keeps its Postgres connections open (defs/postgres_storage.py)."""

from __future__ import annotations

import dagster as dg
import psycopg2
import pytest
import sqlalchemy

from promptopt_dagster.app.settings import get_settings
from promptopt_dagster.defs.home import ensure_dagster_home
from promptopt_dagster.defs.postgres_storage import PooledPostgresStorage


@pytest.fixture
def cluster_instance(tmp_path, monkeypatch, postgres_url):
    """An instance made, as every process of the cluster deployment makes it, from the generated dagster.yaml."""
    monkeypatch.setenv("PROMPTOPT_DEPLOYMENT", "cluster")
    monkeypatch.setenv("PROMPTOPT_WAREHOUSE_URL", postgres_url)
    monkeypatch.setenv("PROMPTOPT_GCS_BUCKET", "never-opened-here")  # the deployment names one; no test reads it
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))  # ensure_dagster_home sets it; the test puts it back
    get_settings.cache_clear()
    try:
        ensure_dagster_home(tmp_path / "home")
        with dg.DagsterInstance.get() as instance:
            yield instance
    finally:
        get_settings.cache_clear()


def _count_connections(instance) -> list[int]:
    """New DBAPI connections the instance's storages open from now on, counted by SQLAlchemy's connect event."""
    opened = [0]
    for storage in (instance.run_storage, instance.event_log_storage, instance.schedule_storage):
        sqlalchemy.event.listen(storage._engine, "connect", lambda *_: opened.__setitem__(0, opened[0] + 1))
    return opened


def _storage_calls(instance, count: int) -> None:
    for _ in range(count):
        instance.get_runs(limit=5)
        instance.get_dynamic_partitions("optimizations")  # an iteration run asks this hundreds of times
        instance.get_latest_materialization_event(dg.AssetKey("leaderboard"))


def test_the_instance_keeps_a_connection_per_storage_instead_of_one_per_call(cluster_instance):
    assert cluster_instance.get_ref().storage_data.class_name == PooledPostgresStorage.__name__
    opened = _count_connections(cluster_instance)
    _storage_calls(cluster_instance, 50)  # 150 calls: dagster-postgres's own storage opens a connection for each
    assert opened[0] <= 3


def test_a_connection_postgres_dropped_is_replaced_not_failed(cluster_instance, postgres_url):
    _storage_calls(cluster_instance, 1)
    con = psycopg2.connect(postgres_url)  # as a Postgres restart or an idle timeout of a proxy would
    con.autocommit = True
    with con.cursor() as cur:
        cur.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where datname = current_database() "
            "and pid <> pg_backend_pid()"
        )
        assert cur.rowcount >= 1
    con.close()
    opened = _count_connections(cluster_instance)
    _storage_calls(cluster_instance, 2)
    assert 1 <= opened[0] <= 3
