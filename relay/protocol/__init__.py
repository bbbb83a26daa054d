"""The relay wire protocol, v1: length-prefixed binary frames with a compact header.

    from relay.protocol import FrameType, FrameReader, encode, decode_payload
    wire = encode(FrameType.LOGIN, 7, account_id, signature)
    for ftype, flags, rid, payload in FrameReader().feed(wire):
        account, signature = decode_payload(ftype, payload)

Pure functions only (no I/O): the server, the client SDK, the benchmark and the fuzzer share it.
"""

from relay.protocol.codec import (
    Frame,
    FrameReader,
    LocalProtocolError,
    PeerProtocolError,
    ProtocolError,
    decode_deliver,
    decode_dict,
    decode_message_ids,
    decode_payload,
    decode_send,
    encode,
    encode_deliver,
    encode_deliver_ack,
    encode_error,
    encode_frame,
    encode_send,
    encode_send_ack,
    field_names,
)
from relay.protocol.frames import (
    ACCOUNT_ID_LEN,
    HEADER_SIZE,
    KIND_NAMES,
    MAX_FRAME,
    MAX_FRAME_UNAUTHENTICATED,
    MAX_MEDIA_BYTES,
    MAX_MESSAGE_BYTES,
    MESSAGE_ID_LEN,
    PRE_AUTH_TYPES,
    SCHEMAS,
    VERSION,
    DeliveryStatus,
    ErrorCode,
    Flag,
    FrameType,
    GroupOp,
)

__all__ = [
    "ACCOUNT_ID_LEN", "HEADER_SIZE", "KIND_NAMES", "MAX_FRAME", "MAX_FRAME_UNAUTHENTICATED", "MAX_MEDIA_BYTES",
    "MAX_MESSAGE_BYTES", "MESSAGE_ID_LEN", "PRE_AUTH_TYPES", "SCHEMAS", "VERSION", "DeliveryStatus", "ErrorCode",
    "Flag", "Frame", "FrameReader", "FrameType", "GroupOp", "LocalProtocolError", "PeerProtocolError",
    "ProtocolError", "decode_deliver", "decode_dict", "decode_message_ids", "decode_payload", "decode_send",
    "encode", "encode_deliver", "encode_deliver_ack", "encode_error", "encode_frame", "encode_send",
    "encode_send_ack", "field_names",
]
