"""Signals, topic `sg.signals.v1`, keyed by the account that acted (see `key_of`).

Metadata only: who, when, how big (as a log2 bucket), to whom. Never content.
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from sealguard.contracts.base import Event
from sealguard.contracts.types import (
    AccountId,
    Action,
    BlobId,
    ClientKind,
    DecisionId,
    GroupId,
    Limit,
    MessageKind,
    NetBucket,
    NodeId,
    ReasonCode,
    SizeBucket,
)


class AccountRegistered(Event):
    type: Literal["account.registered"] = "account.registered"
    account: AccountId
    net_bucket: NetBucket
    client_kind: ClientKind


class SessionOpened(Event):
    type: Literal["session.opened"] = "session.opened"
    account: AccountId
    net_bucket: NetBucket
    node: NodeId


class SessionClosed(Event):
    type: Literal["session.closed"] = "session.closed"
    account: AccountId
    net_bucket: NetBucket
    node: NodeId
    duration_s: float


class MessageSent(Event):
    """One message accepted by the relay. Exactly one of recipient / group is set."""

    type: Literal["message.sent"] = "message.sent"
    sender: AccountId
    recipient: AccountId | None = None
    group: GroupId | None = None
    size_bucket: SizeBucket
    kind: MessageKind
    first_contact: bool
    recipient_online: bool

    @model_validator(mode="after")
    def _one_destination(self) -> MessageSent:
        if (self.recipient is None) == (self.group is None):
            raise ValueError("message.sent needs exactly one of recipient or group")
        return self


class ContactAdded(Event):
    type: Literal["contact.added"] = "contact.added"
    account: AccountId
    contact: AccountId


class ContactBlocked(Event):
    type: Literal["contact.blocked"] = "contact.blocked"
    blocker: AccountId
    blocked: AccountId


class ReportFiled(Event):
    type: Literal["report.filed"] = "report.filed"
    reporter: AccountId
    reported: AccountId
    reason_code: ReasonCode
    messages_named: int
    messages_verified: int


class GroupCreated(Event):
    type: Literal["group.created"] = "group.created"
    group: GroupId
    actor: AccountId
    member: AccountId | None = None
    member_is_contact: bool = False


class GroupMemberAdded(Event):
    type: Literal["group.member_added"] = "group.member_added"
    group: GroupId
    actor: AccountId
    member: AccountId
    member_is_contact: bool


class GroupMemberRemoved(Event):
    type: Literal["group.member_removed"] = "group.member_removed"
    group: GroupId
    actor: AccountId
    member: AccountId
    member_is_contact: bool


class MediaUploaded(Event):
    type: Literal["media.uploaded"] = "media.uploaded"
    account: AccountId
    blob: BlobId
    size_bucket: SizeBucket


class MediaFetched(Event):
    type: Literal["media.fetched"] = "media.fetched"
    account: AccountId
    blob: BlobId
    fetch_count: int


class LimitBreached(Event):
    """A rate limit was hit; before login the limit is per net_bucket, after it per account."""

    type: Literal["limit.breached"] = "limit.breached"
    account: AccountId | None = None
    net_bucket: NetBucket | None = None
    limit: Limit

    @model_validator(mode="after")
    def _one_subject(self) -> LimitBreached:
        if self.account is None and self.net_bucket is None:
            raise ValueError("limit.breached needs an account or a net_bucket")
        return self


class EnforcementApplied(Event):
    """The relay applied a decision (time-to-enforcement ends here)."""

    type: Literal["enforcement.applied"] = "enforcement.applied"
    account: AccountId
    decision_id: DecisionId
    action: Action
    node: NodeId


SIGNAL_TYPES: tuple[type[Event], ...] = (
    AccountRegistered,
    SessionOpened,
    SessionClosed,
    MessageSent,
    ContactAdded,
    ContactBlocked,
    ReportFiled,
    GroupCreated,
    GroupMemberAdded,
    GroupMemberRemoved,
    MediaUploaded,
    MediaFetched,
    LimitBreached,
    EnforcementApplied,
)

# Re-exported for docs: reason codes a report may carry.
REPORT_REASONS = (ReasonCode.spam, ReasonCode.scam, ReasonCode.harassment, ReasonCode.impersonation, ReasonCode.other_policy)
