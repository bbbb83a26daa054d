"""Properties of the relay codec, for any input hypothesis can think of (issue 7, fuzzing):

* every frame type round-trips for arbitrary field values, however the stream is split;
* arbitrary bytes — random, or a valid frame with bytes changed — raise nothing but the codec's
  PeerProtocolError, from the frame reader and from every payload decoder;
* an oversized length is rejected as soon as its 4 bytes arrive, before any body is buffered,
  and a pending body is never allocated ahead of its bytes.

`bench/fuzz.py` does the same at a million frames and against a live server.
"""

from __future__ import annotations

import string
import tracemalloc
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.protocol import (
    HEADER_SIZE,
    MAX_FRAME,
    MAX_FRAME_UNAUTHENTICATED,
    SCHEMAS,
    ErrorCode,
    FrameReader,
    FrameType,
    PeerProtocolError,
    decode_deliver,
    decode_message_ids,
    decode_payload,
    decode_send,
    encode,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_acct = st.text(alphabet=string.ascii_lowercase + string.digits, min_size=21, max_size=21)
_mid = st.binary(min_size=16, max_size=16)
_str = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60).filter(
    lambda s: len(s.encode()) <= 255)
KINDS: dict[str, st.SearchStrategy[Any]] = {
    "u8": st.integers(0, 2**8 - 1), "u16": st.integers(0, 2**16 - 1), "u32": st.integers(0, 2**32 - 1),
    "u64": st.integers(0, 2**64 - 1), "acct": _acct, "mid": _mid, "str": _str,
    "accts": st.lists(_acct, max_size=5), "mids": st.lists(_mid, max_size=5),
    "keys": st.lists(st.tuples(_str, _str), max_size=4), "blob": st.binary(max_size=300),
    "rest": st.binary(max_size=300),
}
FRAME_TYPES = st.sampled_from(list(FrameType))


@st.composite
def frames(draw: st.DrawFn) -> tuple[FrameType, int, int, tuple[Any, ...]]:
    ftype = draw(FRAME_TYPES)
    values = tuple(draw(KINDS[kind]) for _, kind in SCHEMAS[ftype])
    return ftype, draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 255)), values


def _decode_all(data: bytes, max_len: int = MAX_FRAME) -> None:
    """Feed bytes and decode every frame they yield; anything but PeerProtocolError escapes."""
    reader = FrameReader(max_len)
    try:
        got = reader.feed(data)
    except PeerProtocolError:
        return
    for ftype, _flags, _rid, payload in got:
        try:
            decode_payload(ftype, payload)
        except PeerProtocolError:
            pass
        if ftype == FrameType.SEND:
            try:
                decode_send(payload)
            except PeerProtocolError:
                pass
        if ftype == FrameType.DELIVER:
            try:
                decode_deliver(payload)
            except PeerProtocolError:
                pass
        if ftype == FrameType.DELIVER_ACK:
            try:
                decode_message_ids(FrameType.DELIVER_ACK, payload)
            except PeerProtocolError:
                pass


@FAST
@given(frames())
def test_round_trip(frame: tuple[FrameType, int, int, tuple[Any, ...]]) -> None:
    ftype, rid, flags, values = frame
    wire = encode(ftype, rid, *values, flags=flags)
    [(got_type, got_flags, got_rid, payload)] = FrameReader().feed(wire)
    assert (got_type, got_flags, got_rid) == (ftype, flags, rid)
    assert decode_payload(got_type, payload) == values


@FAST
@given(st.lists(frames(), min_size=1, max_size=8), st.lists(st.integers(1, 64), min_size=1, max_size=20))
def test_any_split_of_a_stream_yields_the_same_frames(batch: list[Any], cuts: list[int]) -> None:
    wire = b"".join(encode(t, rid, *v, flags=fl) for t, rid, fl, v in batch)
    reader = FrameReader()
    got = []
    pos = 0
    i = 0
    while pos < len(wire):
        step = cuts[i % len(cuts)]
        got += reader.feed(wire[pos:pos + step])
        pos += step
        i += 1
    assert [(t, fl, rid) for t, fl, rid, _ in got] == [(t, fl, rid) for t, rid, fl, _ in batch]
    assert reader.buffered == 0


@FAST
@given(st.binary(max_size=2000), st.sampled_from([MAX_FRAME_UNAUTHENTICATED, MAX_FRAME]))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes, max_len: int) -> None:
    _decode_all(data, max_len)


@FAST
@given(frames(), st.data())
def test_mutated_valid_frames_raise_only_protocol_errors(frame: Any, data: st.DataObject) -> None:
    ftype, rid, flags, values = frame
    wire = bytearray(encode(ftype, rid, *values, flags=flags))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["set", "cut", "grow"]))
        if op == "set":
            wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
        elif op == "cut" and len(wire) > 1:
            del wire[data.draw(st.integers(1, len(wire) - 1)):]
        else:
            wire += data.draw(st.binary(min_size=1, max_size=40))
    _decode_all(bytes(wire))


@FAST
@given(FRAME_TYPES, st.binary(max_size=400))
def test_every_payload_decoder_rejects_garbage_with_a_protocol_error(ftype: FrameType, payload: bytes) -> None:
    try:
        decode_payload(ftype, payload)
    except PeerProtocolError as exc:
        assert exc.code == ErrorCode.MALFORMED
        assert ftype.name in exc.message  # names the frame (and the field) at fault


@FAST
@given(st.integers(MAX_FRAME_UNAUTHENTICATED + 1, 2**32 - 1), st.binary(max_size=HEADER_SIZE - 4))
def test_oversized_length_rejected_from_its_four_bytes(length: int, rest: bytes) -> None:
    reader = FrameReader(MAX_FRAME_UNAUTHENTICATED)
    try:
        reader.feed(length.to_bytes(4, "big") + rest)
    except PeerProtocolError as exc:
        assert exc.code == ErrorCode.FRAME_TOO_LARGE
        assert str(length) in exc.message
    else:
        raise AssertionError(f"length {length} > {MAX_FRAME_UNAUTHENTICATED} was not rejected")


@settings(max_examples=30, deadline=None)
@given(st.integers(HEADER_SIZE, MAX_FRAME))
def test_a_pending_body_is_not_allocated_ahead_of_its_bytes(length: int) -> None:
    """A header announcing up to MAX_FRAME (4 MiB) costs only the bytes actually received."""
    reader = FrameReader(MAX_FRAME)
    head = length.to_bytes(4, "big") + bytes((1, FrameType.PING, 0)) + b"\0\0\0\0"
    tracemalloc.start()
    try:
        reader.feed(head)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reader.buffered <= len(head)
    assert peak < 64 * 1024, f"feeding an {length}-byte header allocated {peak} bytes"
