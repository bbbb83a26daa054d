"""Pure, fast encoding and decoding of relay frames.

A frame is `length u32 | version u8 | type u8 | flags u8 | request id u32 | payload`, where
`length` counts every byte after itself. `FrameReader` turns a byte stream into frames and
rejects an oversized length *before* buffering the body, so a peer cannot make the server
allocate more than `max_len` per connection. Payloads are laid out by the schemas in
`frames.py`; the encoders and decoders are compiled once per frame type at import. The hot-path
frames (SEND, DELIVER, SEND_ACK, DELIVER_ACK) also have hand-written helpers.

Errors: `ProtocolError` (root) carries an `ErrorCode` and a message naming what was wrong.
`PeerProtocolError` means the peer broke the protocol; `LocalProtocolError` means we were asked
to encode something the protocol cannot carry (our bug, not theirs).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

from relay.protocol.frames import (
    ACCOUNT_ID_LEN,
    HEADER_FORMAT,
    HEADER_SIZE,
    HEADER_TAIL,
    KNOWN_TYPES,
    MAX_FRAME,
    MESSAGE_ID_LEN,
    SCHEMAS,
    VERSION,
    ErrorCode,
    FrameType,
)

_HEADER = struct.Struct(HEADER_FORMAT)
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class ProtocolError(Exception):
    """Root of protocol errors; `code` is the ErrorCode the server answers with."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class PeerProtocolError(ProtocolError):
    """The peer sent bytes that are not a valid frame."""


class LocalProtocolError(ProtocolError):
    """We were asked to encode a value the protocol cannot carry."""


Frame = tuple[int, int, int, bytes]  # (type, flags, request id, payload)


# -- header --------------------------------------------------------------------------------

def encode_frame(ftype: int, rid: int, payload: bytes = b"", flags: int = 0) -> bytes:
    """One frame with an already-encoded payload."""
    return _HEADER.pack(HEADER_TAIL + len(payload), VERSION, ftype, flags, rid) + payload


class FrameReader:
    """Incremental decoder: `feed(bytes)` returns every complete frame, keeps the rest.

    Raises PeerProtocolError on an oversized length (checked as soon as the 4 length bytes are
    in, before the body is buffered), a wrong version or an unknown frame type.
    """

    __slots__ = ("_buf", "max_len")

    def __init__(self, max_len: int = MAX_FRAME) -> None:
        self._buf = b""
        self.max_len = max_len

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        if not self._buf:
            # The common case, one whole valid frame per read: one unpack, one slice. Anything else
            # (several frames, a partial one, any error) takes the general path below.
            n = len(data)
            if n >= HEADER_SIZE:
                length, version, ftype, flags, rid = _HEADER.unpack_from(data)
                if length + 4 == n and HEADER_TAIL <= length <= self.max_len and version == VERSION \
                        and ftype in KNOWN_TYPES:
                    return [(ftype, flags, rid, data[HEADER_SIZE:])]
        else:
            data = self._buf + data
        n = len(data)
        pos = 0
        frames: list[Frame] = []
        max_len = self.max_len
        while True:
            left = n - pos
            if left < 4:
                break
            length = (data[pos] << 24) | (data[pos + 1] << 16) | (data[pos + 2] << 8) | data[pos + 3]
            if length > max_len:
                raise PeerProtocolError(ErrorCode.FRAME_TOO_LARGE,
                                        f"frame length {length} exceeds the limit of {max_len} bytes")
            if length < HEADER_TAIL:
                raise PeerProtocolError(ErrorCode.MALFORMED,
                                        f"frame length {length} is shorter than the {HEADER_TAIL}-byte header")
            if left < 4 + length:
                break
            _, version, ftype, flags, rid = _HEADER.unpack_from(data, pos)
            if version != VERSION:
                raise PeerProtocolError(ErrorCode.BAD_VERSION,
                                        f"protocol version {version} is not supported (this server speaks {VERSION})")
            if ftype not in KNOWN_TYPES:
                raise PeerProtocolError(ErrorCode.UNKNOWN_FRAME, f"unknown frame type 0x{ftype:02x}")
            end = pos + 4 + length
            frames.append((ftype, flags, rid, data[pos + HEADER_SIZE:end]))
            pos = end
        self._buf = data[pos:] if pos < n else b""
        return frames


