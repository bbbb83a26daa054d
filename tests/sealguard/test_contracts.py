"""The v1 contracts: round trips, clear errors, and the no-content guarantee."""

from __future__ import annotations

import enum
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

import pytest
from annotated_types import MaxLen
from pydantic import BaseModel

from sealguard.contracts import (
    ALL_EVENT_TYPES,
    Action,
    ContractError,
    Enforcement,
    Label,
    MessageSent,
    ReportFiled,
    Score,
    counterpart_of,
    decode,
    encode,
    key_of,
    new_account_id,
    new_decision_id,
    size_bucket,
)
from sealguard.contracts.enforcement import Contribution

SAFE_SCALARS = (int, float, bool, type(None))


def _field_problems(model: type[BaseModel], path: str) -> list[str]:
    problems: list[str] = []
    for name, info in model.model_fields.items():
        problems += _annotation_problems(info.annotation, info.metadata, f"{path}.{name}")
    return problems


def _annotation_problems(annotation: Any, metadata: list[Any], where: str) -> list[str]:
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        base, *meta = get_args(annotation)
        return _annotation_problems(base, [*metadata, *meta], where)
    if origin in (Union, types.UnionType):
        return [p for arg in get_args(annotation) for p in _annotation_problems(arg, metadata, where)]
    if origin is Literal:
        return []
    if origin is list:
        (item,) = get_args(annotation)
        return _annotation_problems(item, [], where + "[]")
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _field_problems(annotation, where)
    if annotation in (bytes, bytearray, memoryview):
        return [f"{where}: bytes field could carry ciphertext or keys"]
    if annotation is str:
        pattern = next((getattr(m, "pattern", None) for m in metadata if getattr(m, "pattern", None)), None)
        max_len = next((m.max_length for m in metadata if isinstance(m, MaxLen) or hasattr(m, "max_length")), None)
        if pattern is None or not pattern.startswith("^") or not pattern.endswith("$"):
            return [f"{where}: free-text string (no anchored pattern)"]
        if " " in pattern or "\\s" in pattern or "." in pattern.replace("_.", "").replace(".:", ""):
            return [f"{where}: pattern {pattern!r} admits free text"]
        if max_len is None or max_len > 64:
            return [f"{where}: string without a short max_length"]
        return []
    if annotation in SAFE_SCALARS:
        return []
    return [f"{where}: unexpected type {annotation!r}"]


@pytest.mark.parametrize("model", [*ALL_EVENT_TYPES, Label, Contribution], ids=lambda m: m.__name__)
def test_no_field_can_carry_content_ciphertext_keys_or_free_text(model: type[BaseModel]) -> None:
    assert _field_problems(model, model.__name__) == []


def test_walker_catches_free_text_and_bytes() -> None:
    class Bad(BaseModel):
        note: str
        blob: bytes

    assert len(_field_problems(Bad, "Bad")) == 2


def _sample_message() -> MessageSent:
    return MessageSent(sender=new_account_id(), recipient=new_account_id(), size_bucket=size_bucket(100),
                       kind="text", first_contact=True, recipient_online=False)


def test_round_trip_and_keys() -> None:
    event = _sample_message()
    assert decode(encode(event)) == event
    assert key_of(event) == event.sender
    assert counterpart_of(event) == event.recipient
    d = Enforcement(decision_id=new_decision_id(), account=new_account_id(), action=Action.ban,
                    reason_code="bulk_messaging", source="auto", actor="rule:burst_new_account")
    assert decode(encode(d)) == d and key_of(d) == d.account
    s = Score(account=new_account_id(), model_version="lgbm-3", score=0.9,
              contributions=[{"feature": "sends_1m", "value": 0.4}])
    assert decode(encode(s)) == s


def test_wire_format_is_plain_json_with_envelope() -> None:
    raw = encode(_sample_message())
    assert raw.startswith(b'{"type":"message.sent","v":1,"ts":')


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"type": "message.deleted", "v": 1}', "unknown event type 'message.deleted'"),
        (b'{"type": "message.sent", "v": 2}', "unsupported version v=2"),
        (b'{"type": "message.sent", "v": 1, "sender": "+15551234567"}', "sender: String should match pattern"),
        (b'{"type": "contact.added", "v": 1, "account": "a00000000000000000000", '
         b'"contact": "a00000000000000000001", "text": "hi"}', "text: Extra inputs are not permitted"),
    ],
)
def test_bad_records_get_clear_errors(raw: bytes, message: str) -> None:
    with pytest.raises(ContractError, match=message):
        decode(raw)


def test_message_sent_needs_exactly_one_destination() -> None:
    with pytest.raises(ContractError, match="exactly one of recipient or group"):
        decode(b'{"type":"message.sent","v":1,"sender":"a00000000000000000000","size_bucket":3,'
               b'"kind":"text","first_contact":false,"recipient_online":true}')


def test_report_reason_is_an_enum() -> None:
    with pytest.raises(ValueError):
        ReportFiled(reporter=new_account_id(), reported=new_account_id(), reason_code="he said bad things",
                    messages_named=1, messages_verified=0)


def test_size_bucket_is_log2() -> None:
    assert [size_bucket(n) for n in (0, 1, 100, 1024, 10**15)] == [0, 0, 6, 10, 40]
