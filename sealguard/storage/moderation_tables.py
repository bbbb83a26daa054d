"""Tables of decisions and their consequences: enforcement, cases, scores, labels, reports,
appeals, reviewers, the audit log, and detection checkpoints.

Only `audit_log.note` may hold free text (a reviewer's own words); nothing holds content.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Float, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from sealguard.storage.base import AccountCol, Base, Ms


class DecisionRow(Base):
    """The truth about enforcement: written before it is published, loaded by the relay at start."""

    __tablename__ = "decisions"
    __table_args__ = (Index("ix_decisions_account_created", "account", "created_at"),)

    id: Mapped[str] = mapped_column(String(33), primary_key=True)
    account: Mapped[str] = mapped_column(AccountCol())
    action: Mapped[str] = mapped_column(String(16))
    reason_code: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(Ms)
    expires_at: Mapped[int | None] = mapped_column(Ms)
    published_at: Mapped[int | None] = mapped_column(Ms)
    # active | lifted | expired | superseded
    status: Mapped[str] = mapped_column(String(16), default="active", index=True)
    case_id: Mapped[int | None] = mapped_column(Integer)
    # Evidence at decision time: rule ids, model version and score (no content, no free text).
    evidence: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class EnforcementApplicationRow(Base):
    """One row per (decision, node) the relay applied; a second application is a no-op."""

    __tablename__ = "enforcement_applications"

    decision_id: Mapped[str] = mapped_column(String(33), primary_key=True)
    node: Mapped[str] = mapped_column(String(32), primary_key=True)
    applied_at: Mapped[int] = mapped_column(Ms)


class CaseRow(Base):
    __tablename__ = "cases"
    __table_args__ = (Index("ix_cases_queue_status_priority", "queue", "status", "priority"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(AccountCol(), index=True)
    # model_review | user_reports | auto_ban_sample | appeals
    queue: Mapped[str] = mapped_column(String(24))
    priority: Mapped[float] = mapped_column(Float, default=0.0)
    score: Mapped[float | None] = mapped_column(Float)
    model_version: Mapped[str | None] = mapped_column(String(64))
    rule_ids: Mapped[list[str] | None] = mapped_column(JSON)
    # open | claimed | closed
    status: Mapped[str] = mapped_column(String(16), default="open")
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_at: Mapped[int | None] = mapped_column(Ms)
    created_at: Mapped[int] = mapped_column(Ms)
    closed_at: Mapped[int | None] = mapped_column(Ms)
    decision_id: Mapped[str | None] = mapped_column(String(33))


class ScoreRow(Base):
    __tablename__ = "scores"
    __table_args__ = (Index("ix_scores_account_ts", "account", "ts"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(AccountCol())
    model_version: Mapped[str] = mapped_column(String(64))
    score: Mapped[float] = mapped_column(Float)
    contributions: Mapped[list[Any] | None] = mapped_column(JSON)
    shadow: Mapped[bool] = mapped_column(Boolean, default=False)
    ts: Mapped[int] = mapped_column(Ms, index=True)


class LabelRow(Base):
    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(AccountCol(), index=True)
    label: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(16))
    decision_id: Mapped[str | None] = mapped_column(String(33))
    ts: Mapped[int] = mapped_column(Ms)


class ReportRow(Base):
    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    reporter: Mapped[str] = mapped_column(AccountCol(), index=True)
    reported: Mapped[str] = mapped_column(AccountCol(), index=True)
    reason_code: Mapped[str] = mapped_column(String(32))
    messages_named: Mapped[int] = mapped_column(Integer, default=0)
    messages_verified: Mapped[int] = mapped_column(Integer, default=0)
    ts: Mapped[int] = mapped_column(Ms)
    # Set once a decision acts on this report, so the reporter can be told.
    decision_id: Mapped[str | None] = mapped_column(String(33))
    reporter_notified_at: Mapped[int | None] = mapped_column(Ms)


class AppealRow(Base):
    __tablename__ = "appeals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(AccountCol(), index=True)
    decision_id: Mapped[str] = mapped_column(String(33), index=True)
    # open | upheld | overturned
    status: Mapped[str] = mapped_column(String(16), default="open")
    filed_at: Mapped[int] = mapped_column(Ms)
    resolved_at: Mapped[int | None] = mapped_column(Ms)
    resolved_by: Mapped[str | None] = mapped_column(String(64))


class ReviewerRow(Base):
    __tablename__ = "reviewers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    # reviewer | lead | admin
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[int] = mapped_column(Ms)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)


class AuditLogRow(Base):
    """Append-only: who did what, why, and the evidence they were shown."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[int] = mapped_column(Ms, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(48))
    target: Mapped[str | None] = mapped_column(String(64), index=True)
    reason_code: Mapped[str | None] = mapped_column(String(32))
    note: Mapped[str | None] = mapped_column(Text)
    evidence: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class DetectionCheckpointRow(Base):
    """Per-partition feature state and the next offset, written together in one transaction."""

    __tablename__ = "detection_checkpoints"

    consumer_group: Mapped[str] = mapped_column(String(64), primary_key=True)
    topic: Mapped[str] = mapped_column(String(64), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    next_offset: Mapped[int] = mapped_column(Ms)
    state: Mapped[bytes | None] = mapped_column(LargeBinary)
    updated_at: Mapped[int] = mapped_column(Ms)


class NoticeRow(Base):
    """A notice for an account, delivered by the relay on connect (codes only, never text):
    kind = report_actioned | appeal_upheld | appeal_overturned | warned | banned | lifted."""

    __tablename__ = "notices"
    __table_args__ = (Index("ix_notices_account_delivered", "account", "delivered_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(AccountCol())
    kind: Mapped[str] = mapped_column(String(24))
    decision_id: Mapped[str | None] = mapped_column(String(33))
    reason_code: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[int] = mapped_column(Ms)
    delivered_at: Mapped[int | None] = mapped_column(Ms)
