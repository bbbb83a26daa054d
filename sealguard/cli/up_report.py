"""The figures `up --headless` ends with, from the clients' own books and the database.

- users / spammers: the simulated accounts and the spammers among them (ground truth);
- spammers_banned / normal_banned: accounts the relay applied a ban to (`enforcement_applications`);
- delivered: acknowledged messages that reached their recipient's client;
- withheld: messages held back in the queue because their sender or their recipient was banned;
- undelivered: acknowledged to the sender, yet neither delivered nor withheld (must be 0);
- ban_latency_p50_s: from a spammer's first spam message to the relay's application of its ban.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from sqlalchemy import select

from sealguard.settings import Settings
from sealguard.storage import Database, DecisionRow, EnforcementApplicationRow, QueuedMessageRow


def applied_bans(db: Database, accounts: set[str]) -> dict[str, int]:
    """account → ms when the relay first applied a ban to it."""
    with db.session() as s:
        rows = s.execute(
            select(DecisionRow.account, EnforcementApplicationRow.applied_at)
            .join(EnforcementApplicationRow, EnforcementApplicationRow.decision_id == DecisionRow.id)
            .where(DecisionRow.action == "ban")
        ).all()
    first: dict[str, int] = {}
    for account, applied_at in rows:
        if account in accounts and (account not in first or applied_at < first[account]):
            first[account] = applied_at
    return first


def withheld_ids(db: Database, senders: set[str]) -> set[str]:
    with db.session() as s:
        rows = s.execute(select(QueuedMessageRow.message_id, QueuedMessageRow.sender)
                         .where(QueuedMessageRow.withheld.is_(True))).all()
    return {mid for mid, sender in rows if sender in senders}


def headless_figures(settings: Settings, result: Any) -> dict[str, object]:
    labels: dict[str, int] = result.labels
    accounts = set(labels)
    spammers = {a for a, label in labels.items() if label == 1}
    db = Database(settings.database_url, migrate=False)
    try:
        bans = applied_bans(db, accounts)
        held = withheld_ids(db, accounts)
    finally:
        db.dispose()
    acked = set().union(*result.acked_ids.values()) if result.acked_ids else set()
    received = set().union(*result.received_ids.values()) if result.received_ids else set()
    latencies = [(bans[a] - result.first_spam_ms[a]) / 1000.0 for a in spammers
                 if a in bans and a in result.first_spam_ms]
    write_books(settings.state_dir / "logs" / "up_books.json", result, bans, acked - received - held)
    return {
        "users": len(accounts),
        "spammers": len(spammers),
        "spammers_banned": sum(1 for a in spammers if a in bans),
        "normal_banned": sum(1 for a in bans if labels.get(a) == 0),
        "delivered": len(acked & received),
        "undelivered": len(acked - received - held),
        "withheld": len(held),
        "ban_latency_p50_s": statistics.median(latencies) if latencies else None,
    }


def write_books(path: Path, result: Any, bans: dict[str, int], undelivered: set[str]) -> None:
    """Per-account books of the run (ids, roles and counts only), to investigate a figure."""
    accounts = {
        a: {"role": role, "label": result.labels.get(a), "banned_at": bans.get(a),
            "first_spam_ms": result.first_spam_ms.get(a), "acked": len(result.acked_ids.get(a, ())),
            "received": len(result.received_ids.get(a, ()))}
        for a, role in result.roles.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"accounts": accounts, "undelivered_ids": sorted(undelivered)}, indent=1))
