"""Engines and sessions; migrations run through Alembic (`upgrade heads`).

SQLite (the one-machine default) gets WAL and a busy timeout. PostgreSQL gets a connection pool:
every process (relay node, detection worker, API) keeps at most `pool_size + max_overflow`
connections, checks one before use (`pool_pre_ping`: a server restart or a connection killed by
PostgreSQL costs one reconnect, never an error in a request), recycles them after
`pool_recycle` seconds and hands out the most recently used first (idle ones age out). The pool is
sized in the database URL, so every process reads it from `SEALGUARD_DB_URL`:

    postgresql+psycopg://host/db?pool_size=10&max_overflow=20&pool_timeout=30&pool_recycle=1800

Several processes may start at once against one database (relay nodes, workers): `upgrade`
holds a lock — a PostgreSQL advisory lock, or an flock on a file next to the SQLite file — so the
first runs the migrations and the others wait, then find nothing to do.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

MIGRATIONS = Path(__file__).parent / "migrations"

# Pool options a PostgreSQL URL may carry in its query string, with their defaults and types.
POOL_DEFAULTS: dict[str, int] = {"pool_size": 5, "max_overflow": 10, "pool_timeout": 30, "pool_recycle": 1800}
MIGRATION_LOCK = 0x5EA16A4D  # pg_advisory_lock key held while migrations run


class StorageError(RuntimeError):
    """Root of storage errors."""


def pool_options(url: str) -> tuple[str, dict[str, int]]:
    """Split the pool options out of a database URL: (URL without them, options with defaults)."""
    u = make_url(url)
    opts = dict(POOL_DEFAULTS)
    for name in POOL_DEFAULTS:
        if name in u.query:
            raw = u.query[name]
            value = raw if isinstance(raw, str) else raw[-1]
            try:
                opts[name] = int(value)
            except ValueError:
                raise StorageError(f"database URL option {name}={value!r} is not a whole number") from None
            if opts[name] < 0 or (name in ("pool_size", "pool_timeout") and opts[name] == 0):
                raise StorageError(f"database URL option {name}={value} is out of range")
    return u.difference_update_query(POOL_DEFAULTS).render_as_string(hide_password=False), opts


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine with the right habits per backend: WAL + busy timeout on SQLite, a pool on PostgreSQL."""
    if url.startswith("sqlite"):
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    bare, opts = pool_options(url)
    for name, value in opts.items():
        kwargs.setdefault(name, value)
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_use_lifo", True)
    return create_engine(bare, **kwargs)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str) -> None:
    """Bring the schema at `url` to the newest revision of every branch (one runner at a time on PostgreSQL)."""
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if not url.startswith("sqlite:///") or path in ("", ":memory:"):
            command.upgrade(alembic_config(url), "heads")
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(f"{path}.migrate-lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                command.upgrade(alembic_config(url), "heads")
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return
    bare, _ = pool_options(url)
    engine = create_engine(bare, poolclass=NullPool)
    try:
        with engine.connect() as lock:
            lock.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
            try:
                command.upgrade(alembic_config(bare), "heads")
            finally:
                lock.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
                lock.commit()
    finally:
        engine.dispose()


class Database:
    """One engine and its session factory; passed explicitly to whoever needs storage."""

    def __init__(self, url: str, *, migrate: bool = True, **engine_kwargs: Any) -> None:
        self.url = url
        if migrate:
            upgrade(url)
        self.engine = make_engine(url, **engine_kwargs)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        return self.sessions()

    def dispose(self) -> None:
        self.engine.dispose()
