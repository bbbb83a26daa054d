"""Request bodies of the moderation API. Every field is bounded, so bad input is a 422 naming the
field rather than a database error; ids use the wire contracts' patterns."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from moderation.actions import MAX_NOTE, ReviewAction
from moderation.appeals import AppealOutcome
from moderation.auth import Role
from moderation.clusters import ClusterKind
from sealguard.contracts import ReasonCode
from sealguard.contracts.types import AccountId, DecisionId

# Timestamps in ms; bounded so no database integer overflows.
Ms = Annotated[int, Field(ge=0, le=2**53)]
Note = Annotated[str, StringConstraints(max_length=MAX_NOTE)]
Signature = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginBody(Body):
    username: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=256)]


class DecisionBody(Body):
    account: AccountId
    action: ReviewAction
    reason_code: ReasonCode
    expires_at: Ms | None = None
    case_id: Annotated[int, Field(ge=1, le=2**31)] | None = None
    note: Note | None = Field(default=None, description="The reviewer's own words: stored in the audit log only.")


class GroupActionBody(Body):
    action: ReviewAction
    reason_code: ReasonCode
    expected_count: Annotated[int, Field(ge=0, le=10_000)]
    expires_at: Ms | None = None
    note: Note | None = None


class ClusterBody(Body):
    kind: ClusterKind
    seed: AccountId
    action: ReviewAction = ReviewAction.ban
    window_s: Annotated[int, Field(ge=1, le=86_400)] = 60
    min_shared: Annotated[int, Field(ge=1, le=1000)] = 2


class ClusterActionBody(ClusterBody):
    reason_code: ReasonCode
    expected_count: Annotated[int, Field(ge=0, le=10_000)]
    expires_at: Ms | None = None
    note: Note | None = None


class ReportBody(Body):
    reporter: AccountId
    reported: AccountId
    reason_code: ReasonCode
    messages_named: Annotated[int, Field(ge=0, le=1000)] = 0
    ts: Ms
    signature: Signature


class AppealBody(Body):
    decision_id: DecisionId
    ts: Ms
    signature: Signature = Field(description="base64 Ed25519 signature of `sealguard-appeal:v1:{decision_id}:{ts}` "
                                             "by the account's identity key")


class ResolveBody(Body):
    outcome: AppealOutcome
    note: Note | None = None


class ReviewerBody(Body):
    username: Annotated[str, StringConstraints(min_length=2, max_length=32)]
    password: Annotated[str, StringConstraints(min_length=8, max_length=256)]
    role: Role


class RetentionBody(Body):
    scores_days: Annotated[int, Field(ge=0, le=36_500)] = 30
    cases_days: Annotated[int, Field(ge=0, le=36_500)] = 180
    reports_days: Annotated[int, Field(ge=0, le=36_500)] = 180
    notices_days: Annotated[int, Field(ge=0, le=36_500)] = 30
