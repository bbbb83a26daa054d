"""Who a group or bulk action would touch: a spam group's members, or a cluster around one account.

Clusters come only from metadata the database holds:
- `net_bucket`: accounts registered from the same salted network bucket;
- `registration_burst`: accounts registered within `window_s` of the seed account;
- `shared_targets`: accounts whose contacts or queued recipients overlap the seed's in at least
  `min_shared` targets (spam runs share target lists).

The preview and the action use the same selection, and the action refuses to run when the
count no longer matches what the reviewer was shown.
"""

from __future__ import annotations

import enum

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from moderation.errors import ErrorCode, ModerationError, NotFound
from sealguard.storage import AccountRow, ContactRow, GroupMemberRow, GroupRow, QueuedMessageRow

MAX_CLUSTER = 500


class ClusterKind(str, enum.Enum):
    net_bucket = "net_bucket"
    registration_burst = "registration_burst"
    shared_targets = "shared_targets"


def require_account(session: Session, account: str) -> AccountRow:
    row = session.get(AccountRow, account)
    if row is None:
        raise NotFound(f"unknown account {account}", ErrorCode.unknown_account)
    return row


def group_members(session: Session, group_id: str) -> list[str]:
    """Members of a group, and its creator (who may have left it after filling it)."""
    group = session.get(GroupRow, group_id)
    if group is None:
        raise NotFound(f"unknown group {group_id}")
    members = set(session.scalars(select(GroupMemberRow.account).where(GroupMemberRow.group_id == group_id)).all())
    members.add(group.created_by)
    return sorted(members)


def _targets(session: Session, account: str) -> set[str]:
    contacts = session.scalars(select(ContactRow.contact).where(ContactRow.account == account)).all()
    queued = session.scalars(select(QueuedMessageRow.recipient).where(QueuedMessageRow.sender == account)
                             .distinct()).all()
    return set(contacts) | set(queued)


def cluster(session: Session, kind: ClusterKind, seed: str, *, window_s: int = 60, min_shared: int = 2) -> list[str]:
    """Accounts in the seed's cluster (the seed included), at most MAX_CLUSTER, sorted."""
    if window_s < 1 or window_s > 86_400:
        raise ModerationError(f"window_s must be between 1 and 86400, got {window_s}")
    if min_shared < 1:
        raise ModerationError(f"min_shared must be at least 1, got {min_shared}")
    row = require_account(session, seed)
    live = AccountRow.deleted_at.is_(None)
    if kind is ClusterKind.net_bucket:
        found = session.scalars(select(AccountRow.id).where(AccountRow.net_bucket == row.net_bucket, live)
                                .limit(MAX_CLUSTER + 1)).all()
    elif kind is ClusterKind.registration_burst:
        lo, hi = row.registered_at - window_s * 1000, row.registered_at + window_s * 1000
        found = session.scalars(select(AccountRow.id).where(AccountRow.registered_at.between(lo, hi), live)
                                .limit(MAX_CLUSTER + 1)).all()
    else:
        targets = _targets(session, seed)
        if not targets:
            return [seed]
        by_contacts = session.execute(
            select(ContactRow.account, func.count()).where(ContactRow.contact.in_(targets))
            .group_by(ContactRow.account)).all()
        by_queue = session.execute(
            select(QueuedMessageRow.sender, func.count(func.distinct(QueuedMessageRow.recipient)))
            .where(QueuedMessageRow.recipient.in_(targets)).group_by(QueuedMessageRow.sender)).all()
        shared: dict[str, int] = {}
        for account, n in [*by_contacts, *by_queue]:
            shared[account] = max(shared.get(account, 0), int(n))
        found = [a for a, n in shared.items() if n >= min_shared] + [seed]
    accounts = sorted(set(found) | {seed})
    if len(accounts) > MAX_CLUSTER:
        raise ModerationError(f"the {kind.value} cluster of {seed} has more than {MAX_CLUSTER} accounts: "
                              "narrow it (a smaller window or more shared targets)")
    return accounts
