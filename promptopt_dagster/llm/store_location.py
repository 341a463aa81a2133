"""Where the response cache and the usage ledger live: a SQLite file (a path) or a Postgres database (a URL).

One machine needs no service: the file under the state dir. Runs that share no disk (containers, pods)
share a Postgres database instead; both stores hold the same tables and run the same statements, with
`?` placeholders that `postgres_sql` turns into psycopg2's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

SCHEMES = ("postgresql", "postgres")


def is_url(location: str | Path | None) -> bool:
    """Whether a location names a Postgres database rather than a SQLite file."""
    return isinstance(location, str) and urlsplit(location).scheme in SCHEMES


def check_url(url: str) -> str:
    """A Postgres URL fit to be a setting: host and database named, no password (a setting reaches run config
    and logs; the password goes in PGPASSWORD or ~/.pgpass, which libpq reads)."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.hostname or not parts.path.strip("/"):
        raise ValueError(f"{url!r} is not a Postgres URL; write postgresql://USER@HOST:PORT/DATABASE")
    if parts.password is not None:
        raise ValueError("the Postgres URL holds a password; remove it and set PGPASSWORD (or ~/.pgpass) instead")
    return url


def connect_postgres(url: str, timeout_s: float):
    """An autocommit connection (transactions are explicit: `begin` ... `commit`, so a read holds no lock)."""
    import psycopg2  # the shared deployment's driver; dagster-postgres depends on it too

    con = psycopg2.connect(url, connect_timeout=max(1, int(timeout_s)))
    con.autocommit = True
    return con


def postgres_sql(sql: str) -> str:
    """A statement written with SQLite's `?` placeholders, in psycopg2's (no statement here has a literal `?`)."""
    return sql.replace("?", "%s")


def run_postgres(con, sql: str, params: Sequence = (), read=None):
    """One statement on a psycopg2 connection, in the project's `?` dialect: `read(cursor)` if given,
    else its rows (none for a statement that returns none). The one runner the cache, the ledger and
    the warehouse share, so the dialect is translated in one place."""
    with con.cursor() as cur:
        cur.execute(postgres_sql(sql), tuple(params))
        if read is not None:
            return read(cur)
        return cur.fetchall() if cur.description else []


def exists(location: str | Path | None) -> bool:
    """Whether there can be anything stored there yet: a file that exists, or any Postgres URL."""
    if not location:
        return False
    return is_url(location) or Path(location).exists()


def resolve(location: str | Path | None) -> str | Path | None:
    """A location as configuration writes it (a string), as the stores take it: a URL stays a string, anything
    else is a file path."""
    if not location:
        return None
    return location if is_url(location) else Path(location)


def sqlalchemy_url(url: str) -> str:
    """The URL with psycopg2 named as its driver, for SQLAlchemy (Dagster's Postgres storage): SQLAlchemy 2.1 reads a
    bare postgresql:// as psycopg 3, which is not installed; dagster-postgres brings psycopg2."""
    scheme, rest = url.split("://", 1)
    return f"postgresql+psycopg2://{rest}" if scheme in SCHEMES else url
