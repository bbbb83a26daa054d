"""The one write path for enforcement decisions: `check_decision` validates, `do_decide` writes
the decision (and its audit entry and label) to the database *before* publishing it.

Automatic decisions from detection and a reviewer's decisions from the API both come here, so
every ban can say why, from which rule, model version or reviewer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from moderation.errors import DecisionRejected, ErrorCode, ModerationError
from sealguard.contracts import (
    Action,
    DecisionSource,
    Enforcement,
    LabelSource,
    ReasonCode,
    encode,
    new_decision_id,
    now_ms,
)
from sealguard.storage import AuditLogRow, CaseRow, Database, DecisionRow, LabelRow, NoticeRow, ReportRow

log = logging.getLogger(__name__)


# What the account itself is told (codes only; the relay delivers `notices` rows on connect).
NOTICE_KIND = {Action.warn: "warned", Action.ban: "banned", Action.lift: "lifted"}

# Runs inside do_decide's transaction: a caller's companion writes (close the case, mark the
# reports acted on, notify reporters) commit or fail together with the decision.
AlsoWrite = Callable[[Session, "DecisionRow"], None]


class EnforcementPublisher(Protocol):
    def publish(self, enforcement: Enforcement) -> None: ...


class KafkaEnforcementPublisher:
    """Publishes to `sg.enforcement.v1`, keyed by account."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from sealguard.stream import producer

        self.topic = topic
        self._producer = producer(bootstrap, **{"linger.ms": 0})

    def publish(self, enforcement: Enforcement) -> None:
        self._producer.produce(self.topic, key=enforcement.account, value=encode(enforcement))
        self._producer.poll(0)

    def flush(self, timeout: float = 10.0) -> int:
        return int(self._producer.flush(timeout))

    def close(self, timeout: float = 10.0) -> int:
        """Flush, then let the producer go (it stops retrying a broker that has gone away)."""
        left = self.flush(timeout)
        del self._producer
        return left


@dataclass(frozen=True)
class DecisionRequest:
    account: str
    action: Action
    reason_code: ReasonCode
    source: DecisionSource
    actor: str  # rule id, model version or reviewer id
    expires_at: int | None = None
    case_id: int | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    note: str | None = None  # a reviewer's own words: audit log only


def active_decision(session: Session, account: str) -> DecisionRow | None:
    """The newest active ban/restrict of an account (expired ones are not active)."""
    now = now_ms()
    rows = session.scalars(
        select(DecisionRow)
        .where(DecisionRow.account == account, DecisionRow.status == "active",
               DecisionRow.action.in_([Action.ban.value, Action.restrict.value]))
        .order_by(DecisionRow.created_at.desc())
    ).all()
    return next((r for r in rows if r.expires_at is None or r.expires_at > now), None)


