"""Appeals: the account proves who it is by signing with its identity key; a lead upholds or
overturns; the outcome is a label (source `appeal`) and a notice the relay delivers.

The signed message is canonical and carries the decision id and a timestamp, so a signature
cannot be moved to another decision, and a captured one is useless after `APPEAL_WINDOW_S`
(and within the window the one-appeal-per-decision rule refuses it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import vodozemac
from sqlalchemy import select
from sqlalchemy.orm import Session

from moderation.auth import Principal, Role
from moderation.cases import Queue, close_case, open_case
from moderation.decisions import DecisionRequest, EnforcementPublisher, active_decision, do_decide
from moderation.errors import BadSignature, Conflict, ErrorCode, ModerationError, NotFound
from sealguard.contracts import Action, DecisionSource, LabelSource, ReasonCode, now_ms
from sealguard.storage import (
    AccountRow,
    AppealRow,
    AuditLogRow,
    CaseRow,
    Database,
    DecisionRow,
    LabelRow,
    NoticeRow,
)

APPEAL_WINDOW_S = 300
APPEALABLE = {Action.ban.value, Action.restrict.value}


class AppealOutcome(str, enum.Enum):
    uphold = "uphold"
    overturn = "overturn"


def appeal_message(decision_id: str, ts: int) -> bytes:
    """The exact bytes an account signs to appeal `decision_id` at `ts` (ms)."""
    return f"sealguard-appeal:v1:{decision_id}:{ts}".encode()


def verify_identity(identity_key: str, message: bytes, signature: str) -> None:
    try:
        sig = vodozemac.Ed25519Signature.from_base64(signature)
    except Exception as exc:
        raise BadSignature(f"the signature is not a base64 Ed25519 signature: {exc}") from exc
    try:
        key = vodozemac.Ed25519PublicKey.from_base64(identity_key)
        key.verify_signature(message, sig)
    except Exception as exc:
        raise BadSignature("the signature does not verify with the account's identity key") from exc


@dataclass(frozen=True)
class AppealFiling:
    decision_id: str
    ts: int
    signature: str


def check_file_appeal(session: Session, filing: AppealFiling) -> DecisionRow:
    decision = session.get(DecisionRow, filing.decision_id)
    if decision is None:
        raise NotFound(f"no decision {filing.decision_id}")
    if abs(now_ms() - filing.ts) > APPEAL_WINDOW_S * 1000:
        raise BadSignature(f"the signed timestamp is more than {APPEAL_WINDOW_S}s from now: sign a fresh one",
                           ErrorCode.stale_timestamp)
    account = session.get(AccountRow, decision.account)
    if account is None or account.deleted_at is not None:
        raise NotFound(f"the account of decision {decision.id} no longer exists", ErrorCode.unknown_account)
    verify_identity(account.identity_key, appeal_message(filing.decision_id, filing.ts), filing.signature)
    if decision.action not in APPEALABLE:
        raise ModerationError(f"decision {decision.id} is a {decision.action}: only bans and restrictions "
                              "can be appealed")
    if decision.status != "active":
        raise Conflict(f"decision {decision.id} is no longer active ({decision.status})", ErrorCode.conflict)
    existing = session.scalars(select(AppealRow).where(AppealRow.decision_id == decision.id)).first()
    if existing is not None:
        raise Conflict(f"decision {decision.id} was already appealed (appeal {existing.id}, {existing.status})",
                       ErrorCode.duplicate)
    return decision


def do_file_appeal(db: Database, filing: AppealFiling) -> AppealRow:
    now = now_ms()
    with db.session() as s, s.begin():
        decision = check_file_appeal(s, filing)
        appeal = AppealRow(account=decision.account, decision_id=decision.id, status="open", filed_at=now)
        s.add(appeal)
        # Automatic bans are appealed first: they are the ones most likely to be wrong.
        open_case(s, decision.account, Queue.appeals, 0.9 if decision.source == "auto" else 0.6)
        s.flush()
        s.add(AuditLogRow(ts=now, actor=decision.account, action="appeal.file", target=decision.account,
                          reason_code=decision.reason_code,
                          evidence={"appeal_id": appeal.id, "decision_id": decision.id, "signed_ts": filing.ts}))
    return appeal


def appeal_json(appeal: AppealRow, decision: DecisionRow | None) -> dict[str, Any]:
    return {
        "id": appeal.id, "account": appeal.account, "decision_id": appeal.decision_id, "status": appeal.status,
        "filed_at": appeal.filed_at, "resolved_at": appeal.resolved_at, "resolved_by": appeal.resolved_by,
        "decision": None if decision is None else {
            "action": decision.action, "reason_code": decision.reason_code, "source": decision.source,
            "actor": decision.actor, "created_at": decision.created_at, "status": decision.status,
            "evidence": decision.evidence or {},
        },
    }


def list_appeals(db: Database, status: str | None, limit: int) -> list[dict[str, Any]]:
    with db.session() as s:
        q = select(AppealRow)
        if status is not None:
            q = q.where(AppealRow.status == status)
        appeals = s.scalars(q.order_by(AppealRow.filed_at).limit(limit)).all()
        decisions = {d.id: d for d in s.scalars(select(DecisionRow).where(
            DecisionRow.id.in_([a.decision_id for a in appeals]))).all()}
    return [appeal_json(a, decisions.get(a.decision_id)) for a in appeals]


def do_resolve_appeal(db: Database, publisher: EnforcementPublisher | None, who: Principal, appeal_id: int,
                      outcome: AppealOutcome, *, note: str | None = None) -> dict[str, Any]:
    """Uphold (label 1) or overturn (label 0, the ban is lifted through do_decide). Leads only."""
    who.require(Role.lead)
    with db.session() as s:
        appeal = s.get(AppealRow, appeal_id)
        if appeal is None:
            raise NotFound(f"no appeal {appeal_id}")
        if appeal.status != "open":
            raise Conflict(f"appeal {appeal_id} is already {appeal.status}", ErrorCode.conflict)
        still_active = active_decision(s, appeal.account) is not None
    kind = "appeal_upheld" if outcome is AppealOutcome.uphold else "appeal_overturned"
    reason = ReasonCode.appeal_upheld if outcome is AppealOutcome.uphold else ReasonCode.appeal_overturned

    def record_outcome(s: Session, lift: DecisionRow | None) -> None:
        now = now_ms()
        row = s.get(AppealRow, appeal_id)
        assert row is not None
        if row.status != "open":  # another lead resolved it between our check and this write
            raise Conflict(f"appeal {appeal_id} is already {row.status}", ErrorCode.conflict)
        row.status = "upheld" if outcome is AppealOutcome.uphold else "overturned"
        row.resolved_at, row.resolved_by = now, who.reviewer_id
        if lift is None:  # do_decide writes the overturn's label itself
            s.add(LabelRow(account=row.account, label=1 if outcome is AppealOutcome.uphold else 0,
                           source=LabelSource.appeal.value, decision_id=row.decision_id, ts=now))
        s.add(NoticeRow(account=row.account, kind=kind, decision_id=row.decision_id, reason_code=reason.value,
                        created_at=now))
        for case in s.scalars(select(CaseRow).where(CaseRow.account == row.account,
                                                    CaseRow.queue == Queue.appeals.value,
                                                    CaseRow.status != "closed")).all():
            close_case(case, lift.id if lift is not None else row.decision_id, now)
        s.add(AuditLogRow(ts=now, actor=who.reviewer_id, action=f"appeal.{outcome.value}", target=row.account,
                          reason_code=reason.value, note=note,
                          evidence={"appeal_id": row.id, "decision_id": row.decision_id,
                                    "lift_decision_id": lift.id if lift is not None else None}))

    lift_id = None
    if outcome is AppealOutcome.overturn and still_active:
        req = DecisionRequest(account=appeal.account, action=Action.lift, reason_code=reason,
                              source=DecisionSource.reviewer, actor=who.reviewer_id,
                              evidence={"appeal_id": appeal_id, "appealed_decision_id": appeal.decision_id},
                              note=note)
        lift_id = do_decide(db, publisher, req, label=0, label_source=LabelSource.appeal, also=record_outcome).id
    else:
        with db.session() as s, s.begin():
            record_outcome(s, None)
    return {"appeal_id": appeal_id, "outcome": outcome.value, "lift_decision_id": lift_id}
