"""JSON on the wire, so any Kafka tool can read it; one decoder for every topic."""

from __future__ import annotations

import json
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter, ValidationError

from sealguard.contracts.base import Event
from sealguard.contracts.enforcement import Enforcement, Score
from sealguard.contracts.signals import (
    SIGNAL_TYPES,
    ContactBlocked,
    GroupCreated,
    GroupMemberAdded,
    GroupMemberRemoved,
    LimitBreached,
    MessageSent,
    ReportFiled,
)

ALL_EVENT_TYPES: tuple[type[Event], ...] = (*SIGNAL_TYPES, Enforcement, Score)
EVENTS_BY_NAME: dict[str, type[Event]] = {cls.model_fields["type"].default: cls for cls in ALL_EVENT_TYPES}

AnyEvent = Annotated[Union[tuple(ALL_EVENT_TYPES)], Field(discriminator="type")]  # type: ignore[valid-type]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(AnyEvent)


class ContractError(ValueError):
    """A record that is not a valid v1 event; the message names what was wrong."""


def encode(event: Event) -> bytes:
    return event.model_dump_json(exclude_none=True).encode()


def decode(raw: bytes | str) -> Event:
    """Parse one record. Unknown types and versions get a ContractError that says so."""
    if not isinstance(raw, (bytes, bytearray, str)):
        raise ContractError(f"a record must be JSON text, not {type(raw).__name__} (a record without a value?)")
    try:
        return _ADAPTER.validate_json(raw)  # fast path: one pass in pydantic-core
    except ValidationError:
        pass
    try:
        head = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ContractError(f"not JSON: {exc}") from None
    if not isinstance(head, dict):
        raise ContractError("event must be a JSON object")
    etype, version = head.get("type"), head.get("v")
    if not isinstance(etype, str) or etype not in EVENTS_BY_NAME:  # a list or object here is no type either
        raise ContractError(f"unknown event type {etype!r}")
    if version != 1:
        raise ContractError(f"unsupported version v={version!r} for {etype} (this build reads v=1)")
    try:
        EVENTS_BY_NAME[etype].model_validate(head)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(event)'}: {e['msg']}" for e in exc.errors())
        raise ContractError(f"invalid {etype}: {problems}") from None
    raise ContractError(f"invalid {etype}")  # pragma: no cover - the fast path accepted it


def key_of(event: Event) -> str:
    """Partition key on `sg.signals.v1`: the account that acted."""
    for field in ("account", "sender", "blocker", "reporter", "actor"):
        value = getattr(event, field, None)
        if value:
            return str(value)
    if isinstance(event, LimitBreached) and event.net_bucket:
        return event.net_bucket
    raise ContractError(f"{event.type} has no account to key by")


def counterpart_of(event: Event) -> str | None:
    """The other side of a signal, for the re-keyed inbound stream (replies, blocks, reports)."""
    if isinstance(event, MessageSent):
        return event.recipient
    if isinstance(event, ContactBlocked):
        return event.blocked
    if isinstance(event, ReportFiled):
        return event.reported
    if isinstance(event, (GroupCreated, GroupMemberAdded, GroupMemberRemoved)):
        return event.member
    return None
