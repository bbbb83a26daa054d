"""Field types shared by every v1 contract.

Every string is either an enum code or an id with a strict pattern; nothing here can hold
free text, message content, ciphertext or key material (tests/contracts walk every schema).
"""

from __future__ import annotations

import enum
import secrets
from typing import Annotated

from pydantic import Field, StringConstraints

# Opaque random ids, never phone numbers or handles.
AccountId = Annotated[str, StringConstraints(pattern=r"^a[0-9a-f]{20}$", max_length=21)]
GroupId = Annotated[str, StringConstraints(pattern=r"^g[0-9a-f]{20}$", max_length=21)]
# Hashed blob id (the relay hashes its storage id; signals never carry the storage id).
BlobId = Annotated[str, StringConstraints(pattern=r"^b[0-9a-f]{20}$", max_length=21)]
# Salted hash of the peer's /24 (IPv4) or /48 (IPv6), derived by the relay.
NetBucket = Annotated[str, StringConstraints(pattern=r"^n[0-9a-f]{12}$", max_length=13)]
NodeId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,31}$", max_length=32)]
DecisionId = Annotated[str, StringConstraints(pattern=r"^d[0-9a-f]{32}$", max_length=33)]
EventId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$", max_length=32)]
# Who produced a decision: a rule id, a model version or a reviewer id.
ActorId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.:-]{0,63}$", max_length=64)]
ModelVersion = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", max_length=64)]
FeatureName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$", max_length=64)]
TimestampMs = Annotated[int, Field(ge=0)]
SizeBucket = Annotated[int, Field(ge=0, le=40)]  # floor(log2(bytes)), capped


def new_account_id() -> str:
    return "a" + secrets.token_hex(10)


def new_group_id() -> str:
    return "g" + secrets.token_hex(10)


def new_decision_id() -> str:
    return "d" + secrets.token_hex(16)


def new_event_id() -> str:
    return secrets.token_hex(16)


def size_bucket(nbytes: int) -> int:
    """floor(log2(n)) capped to 40: the only size information a signal may carry."""
    return min(max(int(nbytes), 1).bit_length() - 1, 40)


class ClientKind(str, enum.Enum):
    mobile = "mobile"
    desktop = "desktop"
    cli = "cli"
    sdk = "sdk"


class MessageKind(str, enum.Enum):
    text = "text"
    media = "media"
    control = "control"


class ReasonCode(str, enum.Enum):
    """Why: for reports, decisions and appeals alike. A reviewer's own words go to the audit log."""

    spam = "spam"
    bulk_messaging = "bulk_messaging"
    automated_behaviour = "automated_behaviour"
    scam = "scam"
    harassment = "harassment"
    impersonation = "impersonation"
    fake_accounts = "fake_accounts"
    group_spam = "group_spam"
    rule_hit = "rule_hit"
    other_policy = "other_policy"
    appeal_upheld = "appeal_upheld"
    appeal_overturned = "appeal_overturned"
    reviewer_lift = "reviewer_lift"
    false_positive = "false_positive"


class Action(str, enum.Enum):
    ban = "ban"
    restrict = "restrict"
    warn = "warn"
    lift = "lift"


class DecisionSource(str, enum.Enum):
    auto = "auto"
    reviewer = "reviewer"


class LabelSource(str, enum.Enum):
    simulator = "simulator"
    reviewer = "reviewer"
    appeal = "appeal"


class Limit(str, enum.Enum):
    """Names of the relay's rate limits (the table itself lives in relay/)."""

    register = "register"
    challenge = "challenge"
    send = "send"
    first_contact = "first_contact"
    prekey_claim = "prekey_claim"
    report = "report"
    media_upload = "media_upload"
    group_add = "group_add"
    handle_lookup = "handle_lookup"
