"""The v1 contracts: every event on every topic, one versioned schema each.

Frozen by the spine issue. A new field or type means a new version (v2), never an edit here.
"""

from sealguard.contracts.base import Event, now_ms
from sealguard.contracts.codec import (
    ALL_EVENT_TYPES,
    EVENTS_BY_NAME,
    ContractError,
    counterpart_of,
    decode,
    encode,
    key_of,
)
from sealguard.contracts.enforcement import Contribution, Enforcement, Label, Score
from sealguard.contracts.signals import (
    SIGNAL_TYPES,
    AccountRegistered,
    ContactAdded,
    ContactBlocked,
    EnforcementApplied,
    GroupCreated,
    GroupMemberAdded,
    GroupMemberRemoved,
    LimitBreached,
    MediaFetched,
    MediaUploaded,
    MessageSent,
    ReportFiled,
    SessionClosed,
    SessionOpened,
)
from sealguard.contracts.types import (
    Action,
    ClientKind,
    DecisionSource,
    LabelSource,
    Limit,
    MessageKind,
    ReasonCode,
    new_account_id,
    new_decision_id,
    new_event_id,
    new_group_id,
    size_bucket,
)

__all__ = [
    "ALL_EVENT_TYPES", "EVENTS_BY_NAME", "SIGNAL_TYPES", "AccountRegistered", "Action", "ClientKind",
    "ContactAdded", "ContactBlocked", "ContractError", "Contribution", "DecisionSource", "Enforcement",
    "EnforcementApplied", "Event", "GroupCreated", "GroupMemberAdded", "GroupMemberRemoved", "Label",
    "LabelSource", "Limit", "LimitBreached", "MediaFetched", "MediaUploaded", "MessageKind", "MessageSent",
    "ReasonCode", "ReportFiled", "Score", "SessionClosed", "SessionOpened", "counterpart_of", "decode",
    "encode", "key_of", "new_account_id", "new_decision_id", "new_event_id", "new_group_id", "now_ms",
    "size_bucket",
]
