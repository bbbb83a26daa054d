"""Shared fixtures: one real broker per test session, temporary state, both databases.

The broker is the embedded Tansu unless SEALGUARD_KAFKA names a cluster. Group joins cost
seconds each on Tansu, so tests share one broker and use unique topic/group names.
"""

from __future__ import annotations

import gc
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from sealguard.settings import Settings

PG_ADMIN_URL = os.environ.get("SEALGUARD_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


# `make test` runs the suite on two xdist workers, a file at a time (`--dist loadfile`, so a file's
# module fixtures start once). The long files go first, so the last file to finish is a short one:
# the e2e spine alone takes three minutes.
LONG_FIRST = ("tests/e2e/", "tests/cluster/", "tests/reliability/", "tests/bench/", "tests/dashboard/")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid
        return next((i for i, prefix in enumerate(LONG_FIRST) if path.startswith(prefix)), len(LONG_FIRST))

    items.sort(key=rank)  # stable: within a rank, the collection order


@pytest.fixture(scope="session")
def broker_bootstrap() -> Iterator[str]:
    """A live Kafka-protocol broker for the whole session."""
    if os.environ.get("SEALGUARD_KAFKA"):
        yield os.environ["SEALGUARD_KAFKA"]
        return
    from sealguard.broker import EmbeddedBroker

    with EmbeddedBroker(Settings()) as broker:
        yield broker.bootstrap
        # Free the clients the tests left behind before the broker stops (a worker's `tune_gc` froze
        # them out of the collector's sight); alive, they retry the stopped broker, printing rdkafka's
        # "Connect failed" after the results.
        gc.unfreeze()
        gc.collect()


def _unique(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(4)}"


@pytest.fixture
def settings(tmp_path: Path, broker_bootstrap: str) -> Settings:
    """Settings for one test: its own state dir, SQLite file and topic names, the shared broker."""
    suffix = secrets.token_hex(3)
    return Settings(
        state_dir=tmp_path / "state",
        kafka=broker_bootstrap,
        db_url=f"sqlite:///{tmp_path / 'state' / 'sealguard.db'}",
        signals_topic=f"t{suffix}.signals",
        inbound_topic=f"t{suffix}.inbound",
        enforcement_topic=f"t{suffix}.enforcement",
        scores_topic=f"t{suffix}.scores",
        partitions=2,
    )


@pytest.fixture
def topics(settings: Settings) -> Settings:
    """`settings` with its topics created on the shared broker."""
    from sealguard.stream import ensure_topics

    assert settings.kafka
    ensure_topics(settings.kafka, settings.topics, settings.partitions)
    return settings


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for the session (dropped at the end)."""
    name = _unique("sg_test_")
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - say plainly why PostgreSQL tests cannot run
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is needed for storage tests: {exc}")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture
def pg_url(pg_database: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database of its own on the session's server (migrations run from
    scratch; dropped afterwards), so tests stay independent."""
    name = _unique("sg_t_")
    admin = create_engine(pg_database, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield pg_database.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each storage test runs on both backends, PostgreSQL on a database of its own (`pg_url`)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db.sqlite'}"
    else:
        yield request.getfixturevalue("pg_url")
