"""Enforcement (`sg.enforcement.v1`), scores (`sg.scores.v1`) and the label record."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from sealguard.contracts.base import Event
from sealguard.contracts.types import (
    AccountId,
    Action,
    ActorId,
    DecisionId,
    DecisionSource,
    FeatureName,
    LabelSource,
    ModelVersion,
    ReasonCode,
    TimestampMs,
)


class Enforcement(Event):
    """A decision to apply in the relay. Written to the database before it is published."""

    type: Literal["enforcement"] = "enforcement"
    decision_id: DecisionId
    account: AccountId
    action: Action
    reason_code: ReasonCode
    source: DecisionSource
    actor: ActorId
    expires_at: TimestampMs | None = None


class Contribution(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    feature: FeatureName
    value: float


class Score(Event):
    type: Literal["score"] = "score"
    account: AccountId
    model_version: ModelVersion
    score: Annotated[float, Field(ge=0.0, le=1.0)]
    contributions: Annotated[list[Contribution], Field(max_length=16)] = []
    shadow: bool = False


class Label(BaseModel):
    """One row of the labels table (the database carries it, not a topic)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    account: AccountId
    label: Annotated[int, Field(ge=0, le=1)]  # 1 = abusive, 0 = legitimate
    source: LabelSource
    decision_id: DecisionId | None = None
    ts: TimestampMs