# -- field kinds -----------------------------------------------------------------------------

def _malformed(ftype: FrameType, field: str, why: str) -> PeerProtocolError:
    return PeerProtocolError(ErrorCode.MALFORMED, f"{ftype.name}.{field}: {why}")


def _enc_str(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > 255:
        raise LocalProtocolError(ErrorCode.INVALID, f"string of {len(raw)} bytes exceeds 255")
    return bytes((len(raw),)) + raw


def _enc_acct(value: str) -> bytes:
    raw = value.encode("ascii")
    if len(raw) != ACCOUNT_ID_LEN:
        raise LocalProtocolError(ErrorCode.INVALID, f"account id {value!r} is not {ACCOUNT_ID_LEN} characters")
    return raw


def _enc_mid(value: bytes) -> bytes:
    if len(value) != MESSAGE_ID_LEN:
        raise LocalProtocolError(ErrorCode.INVALID, f"message id must be {MESSAGE_ID_LEN} bytes")
    return bytes(value)


def _enc_accts(values: Sequence[str]) -> bytes:
    return _U16.pack(len(values)) + b"".join(_enc_acct(v) for v in values)


def _enc_mids(values: Sequence[bytes]) -> bytes:
    return _U16.pack(len(values)) + b"".join(_enc_mid(v) for v in values)


def _enc_keys(values: Sequence[tuple[str, str]]) -> bytes:
    return _U16.pack(len(values)) + b"".join(_enc_str(k) + _enc_str(v) for k, v in values)


def _enc_blob(value: bytes) -> bytes:
    return _U32.pack(len(value)) + bytes(value)


_ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "u8": _U8.pack, "u16": _U16.pack, "u32": _U32.pack, "u64": _U64.pack,
    "acct": _enc_acct, "mid": _enc_mid, "str": _enc_str, "accts": _enc_accts, "mids": _enc_mids,
    "keys": _enc_keys, "blob": _enc_blob, "rest": bytes,
}

# A decoder takes (payload, pos) and returns (value, new pos); it raises ValueError/IndexError/
# struct.error on short input, which the frame decoder turns into a MALFORMED error naming the field.


def _need(data: bytes, pos: int, n: int) -> None:
    if pos + n > len(data):
        raise ValueError(f"needs {n} bytes at offset {pos}, frame has {len(data) - pos} left")


def _dec_int(st: struct.Struct) -> Callable[[bytes, int], tuple[int, int]]:
    size = st.size

    def dec(data: bytes, pos: int) -> tuple[int, int]:
        _need(data, pos, size)
        return st.unpack_from(data, pos)[0], pos + size

    return dec


def _dec_str(data: bytes, pos: int) -> tuple[str, int]:
    _need(data, pos, 1)
    n = data[pos]
    _need(data, pos + 1, n)
    return data[pos + 1:pos + 1 + n].decode(), pos + 1 + n


def _dec_acct(data: bytes, pos: int) -> tuple[str, int]:
    _need(data, pos, ACCOUNT_ID_LEN)
    return data[pos:pos + ACCOUNT_ID_LEN].decode("ascii"), pos + ACCOUNT_ID_LEN


def _dec_mid(data: bytes, pos: int) -> tuple[bytes, int]:
    _need(data, pos, MESSAGE_ID_LEN)
    return data[pos:pos + MESSAGE_ID_LEN], pos + MESSAGE_ID_LEN


def _dec_accts(data: bytes, pos: int) -> tuple[list[str], int]:
    _need(data, pos, 2)
    count = _U16.unpack_from(data, pos)[0]
    pos += 2
    _need(data, pos, count * ACCOUNT_ID_LEN)
    raw = data[pos:pos + count * ACCOUNT_ID_LEN].decode("ascii")
    return [raw[i:i + ACCOUNT_ID_LEN] for i in range(0, len(raw), ACCOUNT_ID_LEN)], pos + count * ACCOUNT_ID_LEN


