"""Storage on both backends: migrations from scratch (every branch), idempotent upgrade, round
trips, each area's tables through its real code path, and PostgreSQL's pool and concurrent starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, inspect, select, text

from sealguard.storage import Base, Database, DecisionRow, LabelRow, QueuedMessageRow, StorageError
from sealguard.storage.db import alembic_config, make_engine, pool_options


@pytest.mark.postgres
def test_migrations_create_every_table_and_are_idempotent(db_url: str) -> None:
    db = Database(db_url)
    try:
        tables = set(inspect(db.engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
        assert "alembic_version" in tables
        heads = set(ScriptDirectory.from_config(alembic_config(db_url)).get_heads())
        with db.engine.connect() as conn:
            assert set(MigrationContext.configure(conn).get_current_heads()) == heads, "every branch at its head"
    finally:
        db.dispose()
    Database(db_url).dispose()  # a second upgrade is a no-op


@pytest.mark.postgres
def test_round_trip_rows(db_url: str) -> None:
    db = Database(db_url)
    try:
        with db.session() as s, s.begin():
            s.add(DecisionRow(id="d" + "0" * 32, account="a" + "1" * 20, action="ban", reason_code="spam",
                              source="auto", actor="rule:x", created_at=1, evidence={"rules": ["x"]}))
            s.add(LabelRow(account="a" + "1" * 20, label=1, source="reviewer", ts=2))
            s.add(QueuedMessageRow(message_id="m" * 32, recipient="a" + "2" * 20, sender="a" + "1" * 20, kind=0,
                                   ciphertext=b"\x00\x01opaque", enqueued_at=1, expires_at=10))
        with db.session() as s:
            d = s.scalars(select(DecisionRow)).one()
            assert d.evidence == {"rules": ["x"]} and d.status == "active"
            assert s.scalars(select(QueuedMessageRow)).one().ciphertext == b"\x00\x01opaque"
    finally:
        db.dispose()


@pytest.mark.postgres
def test_every_area_through_its_own_code_path(db_url: str) -> None:
    """One database, each area's tables written and read by the code that owns them: the relay's
    offline queue and enforcement bookkeeping, a reviewer decision with its label and audit entry,
    and detection's checkpoint of state + offsets."""
    from detection.checkpoint import Shard, load_shard, save_shards
    from detection.features import FeatureEngine
    from moderation.decisions import DecisionRequest, do_decide
    from moderation.errors import DecisionRejected
    from relay.server.store import QueuedOut, RelayStore
    from relay.signals import SignalBook
    from sealguard.contracts import Action, DecisionSource, MessageKind, ReasonCode, now_ms
    from sealguard.storage import AuditLogRow

    db = Database(db_url)
    try:
        # relay: accounts and the offline queue (the sender's ack waits for this write)
        store = RelayStore(db)
        spammer = store.create_account("idkey-s", "curve-s", "n000000000001", "sdk")
        friend = store.create_account("idkey-f", "curve-f", "n000000000002", "sdk")
        now = now_ms()
        mids = [os.urandom(16) for _ in range(3)]
        assert store.enqueue([QueuedOut(m, friend, spammer, None, 0, b"ct", now, now + 60_000) for m in mids],
                             quota=10) == [True] * 3
        assert [q.message_id for q in store.load_queue(friend)] == mids
        # moderation: a reviewer's ban writes decision, audit entry and label in one transaction ...
        req = DecisionRequest(account=spammer, action=Action.ban, reason_code=ReasonCode.spam,
                              source=DecisionSource.reviewer, actor="rev-1", note="sent links to strangers")
        decision = do_decide(db, None, req, label=1)
        with pytest.raises(DecisionRejected):
            do_decide(db, None, req, label=1)  # banning the banned is refused
        with db.session() as s:
            assert s.scalars(select(LabelRow.label).where(LabelRow.decision_id == decision.id)).all() == [1]
            assert s.scalar(select(func.count()).select_from(AuditLogRow)
                            .where(AuditLogRow.target == spammer)) == 1
        # ... which the relay loads, applies once per node and withholds the banned sender's queue
        assert [d.decision_id for d in store.active_decisions()] == [decision.id]
        assert store.record_application(decision.id, "relay-1") is True
        assert store.record_application(decision.id, "relay-1") is False
        assert store.record_application(decision.id, "relay-2") is True
        assert store.set_withheld(spammer, True) == 3 and store.queue_depth() == (0, 3)
        # detection: per-partition state and offsets, saved together and read back
        shard = Shard(3, engine=FeatureEngine())
        ev = SignalBook("relay-1").message_sent(spammer, friend, 100, MessageKind.text, True, ts=now)
        shard.engine.apply(ev)
        shard.offsets = {"sig": 41, "inb": 7}
        assert shard.first_time(1, 100, 90)
        save_shards(db, "g", "sig", [shard])
        back = load_shard(db, "g", "sig", ["sig", "inb"], 3)
        assert back.offsets == back.saved == {"sig": 41, "inb": 7}
        assert back.engine.accounts[spammer].sends_total == 1 and not back.first_time(1, 100, 90)
        shard.offsets["sig"] = 42
        save_shards(db, "g", "sig", [shard])  # the row is updated in place, not duplicated
        assert load_shard(db, "g", "sig", ["sig", "inb"], 3).offsets["sig"] == 42
    finally:
        db.dispose()


