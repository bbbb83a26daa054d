"""`do_decide_many` (detection's batch of automatic decisions) writes what `do_decide` writes, one
decision at a time, would: the same decisions, audit entries, notices, reports and cases — on both
backends. Two copies of one scenario, one decided each way, compared table by table."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from moderation.decisions import DecisionRequest, do_decide, do_decide_many
from moderation.errors import DecisionRejected, ModerationError
from sealguard.contracts import Action, DecisionSource, ReasonCode, new_account_id, now_ms
from sealguard.storage import AuditLogRow, CaseRow, Database, DecisionRow, NoticeRow, ReportRow

from .conftest import RecordingPublisher


def _scenario(db: Database) -> list[DecisionRequest]:
    """Five accounts: reported twice (one reporter twice), with open cases of several queues, restricted
    before, banned already (rejected), and plain; then their requests."""
    reported, cased, restricted, banned, plain = (new_account_id() for _ in range(5))
    reporters = [new_account_id(), new_account_id()]
    now = now_ms()
    with db.session() as s, s.begin():
        for who in (reporters[0], reporters[0], reporters[1]):
            s.add(ReportRow(reporter=who, reported=reported, reason_code="spam", messages_named=2,
                            messages_verified=1, ts=now))
        for queue in ("model_review", "user_reports", "auto_ban_sample"):
            s.add(CaseRow(account=cased, queue=queue, priority=1.0, score=0.9, model_version="m", status="open",
                          created_at=now))
    for account, action in ((restricted, Action.restrict), (banned, Action.ban)):
        do_decide(db, None, DecisionRequest(account=account, action=action, reason_code=ReasonCode.rule_hit,
                                            source=DecisionSource.auto, actor="rule:x"))
    ask = [(reported, Action.ban), (cased, Action.ban), (restricted, Action.ban), (banned, Action.ban),
           (plain, Action.restrict)]
    return [DecisionRequest(account=a, action=act, reason_code=ReasonCode.spam, source=DecisionSource.auto,
                            actor="lgbm-1", evidence={"rules": [], "score": 0.99, "model_version": "lgbm-1"})
            for a, act in ask]


def _tables(db: Database, accounts: list[str]) -> dict[str, Any]:
    """Every row about these accounts, with ids, times and account names replaced by their position."""
    name = {a: f"#{i}" for i, a in enumerate(accounts)}
    with db.session() as s:
        decisions = s.scalars(select(DecisionRow).order_by(DecisionRow.created_at, DecisionRow.account)).all()
        did = {d.id: f"{name.get(d.account, '?')}:{d.action}" for d in decisions}
        out: dict[str, Any] = {
            "decisions": sorted((name.get(d.account, "?"), d.action, d.reason_code, d.source, d.actor, d.status,
                                 d.published_at is not None, str(d.evidence)) for d in decisions),
            "audit": sorted((a.actor, a.action, name.get(a.target or "", "?"), a.reason_code,
                             did.get((a.evidence or {}).get("decision_id"), "?"))
                            for a in s.scalars(select(AuditLogRow))),
            "notices": sorted((n.kind, did.get(n.decision_id or "", "?"), n.reason_code)
                              for n in s.scalars(select(NoticeRow))),
            "reports": sorted((did.get(r.decision_id or "", "-"), r.reporter_notified_at is not None)
                              for r in s.scalars(select(ReportRow))),
            "cases": sorted((name.get(c.account, "?"), c.queue, c.status, did.get(c.decision_id or "", "-"))
                            for c in s.scalars(select(CaseRow))),
        }
    return out


def test_a_batch_writes_what_one_by_one_writes(db_url: str, tmp_path: Any) -> None:
    one_db, many_db = Database(f"sqlite:///{tmp_path / 'one.sqlite'}"), Database(db_url)
    one_reqs, many_reqs = _scenario(one_db), _scenario(many_db)
    one_pub, many_pub = RecordingPublisher(), RecordingPublisher()
    one_out: list[Any] = []
    for req in one_reqs:
        try:
            one_out.append(do_decide(one_db, one_pub, req))
        except DecisionRejected as exc:
            one_out.append(exc)
    many_out = do_decide_many(many_db, many_pub, many_reqs)
    assert [type(x) for x in many_out] == [type(x) for x in one_out]
    assert isinstance(many_out[3], DecisionRejected) and "already banned" in str(many_out[3])
    assert [(e.action, e.reason_code) for e in many_pub.published] == [(e.action, e.reason_code)
                                                                        for e in one_pub.published]
    assert [e.decision_id for e in many_pub.published] == [r.id for r in many_out
                                                           if not isinstance(r, DecisionRejected)]
    assert _tables(many_db, [r.account for r in many_reqs]) == _tables(one_db, [r.account for r in one_reqs])


def test_only_automatic_decisions_on_distinct_accounts(tmp_path: Any) -> None:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    a = new_account_id()
    ban = DecisionRequest(account=a, action=Action.ban, reason_code=ReasonCode.spam, source=DecisionSource.auto,
                          actor="lgbm-1")
    with pytest.raises(ModerationError, match="one decision per account"):
        do_decide_many(db, None, [ban, ban])
    with pytest.raises(ModerationError, match="use do_decide"):
        do_decide_many(db, None, [DecisionRequest(account=a, action=Action.lift, reason_code=ReasonCode.reviewer_lift,
                                                  source=DecisionSource.reviewer, actor="rev-1")])
    assert do_decide_many(db, None, []) == []