def _dec_mids(data: bytes, pos: int) -> tuple[list[bytes], int]:
    _need(data, pos, 2)
    count = _U16.unpack_from(data, pos)[0]
    pos += 2
    _need(data, pos, count * MESSAGE_ID_LEN)
    return [data[pos + i * MESSAGE_ID_LEN:pos + (i + 1) * MESSAGE_ID_LEN] for i in range(count)], \
        pos + count * MESSAGE_ID_LEN


def _dec_keys(data: bytes, pos: int) -> tuple[list[tuple[str, str]], int]:
    _need(data, pos, 2)
    count = _U16.unpack_from(data, pos)[0]
    pos += 2
    out = []
    for _ in range(count):
        key_id, pos = _dec_str(data, pos)
        key, pos = _dec_str(data, pos)
        out.append((key_id, key))
    return out, pos


def _dec_blob(data: bytes, pos: int) -> tuple[bytes, int]:
    _need(data, pos, 4)
    n = _U32.unpack_from(data, pos)[0]
    _need(data, pos + 4, n)
    return data[pos + 4:pos + 4 + n], pos + 4 + n


def _dec_rest(data: bytes, pos: int) -> tuple[bytes, int]:
    return data[pos:], len(data)


_DECODERS: dict[str, Callable[[bytes, int], tuple[Any, int]]] = {
    "u8": _dec_int(_U8), "u16": _dec_int(_U16), "u32": _dec_int(_U32), "u64": _dec_int(_U64),
    "acct": _dec_acct, "mid": _dec_mid, "str": _dec_str, "accts": _dec_accts, "mids": _dec_mids,
    "keys": _dec_keys, "blob": _dec_blob, "rest": _dec_rest,
}


# -- per-frame payload codecs ------------------------------------------------------------------

def encode(ftype: FrameType, rid: int = 0, *values: Any, flags: int = 0) -> bytes:
    """Encode a whole frame from its field values, in schema order."""
    schema = SCHEMAS[ftype]
    if len(values) != len(schema):
        raise LocalProtocolError(ErrorCode.INVALID,
                                 f"{ftype.name} takes {len(schema)} fields ({', '.join(n for n, _ in schema)}), "
                                 f"got {len(values)}")
    payload = b"".join(_ENCODERS[kind](v) for (_, kind), v in zip(schema, values))
    return _HEADER.pack(HEADER_TAIL + len(payload), VERSION, ftype, flags, rid) + payload


def decode_payload(ftype: int, payload: bytes) -> tuple[Any, ...]:
    """The field values of one frame, in schema order. Raises PeerProtocolError naming the field."""
    ft = FrameType(ftype)
    values: list[Any] = []
    pos = 0
    for name, kind in SCHEMAS[ft]:
        try:
            value, pos = _DECODERS[kind](payload, pos)
        except (ValueError, IndexError, struct.error) as exc:
            raise _malformed(ft, name, str(exc)) from None
        values.append(value)
    if pos != len(payload):
        raise _malformed(ft, "(end)", f"{len(payload) - pos} unexpected trailing bytes")
    return tuple(values)


def field_names(ftype: FrameType) -> tuple[str, ...]:
    return tuple(name for name, _ in SCHEMAS[ftype])


def decode_dict(ftype: int, payload: bytes) -> dict[str, Any]:
    """Like decode_payload, keyed by field name (for tools and tests; not the hot path)."""
    return dict(zip(field_names(FrameType(ftype)), decode_payload(ftype, payload)))


# -- hot path ------------------------------------------------------------------------------------

_SEND_HEAD = struct.Struct(f">IBBBI{MESSAGE_ID_LEN}s{ACCOUNT_ID_LEN}sB")
_SEND_FIXED = MESSAGE_ID_LEN + ACCOUNT_ID_LEN + 1
_ACK = struct.Struct(f">IBBBI{MESSAGE_ID_LEN}sB")
_DELIVER_ACK_ONE = struct.Struct(f">IBBBIH{MESSAGE_ID_LEN}s")


