"""The storage-heavy moderation paths on SQLite and PostgreSQL: a claim race has one winner,
retention prunes only what the policy allows and never the audit log, account deletion removes
an account's data but keeps the audit log and a tombstone."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import func, select

from moderation.cases import do_claim
from moderation.errors import Conflict
from moderation.retention import DAY_MS, RetentionPolicy, do_apply_retention
from sealguard.contracts import now_ms
from sealguard.storage import (
    AccountRow,
    AuditLogRow,
    CaseRow,
    ContactRow,
    DecisionRow,
    LabelRow,
    NoticeRow,
    ReportRow,
    ScoreRow,
)

pytestmark = pytest.mark.postgres


def n(world: Any, table: Any, *where: Any) -> int:
    with world.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(table).where(*where)) or 0)


def test_claim_race_has_one_winner(world_factory: Any, db_url: str) -> None:
    world = world_factory(db_url)
    case_id = world.case(world.account())
    winners: list[str] = []
    losers: list[str] = []
    barrier = threading.Barrier(6)

    def claim(reviewer: str) -> None:
        barrier.wait()
        try:
            do_claim(world.db, case_id, reviewer, claim_ttl_s=900)
            winners.append(reviewer)
        except Conflict:
            losers.append(reviewer)

    threads = [threading.Thread(target=claim, args=(f"r:rev{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(losers) == 5
    with world.db.session() as s:
        assert s.get(CaseRow, case_id).claimed_by == winners[0]  # type: ignore[union-attr]


def test_retention_keeps_the_audit_log(world_factory: Any, db_url: str) -> None:
    world = world_factory(db_url)
    account, other = world.account(), world.account()
    old = now_ms() - 40 * DAY_MS
    with world.db.session() as s, s.begin():
        s.add(ScoreRow(account=account, model_version="m", score=0.5, ts=old))
        s.add(ScoreRow(account=account, model_version="m", score=0.6, ts=now_ms()))
        s.add(CaseRow(account=account, queue="model_review", priority=0.1, status="closed", created_at=old,
                      closed_at=now_ms() - 200 * DAY_MS))
        s.add(CaseRow(account=account, queue="model_review", priority=0.1, status="open", created_at=old))
        s.add(ReportRow(reporter=other, reported=account, reason_code="spam", ts=now_ms() - 200 * DAY_MS))
        s.add(NoticeRow(account=account, kind="warned", created_at=old, delivered_at=old))
        s.add(AuditLogRow(ts=old, actor="r:rita", action="decision.warn", target=account))
    removed = do_apply_retention(world.db, RetentionPolicy(scores_days=30, cases_days=180, reports_days=180,
                                                           notices_days=30), actor="r:ada")
    assert removed == {"scores": 1, "cases": 1, "reports": 1, "notices": 1}
    assert n(world, ScoreRow) == 1 and n(world, CaseRow) == 1
    assert n(world, AuditLogRow, AuditLogRow.action == "decision.warn") == 1
    assert n(world, AuditLogRow, AuditLogRow.action == "retention.apply") == 1
    assert do_apply_retention(world.db, RetentionPolicy(scores_days=0), actor="r:ada")["cases"] == 0


def test_account_deletion_keeps_only_the_audit_log(world_factory: Any, db_url: str) -> None:
    world = world_factory(db_url)
    account, friend = world.account(), world.account()
    with world.db.session() as s, s.begin():
        s.add(ContactRow(account=friend, contact=account, added_at=now_ms()))
        s.add(ScoreRow(account=account, model_version="m", score=0.9, ts=now_ms()))
        s.add(ReportRow(reporter=friend, reported=account, reason_code="spam", ts=now_ms()))
    r = world.post("/decisions", "rita", account=account, action="ban", reason_code="spam", note="spam run")
    assert r.status_code == 200
    assert world.client.delete(f"/accounts/{account}", headers=world.headers("lena")).status_code == 403
    d = world.client.delete(f"/accounts/{account}", headers=world.headers("ada"))
    assert d.status_code == 200, d.text
    for table, col in ((DecisionRow, DecisionRow.account), (ScoreRow, ScoreRow.account),
                       (LabelRow, LabelRow.account), (ReportRow, ReportRow.reported),
                       (ContactRow, ContactRow.contact), (NoticeRow, NoticeRow.account)):
        assert n(world, table, col == account) == 0, table.__tablename__
    assert n(world, AuditLogRow, AuditLogRow.target == account, AuditLogRow.action == "decision.ban") == 1
    with world.db.session() as s:
        tomb = s.get(AccountRow, account)
        assert tomb is not None and tomb.deleted_at is not None and tomb.handle is None
        assert not tomb.identity_key.startswith(world.identities[account].ed25519_key.to_base64()[:8])
    again = world.client.delete(f"/accounts/{account}", headers=world.headers("ada"))
    assert again.status_code == 404
    assert world.get(f"/accounts/{account}", "rita").json()["account"]["deleted_at"] is not None


def test_audit_log_is_append_only(world_factory: Any, db_url: str) -> None:
    from sqlalchemy import delete, update
    from sqlalchemy.exc import DatabaseError

    world = world_factory(db_url)
    account = world.account()
    assert world.post("/decisions", "rita", account=account, action="warn", reason_code="spam",
                      note="first warning").status_code == 200
    for stmt in (update(AuditLogRow).values(note="rewritten"), delete(AuditLogRow)):
        with pytest.raises(DatabaseError, match="append-only"), world.db.session() as s, s.begin():
            s.execute(stmt)
    assert n(world, AuditLogRow, AuditLogRow.note == "first warning") == 1


def test_concurrent_bans_of_one_account_make_one_decision(world_factory: Any, db_url: str) -> None:
    """Six automatic bans of one account at once (e.g. a zombie detection worker and the partition's
    new owner): exactly one decision is written and published, the others are refused as doubles."""
    from moderation.decisions import DecisionRequest, do_decide
    from moderation.errors import DecisionRejected
    from sealguard.contracts import Action, DecisionSource, ReasonCode

    world = world_factory(db_url)
    account = world.account()
    outcomes: list[str] = []
    barrier = threading.Barrier(6)

    def ban(i: int) -> None:
        req = DecisionRequest(account=account, action=Action.ban, reason_code=ReasonCode.rule_hit,
                              source=DecisionSource.auto, actor=f"rule.r{i}", evidence={"score": 0.99})
        barrier.wait()
        try:
            do_decide(world.db, world.publisher, req)
            outcomes.append("banned")
        except DecisionRejected:
            outcomes.append("refused")

    threads = [threading.Thread(target=ban, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["banned"] + ["refused"] * 5
    assert n(world, DecisionRow, DecisionRow.account == account, DecisionRow.action == "ban") == 1
