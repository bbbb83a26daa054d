"""The account page: everything a reviewer needs to judge an account, from metadata only.

- `timeline`: scores, decisions, reports received and filed, blocks received, contacts added,
  group joins and enforcement applications, newest first;
- `features`: the latest score's contributions and the account's relational counts, each with
  its percentile in the population (the share of accounts at or below the value);
- `explanation`: the latest score's top contributions by magnitude;
- `reports`: reports received, verified or not;
- `neighbourhood`: nodes and edges of its fanout (contacts, who added it, blocks, reports,
  queued recipients, groups), for the console's picture;
- `enforcement`: decisions, where the relay applied them, and appeals.

Nothing here reads `queued_messages.ciphertext`: the relay's tables give structure, never content.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from moderation.clusters import require_account
from moderation.decisions import active_decision
from sealguard.storage import (
    AccountRow,
    AppealRow,
    BlockRow,
    ContactRow,
    Database,
    DecisionRow,
    EnforcementApplicationRow,
    GroupMemberRow,
    GroupRow,
    QueuedMessageRow,
    ReportRow,
    ScoreRow,
)

TIMELINE_LIMIT = 500
NEIGHBOURS_PER_KIND = 25


def contributions_of(raw: Sequence[Any] | None) -> list[tuple[str, float]]:
    """Contributions as (feature, value), whether stored as {feature, value} objects or pairs."""
    out: list[tuple[str, float]] = []
    for item in raw or []:
        try:
            if isinstance(item, dict):
                out.append((str(item["feature"]), float(item["value"])))
            else:
                out.append((str(item[0]), float(item[1])))
        except (KeyError, IndexError, TypeError, ValueError):
            continue
    return out


def percentile(population: Sequence[float], value: float, total: int | None = None) -> float:
    """Mid-rank percentile: (share below + half the share equal). Accounts missing from
    `population` count as 0, so an account at 0 among mostly zeros sits near 0.5, not at 1."""
    total = max(total if total is not None else len(population), len(population))
    if total == 0:
        return float("nan")
    zeros = total - len(population)
    below = sum(1 for v in population if v < value) + (zeros if value > 0 else 0)
    equal = sum(1 for v in population if v == value) + (zeros if value == 0 else 0)
    return round((below + equal / 2) / total, 4)


def latest_scores(session: Session, *, shadow: bool = False) -> Select[tuple[ScoreRow]]:
    newest = select(func.max(ScoreRow.id)).where(ScoreRow.shadow.is_(shadow)).group_by(ScoreRow.account)
    return select(ScoreRow).where(ScoreRow.id.in_(newest))


RELATIONAL = {
    "contacts_added": (ContactRow.account, ContactRow),
    "added_as_contact": (ContactRow.contact, ContactRow),
    "blocks_received": (BlockRow.blocked, BlockRow),
    "reports_received": (ReportRow.reported, ReportRow),
    "groups_created": (GroupRow.created_by, GroupRow),
    "group_memberships": (GroupMemberRow.account, GroupMemberRow),
    "queued_outgoing": (QueuedMessageRow.sender, QueuedMessageRow),
}


def features(session: Session, account: str) -> list[dict[str, Any]]:
    total = int(session.scalar(select(func.count()).select_from(AccountRow).where(AccountRow.deleted_at.is_(None)))
                or 0)
    rows: list[dict[str, Any]] = []
    latest = session.scalars(latest_scores(session)).all()
    mine = next((r for r in latest if r.account == account), None)
    if mine is not None:
        population: dict[str, list[float]] = {}
        for r in latest:
            for name, value in contributions_of(r.contributions):
                population.setdefault(name, []).append(value)
        for name, value in contributions_of(mine.contributions):
            rows.append({"feature": name, "source": "model", "value": value,
                         "percentile": percentile(population.get(name, []), value, len(latest)),
                         "population_median": _median(population.get(name, []))})
    for name, (col, table) in RELATIONAL.items():
        counts = [float(n) for (n,) in session.execute(select(func.count()).select_from(table).group_by(col)).all()]
        value = float(session.scalar(select(func.count()).select_from(table).where(col == account)) or 0)
        rows.append({"feature": name, "source": "relay", "value": value,
                     "percentile": percentile(counts, value, total), "population_median": _median(counts, total)})
    return rows


def _median(values: list[float], total: int | None = None) -> float | None:
    padded = sorted(values + [0.0] * max(0, (total or 0) - len(values)))
    if not padded:
        return None
    return padded[len(padded) // 2]


def explanation(session: Session, account: str) -> dict[str, Any]:
    score = session.scalars(select(ScoreRow).where(ScoreRow.account == account, ScoreRow.shadow.is_(False))
                            .order_by(ScoreRow.ts.desc(), ScoreRow.id.desc()).limit(1)).first()
    if score is None:
        return {"score": None, "model_version": None, "ts": None, "top": []}
    top = sorted(contributions_of(score.contributions), key=lambda fv: abs(fv[1]), reverse=True)[:8]
    return {"score": score.score, "model_version": score.model_version, "ts": score.ts,
            "top": [{"feature": f, "value": v} for f, v in top]}


def timeline(session: Session, account: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []

    def add(ts: int, kind: str, value: float | None = None, detail: str | None = None) -> None:
        events.append({"ts": ts, "kind": kind, "value": value, "detail": detail})

    for r in session.scalars(select(ScoreRow).where(ScoreRow.account == account).order_by(ScoreRow.ts.desc())
                             .limit(TIMELINE_LIMIT)):
        add(r.ts, "shadow_score" if r.shadow else "score", r.score, r.model_version)
    for d in session.scalars(select(DecisionRow).where(DecisionRow.account == account)):
        add(d.created_at, "decision", None, f"{d.action}:{d.reason_code}:{d.source}")
    for rep in session.scalars(select(ReportRow).where(ReportRow.reported == account).limit(TIMELINE_LIMIT)):
        add(rep.ts, "report_received", float(rep.messages_verified), rep.reason_code)
    for rep in session.scalars(select(ReportRow).where(ReportRow.reporter == account).limit(TIMELINE_LIMIT)):
        add(rep.ts, "report_filed", None, rep.reason_code)
    for b in session.scalars(select(BlockRow).where(BlockRow.blocked == account).limit(TIMELINE_LIMIT)):
        add(b.ts, "blocked_by", None, b.blocker)
    for c in session.scalars(select(ContactRow).where(ContactRow.account == account).limit(TIMELINE_LIMIT)):
        add(c.added_at, "contact_added", None, c.contact)
    for g in session.scalars(select(GroupMemberRow).where(GroupMemberRow.account == account).limit(TIMELINE_LIMIT)):
        add(g.added_at, "group_joined", None, g.group_id)
    applied = session.execute(select(EnforcementApplicationRow, DecisionRow.action)
                              .join(DecisionRow, DecisionRow.id == EnforcementApplicationRow.decision_id)
                              .where(DecisionRow.account == account)).all()
    for app, action in applied:
        add(app.applied_at, "enforcement_applied", None, f"{action}@{app.node}")
    events.sort(key=lambda e: e["ts"], reverse=True)
    return events[:TIMELINE_LIMIT]


def reports_received(session: Session, account: str) -> list[dict[str, Any]]:
    rows = session.scalars(select(ReportRow).where(ReportRow.reported == account).order_by(ReportRow.ts.desc())
                           .limit(200)).all()
    return [{"id": r.id, "reporter": r.reporter, "reason_code": r.reason_code, "messages_named": r.messages_named,
             "messages_verified": r.messages_verified, "verified": r.messages_verified > 0, "ts": r.ts,
             "decision_id": r.decision_id, "reporter_notified_at": r.reporter_notified_at} for r in rows]


def neighbourhood(session: Session, account: str) -> dict[str, Any]:
    n = NEIGHBOURS_PER_KIND
    edges: list[dict[str, str]] = []

    def link(src: str, dst: str, kind: str) -> None:
        edges.append({"source": src, "target": dst, "kind": kind})

    for c in session.scalars(select(ContactRow.contact).where(ContactRow.account == account).limit(n)):
        link(account, c, "contact")
    for c in session.scalars(select(ContactRow.account).where(ContactRow.contact == account).limit(n)):
        link(c, account, "contact")
    for r in session.scalars(select(QueuedMessageRow.recipient).where(QueuedMessageRow.sender == account)
                             .distinct().limit(n)):
        link(account, r, "queued")
    for b in session.scalars(select(BlockRow.blocker).where(BlockRow.blocked == account).limit(n)):
        link(b, account, "blocked")
    for r in session.scalars(select(ReportRow.reporter).where(ReportRow.reported == account).distinct().limit(n)):
        link(r, account, "reported")
    for g in session.scalars(select(GroupMemberRow.group_id).where(GroupMemberRow.account == account).limit(n)):
        link(account, g, "member")
    for g in session.scalars(select(GroupRow.id).where(GroupRow.created_by == account).limit(n)):
        link(account, g, "created")
    unique_edges = list({(e["source"], e["target"], e["kind"]): e for e in edges}.values())
    ids = {account} | {e["source"] for e in unique_edges} | {e["target"] for e in unique_edges}
    banned = {a for a in ids if a.startswith("a") and (d := active_decision(session, a)) is not None
              and d.action == "ban"}
    nodes = [{"id": i, "kind": "group" if i.startswith("g") else "account", "banned": i in banned,
              "focus": i == account} for i in sorted(ids)]
    fanout = len({e["target"] for e in unique_edges if e["source"] == account and e["kind"] in ("contact", "queued")})
    return {"nodes": nodes, "edges": unique_edges, "fanout": fanout}


def enforcement_history(session: Session, account: str) -> list[dict[str, Any]]:
    decisions = session.scalars(select(DecisionRow).where(DecisionRow.account == account)
                                .order_by(DecisionRow.created_at.desc())).all()
    applied: dict[str, list[dict[str, Any]]] = {}
    for app in session.scalars(select(EnforcementApplicationRow).where(
            EnforcementApplicationRow.decision_id.in_([d.id for d in decisions]))):
        applied.setdefault(app.decision_id, []).append({"node": app.node, "applied_at": app.applied_at})
    appeals = {a.decision_id: a for a in session.scalars(select(AppealRow).where(AppealRow.account == account))}
    return [{"decision_id": d.id, "action": d.action, "reason_code": d.reason_code, "source": d.source,
             "actor": d.actor, "created_at": d.created_at, "expires_at": d.expires_at, "status": d.status,
             "published_at": d.published_at, "applied": applied.get(d.id, []),
             "appeal": None if d.id not in appeals else {"id": appeals[d.id].id, "status": appeals[d.id].status},
             "evidence": d.evidence or {}} for d in decisions]


def account_page(db: Database, account: str) -> dict[str, Any]:
    with db.session() as s:
        row: AccountRow = require_account(s, account)
        current = active_decision(s, account)
        return {
            "account": {"id": row.id, "handle": row.handle, "net_bucket": row.net_bucket,
                        "client_kind": row.client_kind, "registered_at": row.registered_at,
                        "deleted_at": row.deleted_at},
            "status": "ok" if current is None else current.action,
            "active_decision_id": None if current is None else current.id,
            "timeline": timeline(s, account),
            "features": features(s, account),
            "explanation": explanation(s, account),
            "reports": reports_received(s, account),
            "neighbourhood": neighbourhood(s, account),
            "enforcement": enforcement_history(s, account),
        }
