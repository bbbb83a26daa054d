"""`decode_batch` accepts and rejects exactly what `decode` does, with the same values and errors.

Every record here goes through both: one at a time, and in polls mixing good and bad records (the
batch path parses a poll as one JSON array, so neighbours must never change a record's fate).
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from sealguard.contracts import (
    EVENTS_BY_NAME,
    SIGNAL_TYPES,
    Action,
    ClientKind,
    ContractError,
    Enforcement,
    Limit,
    MessageKind,
    ReasonCode,
    Score,
    decode,
    encode,
    new_account_id,
    new_decision_id,
    new_group_id,
)
from sealguard.contracts.batch import FAST_TYPES, decode_batch
from sealguard.contracts.signals import (
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

# The contract's own bad cases (tests/sealguard/test_contracts.py), then more.
CONTRACT_CASES = [
    b"{not json",
    b"[1, 2]",
    b'{"type": "message.deleted", "v": 1}',
    b'{"type": "message.sent", "v": 2}',
    b'{"type": "message.sent", "v": 1, "sender": "+15551234567"}',
    (b'{"type": "contact.added", "v": 1, "account": "a00000000000000000000", "contact": "a00000000000000000001", '
     b'"text": "hi"}'),
    (b'{"type":"message.sent","v":1,"sender":"a00000000000000000000","size_bucket":3,"kind":"text",'
     b'"first_contact":false,"recipient_online":true}'),
]


def _a() -> str:
    return new_account_id()


def _samples() -> list[Any]:
    b, n = "b" + "1" * 20, "n" + "2" * 12
    return [
        AccountRegistered(account=_a(), net_bucket=n, client_kind=ClientKind.mobile),
        SessionOpened(account=_a(), net_bucket=n, node="relay-1"),
        SessionClosed(account=_a(), net_bucket=n, node="relay-1", duration_s=12.5),
        MessageSent(sender=_a(), recipient=_a(), size_bucket=7, kind=MessageKind.text, first_contact=True,
                    recipient_online=False),
        MessageSent(sender=_a(), group=new_group_id(), size_bucket=40, kind=MessageKind.media, first_contact=False,
                    recipient_online=True),
        ContactAdded(account=_a(), contact=_a()),
        ContactBlocked(blocker=_a(), blocked=_a()),
        ReportFiled(reporter=_a(), reported=_a(), reason_code=ReasonCode.scam, messages_named=3, messages_verified=-1),
        GroupCreated(group=new_group_id(), actor=_a()),
        GroupCreated(group=new_group_id(), actor=_a(), member=_a(), member_is_contact=True),
        GroupMemberAdded(group=new_group_id(), actor=_a(), member=_a(), member_is_contact=False),
        GroupMemberRemoved(group=new_group_id(), actor=_a(), member=_a(), member_is_contact=True),
        MediaUploaded(account=_a(), blob=b, size_bucket=0),
        MediaFetched(account=_a(), blob=b, fetch_count=2),
        LimitBreached(net_bucket=n, limit=Limit.register),
        LimitBreached(account=_a(), limit=Limit.send),
        EnforcementApplied(account=_a(), decision_id=new_decision_id(), action=Action.ban, node="relay-2"),
        Enforcement(decision_id=new_decision_id(), account=_a(), action=Action.ban, reason_code=ReasonCode.spam,
                    source="auto", actor="rule:burst", expires_at=5),
        Score(account=_a(), model_version="lgbm-1", score=0.5, contributions=[{"feature": "sends_1m", "value": 1}]),
    ]


ODD_VALUES: list[Any] = [None, 0, -1, 1, 2**63, 2**70, 1.0, 1.5, -0.0, float("inf"), True, False, "", "0", "1",
                         "text", "ban", "a" + "0" * 20, "a" + "0" * 20 + "\n", "A" + "0" * 20, "a" + "0" * 21,
                         "g" + "0" * 20, "relay-1", "x" * 40, "\u00e9", [], {}, ["a"], {"a": 1}]


def _mutations(raw: bytes, rng: random.Random) -> list[bytes]:
    """Variants of one valid record: every field dropped, nulled, retyped; extra, duplicate and
    reordered keys; whitespace; bytes that are not JSON; splits."""
    obj = json.loads(raw)
    out: list[bytes] = []
    for key in list(obj):
        dropped = {k: v for k, v in obj.items() if k != key}
        out.append(json.dumps(dropped, separators=(",", ":")).encode())
        for value in rng.sample(ODD_VALUES, 8):
            changed = dict(obj)
            changed[key] = value
            out.append(json.dumps(changed, separators=(",", ":")).encode())
    extra = dict(obj, note="hello")
    out.append(json.dumps(extra).encode())
    out.append(json.dumps(dict(reversed(list(obj.items())))).encode())  # another key order, with spaces
    out.append(b" " + raw)
    out.append(raw + b"\n")
    out.append(raw[:-1] + b',"ts":' + str(obj.get("ts", 1)).encode() + b"}")  # a duplicate key (last wins)
    out.append(raw[:-1] + b',"type":"contact.added"}')
    out.append(raw.replace(b'"ts":', b'"ts": ', 1))
    out.append(raw.replace(b'"ts":', b'"ts":1e3,"x":', 1))
    out.append(raw[: len(raw) // 2])
    out.append(raw + raw)
    out.append(raw[:-1] + b"}}")
    out.append(b"{" + raw + b"}")
    out.append(raw.replace(b"}", b',"nested":{"a":1}}'))
    out.append(raw.replace(b'"v":1', b'"v":1.0'))
    out.append(raw.replace(b'"v":1', b'"v":true'))
    out.append(raw.replace(b'"ts":', b'"ts":"', 1).replace(b',"id"', b'","id"', 1))
    out.append(b"\xff" + raw[1:])
    out.append(raw.replace(b'"', b"'"))
    return out


def _same(raw: Any, got: Any) -> None:
    """`got` (decode_batch's answer for `raw`) says what decode says."""
    try:
        want = decode(raw)
    except ContractError as exc:
        assert isinstance(got, ContractError), (raw, got)
        assert str(got) == str(exc), raw
        return
    assert isinstance(got, dict), (raw, got)
    mine = EVENTS_BY_NAME[got["type"]].model_validate(got)
    # Fields the record left out that the model fills from a factory (ts, id) differ per call.
    fresh = {k for k, f in type(want).model_fields.items() if f.default_factory is not None}
    sent = json.loads(raw)
    fresh -= set(sent) if isinstance(sent, dict) else set()
    assert type(mine) is type(want) and mine.model_dump(exclude=fresh) == want.model_dump(exclude=fresh), raw


def _records(seed: int) -> list[Any]:
    rng = random.Random(seed)
    good = [encode(e) for e in _samples()]
    records: list[Any] = list(good) + CONTRACT_CASES
    for raw in good:
        records += _mutations(raw, rng)
    return records


def test_every_record_alone_gets_the_answer_decode_gives() -> None:
    records = _records(1)
    assert len(records) > 1000
    for raw in records:
        _same(raw, decode_batch([raw])[0])


@pytest.mark.parametrize("seed", range(6))
def test_polls_mixing_good_and_bad_records_get_the_same_answers(seed: int) -> None:
    rng = random.Random(seed)
    records = _records(seed)
    good = [encode(e) for e in _samples()]
    for _ in range(40):
        poll = [rng.choice(good) for _ in range(rng.randrange(1, 30))]
        for _ in range(rng.randrange(0, 3)):
            poll.insert(rng.randrange(len(poll) + 1), rng.choice(records))
        got = decode_batch(poll)
        assert len(got) == len(poll)
        for raw, answer in zip(poll, got):
            _same(raw, answer)


def test_a_record_split_across_two_cannot_pass_as_two_events() -> None:
    """Joined into one JSON array, `{A},{B1` + `B2}` would read as two valid events: neither record is one."""
    a = encode(ContactAdded(account=_a(), contact=_a()))
    b = encode(ContactBlocked(blocker=_a(), blocked=_a()))
    cut = b.index(b',"blocked"')
    first, second = a + b"," + b[:cut], b[cut + 1:]
    got = decode_batch([first, second])
    assert all(isinstance(g, ContractError) for g in got)
    for raw, answer in zip([first, second], got):
        _same(raw, answer)
    assert isinstance(decode_batch([a + b"," + b])[0], ContractError)


def test_the_fast_path_covers_every_signal_and_takes_what_encode_writes() -> None:
    """Every signal type is validated column by column (Score, with its nested contributions, is left to decode)."""
    assert {cls.model_fields["type"].default for cls in SIGNAL_TYPES} <= FAST_TYPES
    assert "score" not in FAST_TYPES
    samples = [e for e in _samples() if e.type in FAST_TYPES]
    got = decode_batch([encode(e) for e in samples])
    assert got == [json.loads(encode(e)) for e in samples]  # the parsed record itself: no model was built


def test_non_bytes_and_empty_records() -> None:
    got = decode_batch([b"", b"{}", "{}", b"null"])
    assert all(isinstance(g, ContractError) for g in got)
    for raw, answer in zip([b"", b"{}", "{}", b"null"], got):
        _same(raw, answer)
