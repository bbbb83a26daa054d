"""A reviewer's actions on an account: warn, restrict, ban (optional expiry), dismiss, lift —
and the same actions on a spam group or a cluster, after a preview.

`check_review_action` validates and authorizes; `do_review_action` writes. Enforcing actions go
through `moderation.decisions.do_decide` (database first, then `sg.enforcement.v1`), with the
case closure riding in the same transaction. Every action records in the audit log what the
reviewer was shown (`evidence_snapshot`): score, model version, top contributions, rule ids and
report counts — never content.

Labels: ban, restrict and warn label the account 1; lift labels it 0. A dismissal labels it 0
in the model and report queues, and 1 in the auto-ban sample (the reviewer confirmed the ban).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from moderation.auth import Principal, Role
from moderation.cases import DEFAULT_CLAIM_TTL_S, Queue, check_case_claim, close_case, get_case
from moderation.clusters import require_account
from moderation.decisions import DecisionRequest, EnforcementPublisher, active_decision, check_decision, do_decide
from moderation.errors import Conflict, ErrorCode, ModerationError
from sealguard.contracts import Action, DecisionSource, ReasonCode, now_ms
from sealguard.storage import AuditLogRow, CaseRow, Database, DecisionRow, LabelRow, ReportRow, ScoreRow

MAX_NOTE = 2000


class ReviewAction(str, enum.Enum):
    warn = "warn"
    restrict = "restrict"
    ban = "ban"
    dismiss = "dismiss"
    lift = "lift"

    @property
    def enforcement(self) -> Action | None:
        return None if self is ReviewAction.dismiss else Action(self.value)


@dataclass(frozen=True)
class ActionRequest:
    account: str
    action: ReviewAction
    reason_code: ReasonCode
    expires_at: int | None = None
    case_id: int | None = None
    note: str | None = None
    extra_evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ActionResult:
    account: str
    action: ReviewAction
    decision_id: str | None
    case_id: int | None


def evidence_snapshot(session: Session, account: str, case: CaseRow | None) -> dict[str, Any]:
    """What the console showed the reviewer about this account, as metadata only."""
    score = session.scalars(select(ScoreRow).where(ScoreRow.account == account, ScoreRow.shadow.is_(False))
                            .order_by(ScoreRow.ts.desc()).limit(1)).first()
    reports, verified = session.execute(
        select(func.count(), func.coalesce(func.sum(ReportRow.messages_verified), 0))
        .where(ReportRow.reported == account)).one()
    evidence: dict[str, Any] = {"reports": int(reports), "messages_verified": int(verified)}
    if score is not None:
        evidence.update(score=round(score.score, 4), model_version=score.model_version,
                        contributions=(score.contributions or [])[:5])
    if case is not None:
        evidence.update(case_id=case.id, queue=case.queue, rule_ids=case.rule_ids or [])
        if case.score is not None:
            evidence["case_score"] = round(case.score, 4)
    return evidence


def check_review_action(session: Session, who: Principal, req: ActionRequest, *, claim_ttl_s: int) -> CaseRow | None:
    """Refuse what the caller may not do or what would be wrong: unknown account, a case not
    held by the caller, a dismissal without a case, a double decision, a lift by a reviewer
    outside the auto-ban sample."""
    if req.note is not None and len(req.note) > MAX_NOTE:
        raise ModerationError(f"note is longer than {MAX_NOTE} characters")
    require_account(session, req.account)
    case = None
    if req.case_id is not None:
        case = get_case(session, req.case_id)
        if case.account != req.account:
            raise ModerationError(f"case {case.id} is about account {case.account}, not {req.account}")
        check_case_claim(case, who.reviewer_id, claim_ttl_s=claim_ttl_s, now=now_ms())
    if req.action is ReviewAction.dismiss:
        if case is None:
            raise ModerationError("dismiss closes a case: give case_id")
        if req.expires_at is not None:
            raise ModerationError("expires_at only applies to ban and restrict")
        return case
    if req.action is ReviewAction.lift and not (case is not None and case.queue == Queue.auto_ban_sample.value):
        who.require(Role.lead)
    enforcement = req.action.enforcement
    assert enforcement is not None
    check_decision(session, _decision_request(who, req, enforcement, {}))
    return case


def _decision_request(who: Principal, req: ActionRequest, action: Action, evidence: dict[str, Any]) -> DecisionRequest:
    return DecisionRequest(account=req.account, action=action, reason_code=req.reason_code,
                           source=DecisionSource.reviewer, actor=who.reviewer_id, expires_at=req.expires_at,
                           case_id=req.case_id, evidence=evidence, note=req.note)


def do_review_action(db: Database, publisher: EnforcementPublisher | None, who: Principal, req: ActionRequest,
                     *, claim_ttl_s: int = DEFAULT_CLAIM_TTL_S) -> ActionResult:
    with db.session() as s:
        case = check_review_action(s, who, req, claim_ttl_s=claim_ttl_s)
        evidence = {**evidence_snapshot(s, req.account, case), **req.extra_evidence}
    now = now_ms()
    if req.action is ReviewAction.dismiss:
        assert case is not None
        with db.session() as s, s.begin():
            row = get_case(s, case.id)
            check_case_claim(row, who.reviewer_id, claim_ttl_s=claim_ttl_s, now=now)  # re-checked under the write
            close_case(row, None, now)
            confirmed = row.queue == Queue.auto_ban_sample.value and active_decision(s, req.account) is not None
            auto = _latest_auto_ban(s, req.account) if confirmed else None
            s.add(LabelRow(account=req.account, label=1 if confirmed else 0, source="reviewer",
                           decision_id=auto, ts=now))
            s.add(AuditLogRow(ts=now, actor=who.reviewer_id, action="case.dismiss", target=req.account,
                              reason_code=req.reason_code.value, note=req.note,
                              evidence={**evidence, "confirmed_decision": auto}))
        return ActionResult(req.account, req.action, None, case.id)

    enforcement = req.action.enforcement
    assert enforcement is not None

    def close_with_decision(s: Session, decision: DecisionRow) -> None:
        if req.case_id is None:
            return
        row = get_case(s, req.case_id)
        check_case_claim(row, who.reviewer_id, claim_ttl_s=claim_ttl_s, now=now_ms())
        close_case(row, decision.id, now_ms())

    decision = do_decide(db, publisher, _decision_request(who, req, enforcement, evidence),
                         label=0 if enforcement is Action.lift else 1, also=close_with_decision)
    return ActionResult(req.account, req.action, decision.id, req.case_id)


def _latest_auto_ban(session: Session, account: str) -> str | None:
    return session.scalars(select(DecisionRow.id).where(DecisionRow.account == account, DecisionRow.source == "auto",
                                                        DecisionRow.action == Action.ban.value)
                           .order_by(DecisionRow.created_at.desc()).limit(1)).first()


# -- many accounts at once --------------------------------------------------------------------

def actionable(session: Session, accounts: list[str], action: ReviewAction) -> list[str]:
    """The accounts an action would change: a ban skips the banned, a lift skips the unbanned."""
    enforcement = action.enforcement
    if enforcement is None:
        raise ModerationError("dismiss applies to one case, not to a group or cluster")
    out = []
    for account in accounts:
        current = active_decision(session, account)
        if enforcement is Action.ban and current is not None and current.action == Action.ban.value:
            continue
        if enforcement is Action.lift and current is None:
            continue
        out.append(account)
    return out


def do_bulk_action(db: Database, publisher: EnforcementPublisher | None, who: Principal, accounts: list[str],
                   action: ReviewAction, reason_code: ReasonCode, *, scope: dict[str, Any], expected_count: int,
                   expires_at: int | None = None, note: str | None = None) -> list[ActionResult]:
    """Act on every actionable account of a group or cluster (leads only).

    `expected_count` is the preview the reviewer confirmed: if the cluster changed since, nothing
    is written and the caller previews again. Each account's decision is its own transaction
    through do_decide, so a failure part-way leaves whole decisions, never half of one.
    """
    who.require(Role.lead)
    if note is not None and len(note) > MAX_NOTE:
        raise ModerationError(f"note is longer than {MAX_NOTE} characters")
    with db.session() as s:
        targets = actionable(s, accounts, action)
    if len(targets) != expected_count:
        raise Conflict(f"the preview showed {expected_count} accounts but {len(targets)} would be touched now: "
                       "preview again", ErrorCode.preview_mismatch)
    now = now_ms()
    with db.session() as s, s.begin():
        s.add(AuditLogRow(ts=now, actor=who.reviewer_id, action=f"bulk.{action.value}", target=scope.get("seed"),
                          reason_code=reason_code.value, note=note,
                          evidence={**scope, "count": len(targets), "accounts": targets[:100]}))
    results = []
    for account in targets:
        req = ActionRequest(account=account, action=action, reason_code=reason_code, expires_at=expires_at,
                            note=note, extra_evidence={"bulk": scope})
        try:
            results.append(do_review_action(db, publisher, who, req))
        except ModerationError as exc:  # decided by someone else meanwhile: skip, do not undo the rest
            if exc.status != 409:
                raise
    return results
