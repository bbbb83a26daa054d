"""Retention and account deletion. The audit log is never pruned: it is the record of who did
what to whom, and it holds no content.

`RetentionPolicy` (env `SEALGUARD_RETENTION_*`, days; 0 keeps forever):
- `scores_days`: model scores (signals-derived);
- `cases_days`: closed cases;
- `reports_days`: reports already acted on or older than this (signals-derived);
- `notices_days`: notices the relay has delivered.

`do_delete_account` removes an account's data everywhere the database holds it — scores,
cases, labels, reports it filed or received, appeals, notices, decisions and their applications,
contacts, blocks, group memberships, prekeys, queued ciphertext, media records — and leaves a
tombstone row (`deleted_at`, no keys, no handle) so the id is never reused. Audit entries that
name the account stay: that is what the audit log must keep.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import and_, delete, or_, select

from moderation.errors import ErrorCode, NotFound
from sealguard.contracts import now_ms
from sealguard.storage import (
    AccountRow,
    AppealRow,
    AuditLogRow,
    BlockRow,
    CaseRow,
    ContactRow,
    Database,
    DecisionRow,
    EnforcementApplicationRow,
    GroupMemberRow,
    LabelRow,
    MediaBlobRow,
    NoticeRow,
    PrekeyRow,
    QueuedMessageRow,
    ReportRow,
    ScoreRow,
)

DAY_MS = 86_400_000


class RetentionPolicy(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEALGUARD_RETENTION_", extra="ignore")

    scores_days: int = Field(default=30, ge=0, le=36_500)
    cases_days: int = Field(default=180, ge=0, le=36_500)
    reports_days: int = Field(default=180, ge=0, le=36_500)
    notices_days: int = Field(default=30, ge=0, le=36_500)


def do_apply_retention(db: Database, policy: RetentionPolicy, *, actor: str, now: int | None = None) -> dict[str, int]:
    """Delete what is older than the policy allows; one transaction, one audit entry."""
    now = now_ms() if now is None else now
    removed: dict[str, int] = {}

    def cutoff(days: int) -> int | None:
        return None if days == 0 else now - days * DAY_MS

    with db.session() as s, s.begin():
        if (c := cutoff(policy.scores_days)) is not None:
            removed["scores"] = s.execute(delete(ScoreRow).where(ScoreRow.ts < c)).rowcount  # type: ignore[attr-defined]
        if (c := cutoff(policy.cases_days)) is not None:
            removed["cases"] = s.execute(delete(CaseRow).where(  # type: ignore[attr-defined]
                CaseRow.status == "closed", CaseRow.closed_at < c)).rowcount
        if (c := cutoff(policy.reports_days)) is not None:
            removed["reports"] = s.execute(delete(ReportRow).where(ReportRow.ts < c)).rowcount  # type: ignore[attr-defined]
        if (c := cutoff(policy.notices_days)) is not None:
            removed["notices"] = s.execute(delete(NoticeRow).where(  # type: ignore[attr-defined]
                NoticeRow.delivered_at.is_not(None), NoticeRow.delivered_at < c)).rowcount
        s.add(AuditLogRow(ts=now, actor=actor, action="retention.apply", target=None,
                          evidence={"policy": policy.model_dump(), "removed": removed}))
    return removed


def do_delete_account(db: Database, account: str, *, actor: str) -> dict[str, int]:
    """Remove an account's data, keep its tombstone and the audit log. One transaction."""
    now = now_ms()
    removed: dict[str, Any] = {}
    with db.session() as s, s.begin():
        row = s.get(AccountRow, account)
        if row is None:
            raise NotFound(f"unknown account {account}", ErrorCode.unknown_account)
        if row.deleted_at is not None:
            raise NotFound(f"account {account} was already deleted", ErrorCode.unknown_account)
        decision_ids = list(s.scalars(select(DecisionRow.id).where(DecisionRow.account == account)))

        def gone(name: str, stmt: Any) -> None:
            removed[name] = int(s.execute(stmt).rowcount)

        gone("enforcement_applications", delete(EnforcementApplicationRow)
             .where(EnforcementApplicationRow.decision_id.in_(decision_ids)))
        gone("decisions", delete(DecisionRow).where(DecisionRow.account == account))
        gone("scores", delete(ScoreRow).where(ScoreRow.account == account))
        gone("cases", delete(CaseRow).where(CaseRow.account == account))
        gone("labels", delete(LabelRow).where(LabelRow.account == account))
        gone("reports", delete(ReportRow).where(or_(ReportRow.reporter == account, ReportRow.reported == account)))
        gone("appeals", delete(AppealRow).where(AppealRow.account == account))
        gone("notices", delete(NoticeRow).where(NoticeRow.account == account))
        gone("contacts", delete(ContactRow).where(or_(ContactRow.account == account, ContactRow.contact == account)))
        gone("blocks", delete(BlockRow).where(or_(BlockRow.blocker == account, BlockRow.blocked == account)))
        gone("group_members", delete(GroupMemberRow).where(GroupMemberRow.account == account))
        gone("prekeys", delete(PrekeyRow).where(PrekeyRow.account == account))
        gone("queued_messages", delete(QueuedMessageRow).where(
            or_(QueuedMessageRow.recipient == account,
                and_(QueuedMessageRow.sender == account, QueuedMessageRow.withheld.is_(True)))))
        gone("media_blobs", delete(MediaBlobRow).where(MediaBlobRow.owner == account))
        # The tombstone: no keys, no handle, no network bucket; the id stays taken.
        row.identity_key = f"deleted:{account}"
        row.curve_key = ""
        row.handle = None
        row.net_bucket = "n000000000000"
        row.deleted_at = now
        s.add(AuditLogRow(ts=now, actor=actor, action="account.delete", target=account,
                          evidence={"removed": removed}))
    return removed