def test_pool_options_come_from_the_url() -> None:
    bare, opts = pool_options("postgresql+psycopg://u:pw@db.example/sg?pool_size=20&max_overflow=0&sslmode=disable")
    assert bare == "postgresql+psycopg://u:pw@db.example/sg?sslmode=disable"
    assert opts == {"pool_size": 20, "max_overflow": 0, "pool_timeout": 30, "pool_recycle": 1800}
    with pytest.raises(StorageError, match="pool_size='many' is not a whole number"):
        pool_options("postgresql+psycopg://db.example/sg?pool_size=many")
    with pytest.raises(StorageError, match="pool_timeout=0 is out of range"):
        pool_options("postgresql+psycopg://db.example/sg?pool_timeout=0")


@pytest.mark.postgres
def test_postgres_pool_is_bounded_and_survives_killed_connections(pg_url: str) -> None:
    db = Database(pg_url + "?pool_size=2&max_overflow=1&pool_timeout=2")
    try:
        assert db.engine.pool.size() == 2  # type: ignore[attr-defined]
        sessions = [db.session() for _ in range(3)]
        pids = {s.scalar(text("SELECT pg_backend_pid()")) for s in sessions}
        assert len(pids) == 3, "pool_size + max_overflow connections at most ..."
        with pytest.raises(Exception, match="QueuePool limit"):
            db.session().scalar(text("SELECT 1"))  # ... the next waits pool_timeout, then fails clearly
        for s in sessions:
            s.close()
        # PostgreSQL restarts or an operator kills the backends: pre-ping reconnects, nobody sees an error
        admin = make_engine(pg_url)
        with admin.connect() as conn:
            killed = conn.execute(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                       "WHERE pid = ANY(:pids)"), {"pids": list(pids)}).scalar()
        admin.dispose()
        assert killed >= 2  # the two pooled connections (the overflow one was closed when returned)
        with db.session() as s:
            assert s.scalar(text("SELECT 1")) == 1
    finally:
        db.dispose()


@pytest.mark.postgres
def test_nodes_starting_together_migrate_once(db_url: str) -> None:
    """Relay nodes and workers start at once against an empty database: one runs the migrations
    (a PostgreSQL advisory lock, a file lock beside SQLite), the others wait and find nothing to do.
    Without the lock two of three failed ("table accounts already exists", duplicate pg_type)."""
    code = "import sys; from sealguard.storage import upgrade; upgrade(sys.argv[1])"
    procs = [subprocess.Popen([sys.executable, "-c", code, db_url], stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    db = Database(db_url, migrate=False)
    try:
        assert set(Base.metadata.tables) <= set(inspect(db.engine).get_table_names())
    finally:
        db.dispose()