def lock_account(session: Session, account: str) -> None:
    """Serialise decisions on one account until the transaction ends, so two concurrent bans (a
    zombie detection worker and the partition's new owner, two reviewers) cannot both read "not
    banned" and both write. PostgreSQL: an advisory lock per account. SQLite: the database's write
    lock, taken by a write that touches nothing before the read (pysqlite begins the transaction
    only at the first write, so the read would otherwise run outside it)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:a))"), {"a": "decision:" + account})
    else:
        session.execute(update(DecisionRow).where(DecisionRow.account == account, DecisionRow.id.is_(None))
                        .values(status=DecisionRow.status))


def check_decision(session: Session, req: DecisionRequest) -> None:
    """Refuse what would be a double decision: banning the banned, lifting what is not there."""
    lock_account(session, req.account)
    current = active_decision(session, req.account)
    if req.action is Action.ban and current is not None and current.action == Action.ban.value:
        raise DecisionRejected(f"account {req.account} is already banned by decision {current.id}",
                               ErrorCode.double_decision)
    if req.action is Action.lift and current is None:
        raise DecisionRejected(f"account {req.account} has no active ban or restriction to lift",
                               ErrorCode.nothing_to_lift)
    if req.expires_at is not None and req.expires_at <= now_ms():
        raise ModerationError("expires_at is in the past")
    if req.expires_at is not None and req.action not in (Action.ban, Action.restrict):
        raise ModerationError(f"expires_at only applies to ban and restrict, not {req.action.value}")


def do_decide(db: Database, publisher: EnforcementPublisher | None, req: DecisionRequest,
              *, label: int | None = None, label_source: LabelSource | None = None,
              also: AlsoWrite | None = None) -> DecisionRow:
    """Write the decision, its audit entry, the account's notice and (for human decisions) its
    label, then publish.

    The row commits first: if publishing fails the decision still stands in the database, and
    the relay picks it up at its next start or broker reconnect (`republish_unpublished` too).
    `label_source` defaults to `reviewer` for reviewer decisions and `appeal` otherwise; `also`
    adds the caller's own rows to the same transaction, so nothing is half-written.
    """
    decision_id = new_decision_id()
    now = now_ms()
    with db.session() as s, s.begin():
        check_decision(s, req)
        if req.action is Action.lift:
            s.execute(update(DecisionRow)
                      .where(DecisionRow.account == req.account, DecisionRow.status == "active",
                             DecisionRow.action.in_([Action.ban.value, Action.restrict.value]))
                      .values(status="lifted"))
        elif req.action in (Action.ban, Action.restrict):
            # A new ban or restriction supersedes an older one.
            s.execute(update(DecisionRow)
                      .where(DecisionRow.account == req.account, DecisionRow.status == "active",
                             DecisionRow.action.in_([Action.ban.value, Action.restrict.value]))
                      .values(status="superseded"))
        row = DecisionRow(
            id=decision_id, account=req.account, action=req.action.value, reason_code=req.reason_code.value,
            source=req.source.value, actor=req.actor, created_at=now, expires_at=req.expires_at,
            status="active" if req.action is not Action.lift else "lifted", case_id=req.case_id,
            evidence=req.evidence or None,
        )
        s.add(row)
        s.add(AuditLogRow(ts=now, actor=req.actor, action=f"decision.{req.action.value}", target=req.account,
                          reason_code=req.reason_code.value, note=req.note,
                          evidence={"decision_id": decision_id, **req.evidence}))
        if req.action in (Action.ban, Action.restrict, Action.warn):
            notify_reporters(s, req.account, decision_id, req.reason_code, now)
            close_answered_cases(s, req.account, req.action, decision_id, now)
        if req.action in NOTICE_KIND:
            s.add(NoticeRow(account=req.account, kind=NOTICE_KIND[req.action], decision_id=decision_id,
                            reason_code=req.reason_code.value, created_at=now))
        if label is not None:
            source = label_source or (LabelSource.reviewer if req.source is DecisionSource.reviewer
                                      else LabelSource.appeal)
            s.add(LabelRow(account=req.account, label=label, source=source.value, decision_id=decision_id, ts=now))
        if also is not None:
            s.flush()
            also(s, row)
    if publisher is not None:
        try:
            publish_decision(db, publisher, row)
        except Exception:  # the decision stands; republish_unpublished sends it later
            log.exception("decision %s is written but not yet published; it will be republished", row.id)
    return row


def do_decide_many(db: Database, publisher: EnforcementPublisher | None,
                   reqs: list[DecisionRequest]) -> list[DecisionRow | DecisionRejected]:
    """Several automatic decisions on distinct accounts (one detection batch), each with exactly what
    `do_decide` writes — the check, superseding, decision, audit entry, reporters notified, answered
    cases closed, the account's notice — all in one transaction and one statement per step for all
    of them; then each is published and all are marked published in one statement.

    Per account the outcome is `do_decide`'s: the row, or the DecisionRejected it would raise (a ban
    on the banned); the others go ahead. Only auto ban/restrict/warn without labels, notes, cases or
    companion writes — anything else goes through `do_decide`."""
    if len({r.account for r in reqs}) != len(reqs):
        raise ModerationError("do_decide_many takes one decision per account")
    for r in reqs:
        if r.source is not DecisionSource.auto or r.action not in (Action.ban, Action.restrict, Action.warn) \
                or r.case_id is not None or r.note is not None:
            raise ModerationError("do_decide_many is for automatic ban/restrict/warn decisions; use do_decide")
    if not reqs:
        return []
    now = now_ms()
    accounts = sorted(r.account for r in reqs)
    out: dict[str, DecisionRow | DecisionRejected] = {}
    rows: list[DecisionRow] = []
    with db.session() as s, s.begin():
        for account in accounts if s.get_bind().dialect.name == "postgresql" else accounts[:1]:
            lock_account(s, account)  # SQLite: the first write takes the database's write lock
        current: dict[str, DecisionRow] = {}
        for row in s.scalars(select(DecisionRow).where(
                DecisionRow.account.in_(accounts), DecisionRow.status == "active",
                DecisionRow.action.in_([Action.ban.value, Action.restrict.value]))
                .order_by(DecisionRow.created_at.desc())):
            if row.account not in current and (row.expires_at is None or row.expires_at > now):
                current[row.account] = row
        accepted: list[DecisionRequest] = []
        for req in reqs:
            cur = current.get(req.account)
            if req.action is Action.ban and cur is not None and cur.action == Action.ban.value:
                out[req.account] = DecisionRejected(f"account {req.account} is already banned by decision {cur.id}",
                                                    ErrorCode.double_decision)
            elif req.expires_at is not None and (req.expires_at <= now or req.action is Action.warn):
                raise ModerationError("expires_at must be in the future, on a ban or restrict")
            else:
                accepted.append(req)
        acting = [r.account for r in accepted if r.action in (Action.ban, Action.restrict)]
        if acting:  # a new ban or restriction supersedes an older one
            s.execute(update(DecisionRow).where(
                DecisionRow.account.in_(acting), DecisionRow.status == "active",
                DecisionRow.action.in_([Action.ban.value, Action.restrict.value]))
                .values(status="superseded").execution_options(synchronize_session=False))
        by_account: dict[str, DecisionRow] = {}
        decisions: list[dict[str, Any]] = []
        audits: list[dict[str, Any]] = []
        notices: list[dict[str, Any]] = []
        for req in accepted:
            decision_id = new_decision_id()
            values = {"id": decision_id, "account": req.account, "action": req.action.value,
                      "reason_code": req.reason_code.value, "source": req.source.value, "actor": req.actor,
                      "created_at": now, "expires_at": req.expires_at, "status": "active", "case_id": None,
                      "evidence": req.evidence or None, "published_at": None}
            decisions.append(values)
            audits.append({"ts": now, "actor": req.actor, "action": f"decision.{req.action.value}",
                           "target": req.account, "reason_code": req.reason_code.value, "note": None,
                           "evidence": {"decision_id": decision_id, **req.evidence}})
            if req.action in NOTICE_KIND:
                notices.append({"account": req.account, "kind": NOTICE_KIND[req.action], "decision_id": decision_id,
                                "reason_code": req.reason_code.value, "created_at": now, "delivered_at": None})
            row = DecisionRow(**values)  # what do_decide returns (written below in one statement per table)
            by_account[req.account] = row
            rows.append(row)
            out[req.account] = row
        if by_account:
            reqs_of = {r.account: r for r in accepted}
            reporters: dict[str, set[str]] = {}
            for report in s.scalars(select(ReportRow).where(ReportRow.reported.in_(list(by_account)),
                                                            ReportRow.decision_id.is_(None))):
                report.decision_id, report.reporter_notified_at = by_account[report.reported].id, now
                reporters.setdefault(report.reported, set()).add(report.reporter)
            for account, who in reporters.items():
                for reporter in sorted(who):
                    notices.append({"account": reporter, "kind": "report_actioned",
                                    "decision_id": by_account[account].id,
                                    "reason_code": reqs_of[account].reason_code.value, "created_at": now,
                                    "delivered_at": None})
            queues = {q for r in accepted for q in ANSWERS.get(r.action, ())}
            for case in s.scalars(select(CaseRow).where(CaseRow.account.in_(list(by_account)),
                                                        CaseRow.queue.in_(sorted(queues)), CaseRow.status == "open")):
                if case.queue in ANSWERS.get(reqs_of[case.account].action, ()):
                    case.status, case.closed_at, case.decision_id = "closed", now, by_account[case.account].id
            # Core inserts, one statement per table: the ORM's unit of work cost ~1.5 ms a decision here.
            for table, values_list in ((DecisionRow.__table__, decisions), (AuditLogRow.__table__, audits),
                                       (NoticeRow.__table__, notices)):
                if values_list:
                    s.execute(table.insert(), values_list)
    if publisher is not None and rows:
        published: list[str] = []
        for row in rows:
            try:
                publisher.publish(to_enforcement(row))
                published.append(row.id)
            except Exception:  # the decision stands; republish_unpublished sends it later
                log.exception("decision %s is written but not yet published; it will be republished", row.id)
        if published:
            with db.session() as s, s.begin():
                s.execute(update(DecisionRow).where(DecisionRow.id.in_(published)).values(published_at=now_ms())
                          .execution_options(synchronize_session=False))
    return [out[r.account] for r in reqs]


def notify_reporters(session: Session, account: str, decision_id: str, reason_code: ReasonCode, now: int) -> int:
    """Reports against `account` not yet acted on now point at this decision, and each reporter
    gets one `report_actioned` notice (Mastodon #1685: reporters want to hear back)."""
    reports = session.scalars(select(ReportRow).where(ReportRow.reported == account,
                                                      ReportRow.decision_id.is_(None))).all()
    reporters: set[str] = set()
    for report in reports:
        report.decision_id, report.reporter_notified_at = decision_id, now
        reporters.add(report.reporter)
    for reporter in sorted(reporters):
        session.add(NoticeRow(account=reporter, kind="report_actioned", decision_id=decision_id,
                              reason_code=reason_code.value, created_at=now))
    return len(reporters)


# Queues a decision answers: any action answers the reports; a ban also answers "should we act?".
ANSWERS = {Action.warn: ("user_reports",), Action.restrict: ("user_reports",),
           Action.ban: ("user_reports", "model_review", "rule_review")}


def close_answered_cases(session: Session, account: str, action: Action, decision_id: str, now: int) -> None:
    """Open (unclaimed) cases the decision answers close with it; claimed ones stay with their reviewer,
    and the auto-ban sample and appeals are questions about the decision itself, so they stay open."""
    queues = ANSWERS.get(action, ())
    if not queues:
        return
    for case in session.scalars(select(CaseRow).where(CaseRow.account == account, CaseRow.queue.in_(queues),
                                                      CaseRow.status == "open")):
        case.status, case.closed_at, case.decision_id = "closed", now, decision_id


def to_enforcement(row: DecisionRow) -> Enforcement:
    return Enforcement(decision_id=row.id, account=row.account, action=Action(row.action),
                       reason_code=ReasonCode(row.reason_code), source=DecisionSource(row.source),
                       actor=row.actor, expires_at=row.expires_at, ts=row.created_at)


def publish_decision(db: Database, publisher: EnforcementPublisher, row: DecisionRow) -> None:
    publisher.publish(to_enforcement(row))
    with db.session() as s, s.begin():
        s.execute(update(DecisionRow).where(DecisionRow.id == row.id).values(published_at=now_ms()))


def republish_unpublished(db: Database, publisher: EnforcementPublisher) -> int:
    """Publish decisions that were written but never published (a crash between the two)."""
    with db.session() as s:
        rows = s.scalars(select(DecisionRow).where(DecisionRow.published_at.is_(None))).all()
    for row in rows:
        publish_decision(db, publisher, row)
    return len(rows)


__all__ = [
    "AlsoWrite", "DecisionRejected", "DecisionRequest", "EnforcementPublisher", "KafkaEnforcementPublisher",
    "ModerationError", "active_decision", "check_decision", "do_decide", "do_decide_many", "publish_decision",
    "republish_unpublished", "to_enforcement",
]
