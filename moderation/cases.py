"""Review queues and claims: two reviewers never work one case, and a forgotten claim expires.

Queues: `model_review` (the model's uncertain band, written by detection), `user_reports`
(opened here from the reports table, whoever wrote the report: the relay or the HTTP intake),
`auto_ban_sample` (a sample of automatic bans for quality review, written by detection),
`rule_review` (a detection rule asked for a human look) and `appeals` (opened when an appeal is
filed). Each is worked highest priority first.

A claim is a conditional UPDATE (`status = open`, or a claim older than the claim TTL), so of two
reviewers racing for a case exactly one wins, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from moderation.errors import Conflict, ErrorCode, NotFound
from sealguard.contracts import now_ms
from sealguard.storage import AuditLogRow, CaseRow, Database, ReportRow

DEFAULT_CLAIM_TTL_S = 15 * 60


class Queue(str, enum.Enum):
    model_review = "model_review"
    user_reports = "user_reports"
    auto_ban_sample = "auto_ban_sample"
    rule_review = "rule_review"
    appeals = "appeals"


def case_json(row: CaseRow, *, claim_ttl_s: int, now: int | None = None) -> dict[str, Any]:
    now = now_ms() if now is None else now
    stale = row.status == "claimed" and row.claimed_at is not None and row.claimed_at + claim_ttl_s * 1000 <= now
    return {
        "id": row.id, "account": row.account, "queue": row.queue, "priority": row.priority, "score": row.score,
        "model_version": row.model_version, "rule_ids": row.rule_ids or [], "status": row.status,
        "claimed_by": row.claimed_by, "claimed_at": row.claimed_at, "claim_stale": stale,
        "created_at": row.created_at, "closed_at": row.closed_at, "decision_id": row.decision_id,
    }


def report_priority(named: int, verified: int, reports: int) -> float:
    """Verified reports weigh most: they prove the reporter really received those messages."""
    return float(min(1.0, 0.1 * reports + 0.05 * named + 0.25 * verified))


def sync_report_cases(session: Session) -> int:
    """Open one `user_reports` case per reported account with reports not yet acted on.

    Reports may be written by the relay directly, so the queue is brought up to date from the
    reports table rather than relying on every writer to open a case.
    """
    last_closed = (select(CaseRow.account.label("account"), func.max(CaseRow.closed_at).label("closed_at"))
                   .where(CaseRow.queue == Queue.user_reports.value, CaseRow.status == "closed")
                   .group_by(CaseRow.account).subquery())
    # Reports not acted on and newer than the account's last closed report case (a dismissal).
    pending = session.execute(
        select(ReportRow.reported, func.count(), func.sum(ReportRow.messages_named),
               func.sum(ReportRow.messages_verified), func.min(ReportRow.ts))
        .outerjoin(last_closed, last_closed.c.account == ReportRow.reported)
        .where(ReportRow.decision_id.is_(None),
               or_(last_closed.c.closed_at.is_(None), ReportRow.ts > last_closed.c.closed_at))
        .group_by(ReportRow.reported)
    ).all()
    if not pending:
        return 0
    open_rows = session.scalars(
        select(CaseRow).where(CaseRow.queue == Queue.user_reports.value, CaseRow.status != "closed",
                              CaseRow.account.in_([p[0] for p in pending]))
    ).all()
    by_account = {r.account: r for r in open_rows}
    created = 0
    for account, count, named, verified, first_ts in pending:
        priority = report_priority(int(named or 0), int(verified or 0), int(count))
        existing = by_account.get(account)
        if existing is not None:
            existing.priority = priority
            continue
        session.add(CaseRow(account=account, queue=Queue.user_reports.value, priority=priority,
                            status="open", created_at=int(first_ts or now_ms())))
        created += 1
    return created


def list_cases(db: Database, queue: Queue | None, status: str | None, *, limit: int, claim_ttl_s: int,
               account: str | None = None) -> list[dict[str, Any]]:
    """Cases of a queue, highest priority first (ties: oldest first). Stale claims show as open."""
    with db.session() as s, s.begin():
        if queue in (None, Queue.user_reports):
            sync_report_cases(s)
    now = now_ms()
    stale_before = now - claim_ttl_s * 1000
    with db.session() as s:
        q = select(CaseRow)
        if queue is not None:
            q = q.where(CaseRow.queue == queue.value)
        if account is not None:
            q = q.where(CaseRow.account == account)
        if status == "open":  # what can be claimed now: open, or claimed but stale
            q = q.where(or_(CaseRow.status == "open",
                            and_(CaseRow.status == "claimed", CaseRow.claimed_at <= stale_before)))
        elif status is not None:
            q = q.where(CaseRow.status == status)
        rows = s.scalars(q.order_by(CaseRow.priority.desc(), CaseRow.created_at, CaseRow.id).limit(limit)).all()
    return [case_json(r, claim_ttl_s=claim_ttl_s, now=now) for r in rows]


def get_case(session: Session, case_id: int) -> CaseRow:
    row = session.get(CaseRow, case_id)
    if row is None:
        raise NotFound(f"no case {case_id}")
    return row


def do_claim(db: Database, case_id: int, reviewer: str, *, claim_ttl_s: int) -> CaseRow:
    now = now_ms()
    with db.session() as s, s.begin():
        row = get_case(s, case_id)
        if row.status == "closed":
            raise Conflict(f"case {case_id} is closed (decision {row.decision_id})", ErrorCode.case_closed)
        result = s.execute(
            update(CaseRow)
            .where(CaseRow.id == case_id,
                   or_(CaseRow.status == "open", CaseRow.claimed_by == reviewer,
                       and_(CaseRow.status == "claimed", CaseRow.claimed_at <= now - claim_ttl_s * 1000)))
            .values(status="claimed", claimed_by=reviewer, claimed_at=now)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise Conflict(f"case {case_id} is claimed by {row.claimed_by}", ErrorCode.claimed_by_other)
        s.add(AuditLogRow(ts=now, actor=reviewer, action="case.claim", target=row.account,
                          evidence={"case_id": case_id, "queue": row.queue}))
    with db.session() as s:
        return get_case(s, case_id)


def do_release(db: Database, case_id: int, reviewer: str) -> CaseRow:
    now = now_ms()
    with db.session() as s, s.begin():
        row = get_case(s, case_id)
        if row.status != "claimed" or row.claimed_by != reviewer:
            raise Conflict(f"case {case_id} is not claimed by {reviewer}", ErrorCode.conflict)
        row.status, row.claimed_by, row.claimed_at = "open", None, None
        s.add(AuditLogRow(ts=now, actor=reviewer, action="case.release", target=row.account,
                          evidence={"case_id": case_id}))
    return row


def check_case_claim(row: CaseRow, reviewer: str, *, claim_ttl_s: int, now: int) -> None:
    """Only the reviewer holding a live claim may decide a case."""
    if row.status == "closed":
        raise Conflict(f"case {row.id} is already closed by decision {row.decision_id}", ErrorCode.case_closed)
    if row.status != "claimed" or row.claimed_by != reviewer:
        who = f"claimed by {row.claimed_by}" if row.status == "claimed" else "not claimed"
        raise Conflict(f"case {row.id} is {who}: claim it before deciding", ErrorCode.claimed_by_other)
    if row.claimed_at is None or row.claimed_at + claim_ttl_s * 1000 <= now:
        raise Conflict(f"your claim on case {row.id} has expired: claim it again", ErrorCode.stale_claim)


def close_case(row: CaseRow, decision_id: str | None, now: int) -> None:
    row.status, row.closed_at, row.decision_id = "closed", now, decision_id


def open_case(session: Session, account: str, queue: Queue, priority: float, *, score: float | None = None,
              model_version: str | None = None) -> CaseRow:
    row = CaseRow(account=account, queue=queue.value, priority=priority, score=score, model_version=model_version,
                  status="open", created_at=now_ms())
    session.add(row)
    return row


def queue_depths(db: Database, *, claim_ttl_s: int) -> dict[str, int]:
    with db.session() as s, s.begin():
        sync_report_cases(s)
    with db.session() as s:
        counts = dict(s.execute(select(CaseRow.queue, func.count()).where(CaseRow.status != "closed")
                                .group_by(CaseRow.queue)).all())
    return {q.value: int(counts.get(q.value, 0)) for q in Queue}
