"""Dagster's Postgres storage with its connections kept open, for the cluster deployment's instance.

dagster-postgres opens a new connection for every storage call (SQLAlchemy's NullPool) in every
process but the webserver, so that an instance holds nothing open. A run of the loop makes about a
thousand such calls (each event written, each "does this dynamic partition exist" asked), and each
new connection costs Postgres a backend process (about 3 ms of its CPU here, more over a network
with TLS): in `bench/backfill.py --cluster` Postgres was the largest consumer of CPU after the runs
themselves. This storage is dagster-postgres's own, with each of its three storages (runs, event
logs, schedules) keeping one connection per process open (SQLAlchemy's QueuePool, as Dagster's
webserver does: pool size 1, more opened and closed when threads need them at once), checked
before use so that a connection Postgres dropped is replaced instead of failing a run, and
recycled hourly. A process holds at most three idle connections.

The generated dagster.yaml of the cluster deployment names it (defs/home.py):

    storage:
      custom:
        module: promptopt_dagster.defs.postgres_storage
        class: PooledPostgresStorage
        config: {postgres_url: ...}
"""

from __future__ import annotations

import os
import weakref

from dagster._core.storage.config import pg_config
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import create_pg_engine, get_token_provider_from_config, pg_url_from_config

POOL_RECYCLE_S = 3600  # as dagster-webserver's default: reconnect at least hourly (proxies drop idle connections)
MAX_OVERFLOW = 10  # connections opened beyond the kept one while threads use a storage at once, closed after use

_ENGINES: weakref.WeakSet = weakref.WeakSet()


def _drop_inherited_connections() -> None:
    """A forked child must not use its parent's open connections: forget them (close=False leaves the parent's be)."""
    for engine in list(_ENGINES):
        engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_connections)


class PooledPostgresStorage(DagsterPostgresStorage):
    """dagster-postgres's storage (runs, event logs, schedules) holding one open connection per storage."""

    def __init__(self, postgres_url: str, should_autocreate_tables: bool = True, inst_data=None, token_provider=None):
        super().__init__(postgres_url, should_autocreate_tables, inst_data=inst_data, token_provider=token_provider)
        for storage in (self._run_storage, self._event_log_storage, self._schedule_storage):
            storage._engine.dispose()  # the NullPool engine dagster-postgres made: it holds nothing
            storage._engine = create_pg_engine(
                storage.postgres_url,
                token_provider,
                isolation_level="AUTOCOMMIT",  # as dagster-postgres: every statement commits at once
                pool_size=1,
                max_overflow=MAX_OVERFLOW,
                pool_recycle=POOL_RECYCLE_S,
                pool_pre_ping=True,
            )
            _ENGINES.add(storage._engine)

    @classmethod
    def config_type(cls):
        return pg_config()

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value) -> PooledPostgresStorage:
        return cls(
            pg_url_from_config(config_value),
            config_value.get("should_autocreate_tables", True),
            inst_data=inst_data,
            token_provider=get_token_provider_from_config(config_value),
        )
