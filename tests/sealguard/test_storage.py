"""Storage on both backends: migrations from scratch, idempotent upgrade, round trips."""

from __future__ import annotations

from sqlalchemy import inspect, select

from sealguard.storage import Base, Database, DecisionRow, LabelRow, QueuedMessageRow


def test_migrations_create_every_table_and_are_idempotent(db_url: str) -> None:
    db = Database(db_url)
    try:
        tables = set(inspect(db.engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
        assert "alembic_version" in tables
    finally:
        db.dispose()
    Database(db_url).dispose()  # a second upgrade is a no-op


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
