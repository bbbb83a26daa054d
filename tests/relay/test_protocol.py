"""The codec: every frame type round-trips, bad input gets a typed error naming what was wrong."""

from __future__ import annotations

import os

import pytest

from relay.protocol import (
    MAX_FRAME_UNAUTHENTICATED,
    SCHEMAS,
    ErrorCode,
    FrameReader,
    FrameType,
    LocalProtocolError,
    PeerProtocolError,
    decode_deliver,
    decode_message_ids,
    decode_payload,
    decode_send,
    encode,
    encode_deliver,
    encode_deliver_ack,
    encode_frame,
    encode_send,
    encode_send_ack,
)

ACC = "a" + "1" * 20
MID = os.urandom(16)
SAMPLE = {
    "u8": 7, "u16": 513, "u32": 70000, "u64": 2**40 + 5, "acct": ACC, "mid": MID, "str": "héllo",
    "accts": [ACC, "a" + "2" * 20], "mids": [MID, os.urandom(16)], "keys": [("k1", "pub1"), ("k2", "pub2")],
    "blob": b"\x00\x01blob", "rest": b"ciphertext\x00",
}


@pytest.mark.parametrize("ftype", list(FrameType), ids=lambda t: t.name)
def test_every_frame_type_round_trips(ftype: FrameType) -> None:
    values = tuple(SAMPLE[kind] for _, kind in SCHEMAS[ftype])
    wire = encode(ftype, 42, *values, flags=1)
    frames = FrameReader().feed(wire)
    assert len(frames) == 1
    got_type, flags, rid, payload = frames[0]
    assert (got_type, flags, rid) == (ftype, 1, 42)
    assert decode_payload(got_type, payload) == values


def test_stream_split_anywhere_yields_the_same_frames() -> None:
    wire = b"".join(encode(FrameType.OK, i, i) for i in range(50))
    for cut in range(1, 40):
        reader = FrameReader()
        frames = []
        for i in range(0, len(wire), cut):
            frames += reader.feed(wire[i:i + cut])
        assert [rid for _, _, rid, _ in frames] == list(range(50))
        assert reader.buffered == 0


def test_oversized_length_rejected_before_the_body_arrives() -> None:
    reader = FrameReader(max_len=MAX_FRAME_UNAUTHENTICATED)
    with pytest.raises(PeerProtocolError) as err:
        reader.feed((10**9).to_bytes(4, "big"))  # only the length: nothing else buffered
    assert err.value.code is ErrorCode.FRAME_TOO_LARGE
    assert "exceeds the limit" in str(err.value)


def test_bad_version_unknown_type_and_short_header() -> None:
    good = encode(FrameType.PING, 1)
    with pytest.raises(PeerProtocolError) as err:
        FrameReader().feed(good[:4] + b"\x09" + good[5:])
    assert err.value.code is ErrorCode.BAD_VERSION
    with pytest.raises(PeerProtocolError) as err:
        FrameReader().feed(good[:5] + b"\xee" + good[6:])
    assert err.value.code is ErrorCode.UNKNOWN_FRAME and "0xee" in str(err.value)
    with pytest.raises(PeerProtocolError) as err:
        FrameReader().feed(b"\x00\x00\x00\x02xx")
    assert err.value.code is ErrorCode.MALFORMED


def test_truncated_payload_names_the_field() -> None:
    wire = encode(FrameType.LOGIN, 3, ACC, "sig")
    _, _, _, payload = FrameReader().feed(wire)[0]
    with pytest.raises(PeerProtocolError) as err:
        decode_payload(FrameType.LOGIN, payload[:10])
    assert err.value.code is ErrorCode.MALFORMED and "LOGIN.account" in str(err.value)
    with pytest.raises(PeerProtocolError) as err:
        decode_payload(FrameType.LOGIN, payload + b"zz")
    assert "trailing" in str(err.value)


def test_encoding_a_bad_value_is_our_error_not_the_peers() -> None:
    with pytest.raises(LocalProtocolError):
        encode(FrameType.ADD_CONTACT, 1, "too-short")
    with pytest.raises(LocalProtocolError):
        encode(FrameType.OK, 1)


def test_hot_path_helpers_agree_with_the_schemas() -> None:
    wire = encode_send(9, MID, ACC.encode(), 0, b"ct")
    assert wire == encode(FrameType.SEND, 9, MID, ACC, 0, b"ct")
    _, _, _, payload = FrameReader().feed(wire)[0]
    assert decode_send(payload) == (MID, ACC.encode(), 0, b"ct")
    assert encode_send_ack(4, MID, 1) == encode(FrameType.SEND_ACK, 4, MID, 1)
    gid = "g" + "3" * 20
    wire = encode_deliver(MID, ACC.encode(), gid.encode(), 2, 123, b"xyz", flags=1)
    assert wire == encode(FrameType.DELIVER, 0, MID, ACC, gid, 2, 123, b"xyz", flags=1)
    _, _, _, payload = FrameReader().feed(wire)[0]
    assert decode_deliver(payload) == (MID, ACC, gid, 2, 123, b"xyz")
    assert encode_deliver_ack([MID]) == encode(FrameType.DELIVER_ACK, 0, [MID])
    _, _, _, payload = FrameReader().feed(encode_deliver_ack([MID, MID]))[0]
    assert decode_message_ids(FrameType.DELIVER_ACK, payload) == [MID, MID]
    with pytest.raises(PeerProtocolError):
        decode_send(b"short")
    with pytest.raises(PeerProtocolError):
        decode_deliver(b"short")
    assert encode_frame(FrameType.PING, 5) == encode(FrameType.PING, 5)
