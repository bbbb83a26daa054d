"""The moderation API: the one place for authorization and the audit log.

`create_app(settings, db, publisher)` builds the FastAPI app; the console and `sealguard chat`
talk to it over HTTP. Reviewers log in for a token (`Authorization: Bearer …`); appeals and
HTTP reports authenticate by the account's identity-key signature instead. Roles: a reviewer
works queues and acts on accounts; a lead also lifts, resolves appeals and runs group and bulk
actions; an admin also manages reviewers, retention and account deletion.

Errors answer `{"error": code, "detail": reason}` with the error's status (see moderation.errors).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError, OperationalError

from moderation import stats
from moderation.actions import ActionRequest, ReviewAction, actionable, do_bulk_action, do_review_action
from moderation.appeals import AppealFiling, do_file_appeal, do_resolve_appeal, list_appeals
from moderation.auth import (
    LoginThrottle,
    Principal,
    Role,
    TokenSigner,
    do_add_reviewer,
    do_login,
    do_set_reviewer_disabled,
    list_reviewers,
    load_secret,
    principal_for,
)
from moderation.cases import (
    DEFAULT_CLAIM_TTL_S,
    Queue,
    case_json,
    do_claim,
    do_release,
    get_case,
    list_cases,
    queue_depths,
)
from moderation.clusters import cluster, group_members
from moderation.decisions import EnforcementPublisher
from moderation.errors import ModerationError
from moderation.investigation import account_page
from moderation.reports import ReportFiling, ReportGuard, do_file_report
from moderation.retention import RetentionPolicy, do_apply_retention, do_delete_account
from moderation.schemas import (
    AppealBody,
    ClusterActionBody,
    ClusterBody,
    DecisionBody,
    GroupActionBody,
    LoginBody,
    ReportBody,
    ResolveBody,
    RetentionBody,
    ReviewerBody,
)
from sealguard.contracts.types import AccountId, GroupId
from sealguard.settings import Settings
from sealguard.storage import AuditLogRow, Database, DecisionRow, ScoreRow

log = logging.getLogger(__name__)

Limit = Annotated[int, Query(ge=1, le=500)]
CaseId = Annotated[int, Path(ge=1, le=2**31)]


_bearer = HTTPBearer(auto_error=False, description="A token from POST /auth/login")


def _who(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    db, signer = request.app.state.auth
    return principal_for(db, signer, creds.credentials if creds else None)


def _lead(p: Annotated[Principal, Depends(_who)]) -> Principal:
    p.require(Role.lead)
    return p


def _admin(p: Annotated[Principal, Depends(_who)]) -> Principal:
    p.require(Role.admin)
    return p


Reviewer = Annotated[Principal, Depends(_who)]
Lead = Annotated[Principal, Depends(_lead)]
Admin = Annotated[Principal, Depends(_admin)]


class SafeJSONResponse(JSONResponse):
    """JSON where an undefined figure (NaN, inf) is `null` instead of a server error."""

    def render(self, content: Any) -> bytes:
        return json.dumps(stats._jsonable(content), ensure_ascii=False, allow_nan=False,
                          separators=(",", ":")).encode()


def create_app(settings: Settings, db: Database, publisher: EnforcementPublisher | None, *,
               claim_ttl_s: int = DEFAULT_CLAIM_TTL_S) -> FastAPI:
    app = FastAPI(title="Sealguard moderation API", version="1", default_response_class=SafeJSONResponse,
                  description=__doc__)
    signer = TokenSigner(load_secret(settings.ensure_state_dir()), settings.token_ttl_s)
    app.state.auth = (db, signer)
    throttle = LoginThrottle()
    report_guard = ReportGuard()

    registry = CollectorRegistry()
    requests = Counter("sealguard_api_requests", "API requests", ["method", "route", "status"], registry=registry)
    latency = Histogram("sealguard_api_request_seconds", "API request latency", ["route"], registry=registry)
    actions = Counter("sealguard_moderation_actions", "Reviewer actions", ["action"], registry=registry)
    depth = Gauge("sealguard_queue_depth", "Open cases per queue", ["queue"], registry=registry)

    @app.middleware("http")
    async def measure(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        requests.labels(request.method, route, str(response.status_code)).inc()
        latency.labels(route).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(ModerationError)
    async def moderation_error(_request: Request, exc: ModerationError) -> JSONResponse:
        return SafeJSONResponse(exc.to_json(), status_code=exc.status)

    @app.exception_handler(IntegrityError)
    async def integrity_error(_request: Request, exc: IntegrityError) -> JSONResponse:
        log.warning("write refused by the database: %s", exc.orig)
        return SafeJSONResponse({"error": "conflict", "detail": "a concurrent write conflicted: retry"},
                                status_code=409)

    @app.exception_handler(OperationalError)
    async def operational_error(_request: Request, exc: OperationalError) -> JSONResponse:
        log.error("database unavailable: %s", exc.orig)
        return SafeJSONResponse({"error": "unavailable", "detail": "the database is unavailable"}, status_code=503)

    def principal_json(p: Principal) -> dict[str, str]:
        return {"reviewer_id": p.reviewer_id, "username": p.username, "role": p.role.value}

    # -- auth ---------------------------------------------------------------------------------
    @app.post("/auth/login", tags=["auth"])
    def login(body: LoginBody) -> dict[str, Any]:
        token, expires_at, p = do_login(db, signer, body.username, body.password, throttle)
        return {"token": token, "expires_at": expires_at, **principal_json(p)}

    @app.get("/auth/me", tags=["auth"])
    def me(p: Reviewer) -> dict[str, str]:
        return principal_json(p)

    # -- queues and cases ------------------------------------------------------------------------
    @app.get("/cases", tags=["cases"])
    def cases(p: Reviewer, queue: Queue | None = None,
              status: Annotated[str | None, Query(pattern="^(open|claimed|closed)$")] = "open",
              account: AccountId | None = None, limit: Limit = 50) -> list[dict[str, Any]]:
        """Cases of a queue, highest priority first. `status=open` includes stale claims."""
        return list_cases(db, queue, status, limit=limit, claim_ttl_s=claim_ttl_s, account=account)

    @app.get("/cases/{case_id}", tags=["cases"])
    def case(p: Reviewer, case_id: CaseId) -> dict[str, Any]:
        with db.session() as s:
            return case_json(get_case(s, case_id), claim_ttl_s=claim_ttl_s)

    @app.post("/cases/{case_id}/claim", tags=["cases"])
    def claim(p: Reviewer, case_id: CaseId) -> dict[str, Any]:
        """Claim a case so nobody else works it; a claim older than the claim TTL can be taken over."""
        return case_json(do_claim(db, case_id, p.reviewer_id, claim_ttl_s=claim_ttl_s), claim_ttl_s=claim_ttl_s)

    @app.post("/cases/{case_id}/release", tags=["cases"])
    def release(p: Reviewer, case_id: CaseId) -> dict[str, Any]:
        return case_json(do_release(db, case_id, p.reviewer_id), claim_ttl_s=claim_ttl_s)

    # -- accounts -----------------------------------------------------------------------------
    @app.get("/accounts/{account}", tags=["accounts"])
    def account(p: Reviewer, account: AccountId) -> dict[str, Any]:
        """The account page: timeline, features vs percentiles, explanation, reports, fanout, enforcement."""
        return account_page(db, account)

    @app.delete("/accounts/{account}", tags=["accounts"])
    def delete_account(p: Admin, account: AccountId) -> dict[str, Any]:
        """Remove the account's data except what the audit log keeps (admins only)."""
        return {"account": account, "removed": do_delete_account(db, account, actor=p.reviewer_id)}

    # -- decisions ----------------------------------------------------------------------------
    @app.post("/decisions", tags=["decisions"])
    def decide(p: Reviewer, body: DecisionBody) -> dict[str, Any]:
        """warn, restrict, ban (optional expires_at), dismiss (a case) or lift (leads), with a reason code."""
        result = do_review_action(db, publisher, p, ActionRequest(
            account=body.account, action=body.action, reason_code=body.reason_code, expires_at=body.expires_at,
            case_id=body.case_id, note=body.note), claim_ttl_s=claim_ttl_s)
        actions.labels(body.action.value).inc()
        return {"account": result.account, "action": result.action.value, "decision_id": result.decision_id,
                "case_id": result.case_id}

    @app.get("/decisions", tags=["decisions"])
    def decisions(p: Reviewer, account: AccountId | None = None, limit: Limit = 100) -> list[dict[str, Any]]:
        with db.session() as s:
            q = select(DecisionRow)
            if account is not None:
                q = q.where(DecisionRow.account == account)
            rows = s.scalars(q.order_by(DecisionRow.created_at.desc()).limit(limit)).all()
        return [{"id": d.id, "account": d.account, "action": d.action, "reason_code": d.reason_code,
                 "source": d.source, "actor": d.actor, "created_at": d.created_at, "expires_at": d.expires_at,
                 "status": d.status, "published_at": d.published_at, "case_id": d.case_id} for d in rows]

    # -- group and bulk actions ------------------------------------------------------------------
    @app.get("/groups/{group_id}/preview", tags=["bulk"])
    def group_preview(p: Reviewer, group_id: GroupId, action: ReviewAction = ReviewAction.ban) -> dict[str, Any]:
        with db.session() as s:
            members = group_members(s, group_id)
            targets = actionable(s, members, action)
        return {"group_id": group_id, "members": len(members), "count": len(targets), "accounts": targets}

    @app.post("/groups/{group_id}/action", tags=["bulk"])
    def group_action(p: Lead, group_id: GroupId, body: GroupActionBody) -> dict[str, Any]:
        """Act on every member of a spam group (leads). `expected_count` is the preview's count."""
        with db.session() as s:
            members = group_members(s, group_id)
        results = do_bulk_action(db, publisher, p, members, body.action, body.reason_code,
                                 scope={"group_id": group_id, "seed": None}, expected_count=body.expected_count,
                                 expires_at=body.expires_at, note=body.note)
        return {"group_id": group_id, "count": len(results), "decision_ids": [r.decision_id for r in results]}

    @app.post("/clusters/preview", tags=["bulk"])
    def cluster_preview(p: Reviewer, body: ClusterBody) -> dict[str, Any]:
        """How many accounts a bulk action on this cluster would touch, and which."""
        with db.session() as s:
            accounts = cluster(s, body.kind, body.seed, window_s=body.window_s, min_shared=body.min_shared)
            targets = actionable(s, accounts, body.action)
        return {"kind": body.kind.value, "seed": body.seed, "size": len(accounts), "count": len(targets),
                "accounts": targets}

    @app.post("/clusters/action", tags=["bulk"])
    def cluster_action(p: Lead, body: ClusterActionBody) -> dict[str, Any]:
        with db.session() as s:
            accounts = cluster(s, body.kind, body.seed, window_s=body.window_s, min_shared=body.min_shared)
        scope = {"cluster": body.kind.value, "seed": body.seed, "window_s": body.window_s,
                 "min_shared": body.min_shared}
        results = do_bulk_action(db, publisher, p, accounts, body.action, body.reason_code, scope=scope,
                                 expected_count=body.expected_count, expires_at=body.expires_at, note=body.note)
        return {"count": len(results), "decision_ids": [r.decision_id for r in results]}

    # -- reports and appeals (signed by the account, no reviewer token) ---------------------------
    @app.post("/reports", tags=["reports"])
    def file_report(body: ReportBody) -> dict[str, Any]:
        """Report an account, signed by the reporter's identity key (counted as unverified)."""
        row = do_file_report(db, ReportFiling(reporter=body.reporter, reported=body.reported,
                                              reason_code=body.reason_code, messages_named=body.messages_named,
                                              ts=body.ts, signature=body.signature), report_guard)
        return {"report_id": row.id}

    @app.post("/appeals", tags=["appeals"])
    def file_appeal(body: AppealBody) -> dict[str, Any]:
        """Appeal a ban or restriction, signed by the account's identity key."""
        row = do_file_appeal(db, AppealFiling(decision_id=body.decision_id, ts=body.ts, signature=body.signature))
        return {"appeal_id": row.id, "status": row.status}

    @app.get("/appeals", tags=["appeals"])
    def appeals(p: Reviewer, status: Annotated[str | None, Query(pattern="^(open|upheld|overturned)$")] = "open",
                limit: Limit = 100) -> list[dict[str, Any]]:
        return list_appeals(db, status, limit)

    @app.post("/appeals/{appeal_id}/resolve", tags=["appeals"])
    def resolve_appeal(p: Lead, appeal_id: CaseId, body: ResolveBody) -> dict[str, Any]:
        """Uphold or overturn (leads). Overturning lifts the ban and labels the account legitimate."""
        return do_resolve_appeal(db, publisher, p, appeal_id, body.outcome, note=body.note)

    # -- scores, models, figures ------------------------------------------------------------------
    @app.get("/scores", tags=["scores"])
    def scores(p: Reviewer, account: AccountId | None = None, limit: Limit = 100) -> list[dict[str, Any]]:
        with db.session() as s:
            q = select(ScoreRow)
            if account is not None:
                q = q.where(ScoreRow.account == account)
            rows = s.scalars(q.order_by(ScoreRow.ts.desc()).limit(limit)).all()
        return [{"account": r.account, "model_version": r.model_version, "score": r.score,
                 "contributions": r.contributions or [], "shadow": r.shadow, "ts": r.ts} for r in rows]

    @app.get("/models", tags=["scores"])
    def models(p: Reviewer) -> dict[str, Any]:
        """Champion vs challenger, and their shadow agreement."""
        return stats.models_page(db, settings.state_dir)

    @app.get("/stats", tags=["scores"])
    def figures(p: Reviewer, drift_window_s: Annotated[int, Query(ge=60, le=30 * 86_400)] = 3600) -> dict[str, Any]:
        """Queue depth, time to decision, automatic vs manual, auto-ban precision, score drift."""
        return stats.metrics_page(db, claim_ttl_s=claim_ttl_s, drift_window_s=drift_window_s)

    @app.get("/audit", tags=["audit"])
    def audit(p: Lead, target: Annotated[str | None, Query(max_length=64)] = None,
              limit: Limit = 100) -> list[dict[str, Any]]:
        """The append-only audit log, newest first (leads)."""
        with db.session() as s:
            q = select(AuditLogRow)
            if target is not None:
                q = q.where(AuditLogRow.target == target)
            rows = s.scalars(q.order_by(AuditLogRow.id.desc()).limit(limit)).all()
        return [{"id": r.id, "ts": r.ts, "actor": r.actor, "action": r.action, "target": r.target,
                 "reason_code": r.reason_code, "note": r.note, "evidence": r.evidence or {}} for r in rows]

    # -- administration ---------------------------------------------------------------------------
    @app.get("/reviewers", tags=["admin"])
    def reviewers(p: Admin) -> list[dict[str, Any]]:
        return [{"id": r.id, "username": r.username, "role": r.role, "disabled": r.disabled,
                 "created_at": r.created_at} for r in list_reviewers(db)]

    @app.post("/reviewers", tags=["admin"])
    def add_reviewer(p: Admin, body: ReviewerBody) -> dict[str, Any]:
        row = do_add_reviewer(db, body.username, body.password, body.role, actor=p.reviewer_id)
        return {"id": row.id, "username": row.username, "role": row.role}

    @app.post("/reviewers/{username}/disable", tags=["admin"])
    def disable_reviewer(p: Admin, username: Annotated[str, Path(max_length=64)]) -> dict[str, Any]:
        row = do_set_reviewer_disabled(db, username, True, actor=p.reviewer_id)
        return {"id": row.id, "username": row.username, "disabled": row.disabled}

    @app.post("/retention/apply", tags=["admin"])
    def retention(p: Admin, body: RetentionBody) -> dict[str, Any]:
        """Delete scores, closed cases, reports and delivered notices older than the policy (admins)."""
        return {"removed": do_apply_retention(db, RetentionPolicy(**body.model_dump()), actor=p.reviewer_id)}

    # -- operations ---------------------------------------------------------------------------
    @app.get("/health", tags=["ops"])
    def health() -> dict[str, Any]:
        with db.session() as s:
            s.execute(text("SELECT 1"))
        return {"status": "ok", "publisher": publisher is not None}

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def metrics() -> Response:
        """Prometheus metrics (request counts and latency, actions, queue depth)."""
        for queue, n in queue_depths(db, claim_ttl_s=claim_ttl_s).items():
            depth.labels(queue).set(n)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