def encode_send(rid: int, message_id: bytes, recipient: bytes, kind: int, ciphertext: bytes) -> bytes:
    """SEND with the recipient as its 21 ASCII bytes (no per-call validation: the caller's ids)."""
    return _SEND_HEAD.pack(HEADER_TAIL + _SEND_FIXED + len(ciphertext), VERSION, FrameType.SEND, 0, rid,
                           message_id, recipient, kind) + ciphertext


def decode_send(payload: bytes) -> tuple[bytes, bytes, int, bytes]:
    """(message_id, recipient as ASCII bytes, kind, ciphertext)."""
    if len(payload) < _SEND_FIXED:
        raise _malformed(FrameType.SEND, "message_id/recipient/kind",
                         f"needs {_SEND_FIXED} bytes, frame has {len(payload)}")
    return (payload[:MESSAGE_ID_LEN], payload[MESSAGE_ID_LEN:MESSAGE_ID_LEN + ACCOUNT_ID_LEN],
            payload[_SEND_FIXED - 1], payload[_SEND_FIXED:])


def encode_send_ack(rid: int, message_id: bytes, status: int) -> bytes:
    return _ACK.pack(HEADER_TAIL + MESSAGE_ID_LEN + 1, VERSION, FrameType.SEND_ACK, 0, rid, message_id, status)


def encode_deliver(message_id: bytes, sender: bytes, group: bytes, kind: int, ts: int, ciphertext: bytes,
                   flags: int = 0) -> bytes:
    """DELIVER; `sender` is 21 ASCII bytes, `group` the group id's ASCII bytes or b''."""
    body = b"".join((message_id, sender, bytes((len(group),)), group, bytes((kind,)), _U64.pack(ts), ciphertext))
    return _HEADER.pack(HEADER_TAIL + len(body), VERSION, FrameType.DELIVER, flags, 0) + body


def decode_deliver(payload: bytes) -> tuple[bytes, str, str, int, int, bytes]:
    """(message_id, sender, group or '', kind, ts, ciphertext)."""
    try:
        mid = payload[:MESSAGE_ID_LEN]
        sender = payload[MESSAGE_ID_LEN:MESSAGE_ID_LEN + ACCOUNT_ID_LEN].decode("ascii")
        pos = MESSAGE_ID_LEN + ACCOUNT_ID_LEN
        glen = payload[pos]
        group = payload[pos + 1:pos + 1 + glen].decode("ascii")
        pos += 1 + glen
        kind = payload[pos]
        ts = _U64.unpack_from(payload, pos + 1)[0]
        if len(mid) != MESSAGE_ID_LEN or len(sender) != ACCOUNT_ID_LEN:
            raise ValueError("too short")
    except (IndexError, ValueError, struct.error) as exc:
        raise _malformed(FrameType.DELIVER, "header", str(exc)) from None
    return mid, sender, group, kind, ts, payload[pos + 9:]


def encode_deliver_ack(message_ids: Sequence[bytes], rid: int = 0) -> bytes:
    if len(message_ids) == 1:
        return _DELIVER_ACK_ONE.pack(HEADER_TAIL + 2 + MESSAGE_ID_LEN, VERSION, FrameType.DELIVER_ACK, 0, rid, 1,
                                     message_ids[0])
    return encode(FrameType.DELIVER_ACK, rid, list(message_ids))


def decode_message_ids(ftype: FrameType, payload: bytes) -> list[bytes]:
    """DELIVER_ACK's list of message ids."""
    try:
        ids, pos = _dec_mids(payload, 0)
    except (ValueError, IndexError, struct.error) as exc:
        raise _malformed(ftype, "message_ids", str(exc)) from None
    if pos != len(payload):
        raise _malformed(ftype, "(end)", f"{len(payload) - pos} unexpected trailing bytes")
    return ids


def encode_error(rid: int, code: ErrorCode, detail: str) -> bytes:
    raw = detail.encode()[:255]
    return encode_frame(FrameType.ERROR, rid, _U16.pack(code) + bytes((len(raw),)) + raw)
