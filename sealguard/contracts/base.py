"""The event envelope every contract shares: `type`, `v`, `ts` (ms), `id`."""

from __future__ import annotations

import time
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from sealguard.contracts.types import EventId, TimestampMs, new_event_id


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Event(BaseModel):
    """Base of every v1 event. Subclasses fix `type` with a Literal."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)

    VERSION: ClassVar[int] = 1

    type: str
    v: Literal[1] = 1
    ts: TimestampMs = Field(default_factory=now_ms)
    id: EventId = Field(default_factory=new_event_id)
