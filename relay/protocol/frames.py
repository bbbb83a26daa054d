"""Every frame type, flag and error code of the relay wire protocol, v1 — the one place they are
declared. `docs/protocol.md` describes them for people; `codec.py` derives encoders from the
field schemas below, so adding a frame means adding one line here.

Field kinds (how a value is laid out in a payload):

    u8 u16 u32 u64   big-endian unsigned integers
    acct             an account id: 21 ASCII bytes ('a' + 20 hex)
    mid              a message id: 16 raw bytes (chosen by the sending client)
    str              u8 length + UTF-8 (ids, keys, handles, codes; never free text; '' means none)
    accts            u16 count + count × 21 bytes
    mids             u16 count + count × 16 bytes
    keys             u16 count + count × (str key_id, str public key)
    blob             u32 length + bytes
    rest             every byte to the end of the frame (only as the last field)
"""

from __future__ import annotations

import enum

VERSION = 1
# length (u32: bytes after this field) | version u8 | type u8 | flags u8 | request id u32
HEADER_FORMAT = ">IBBBI"
HEADER_SIZE = 11
HEADER_TAIL = HEADER_SIZE - 4  # the part of the header the length field counts

# A connection that has not logged in may not send more than this in one frame: nobody gets
# to make the server allocate megabytes before proving who they are.
MAX_FRAME_UNAUTHENTICATED = 4 * 1024
# Ciphertext of one message (1:1 or group); media goes through MEDIA_UPLOAD.
MAX_MESSAGE_BYTES = 64 * 1024
# One encrypted media blob.
MAX_MEDIA_BYTES = 4 * 1024 * 1024
# Largest frame an authenticated connection may send (a media upload plus its header).
MAX_FRAME = MAX_MEDIA_BYTES + 1024

ACCOUNT_ID_LEN = 21
MESSAGE_ID_LEN = 16


class FrameType(enum.IntEnum):
    """C = client → server, S = server → client. Replies carry the request's id."""

    # connection
    PING = 0x01  # C/S  (no fields) → PONG
    PONG = 0x02  # C/S
    ERROR = 0x03  # S   code, detail (the error code's name and the field at fault)
    OK = 0x04  # S      value (u32: a count, or 0)
    BYE = 0x05  # C/S   (no fields) the sender is closing the connection
    # identity and auth
    CHALLENGE_REQ = 0x10  # C (no fields) → CHALLENGE
    CHALLENGE = 0x11  # S  nonce (32 bytes as blob)
    REGISTER = 0x12  # C   client_kind, identity_key, curve_key, signature(nonce) → REGISTERED
    REGISTERED = 0x13  # S account
    LOGIN = 0x14  # C      account, signature(nonce) → LOGGED_IN
    LOGGED_IN = 0x15  # S  account, queued (messages waiting)
    # prekeys
    UPLOAD_PREKEYS = 0x20  # C  one-time keys, fallback key (key_id, key; '' = none) → OK(count)
    CLAIM_PREKEY = 0x21  # C    account → PREKEY
    PREKEY = 0x22  # S          account, identity_key, curve_key, key_id, one_time_key, is_fallback
    # messages
    SEND = 0x30  # C            message_id, recipient, kind, ciphertext → SEND_ACK
    SEND_ACK = 0x31  # S        message_id, status (DeliveryStatus)
    DELIVER = 0x32  # S         message_id, sender, group ('' = 1:1), kind, ts, ciphertext
    DELIVER_ACK = 0x33  # C     message_ids (the client has them; the server forgets them)
    RECEIPT = 0x34  # S         message_id, recipient, status: a queued message reached its recipient
    GROUP_SEND = 0x35  # C      message_id, group, kind, ciphertext → SEND_ACK
    # people
    ADD_CONTACT = 0x40  # C     account → OK
    REMOVE_CONTACT = 0x41  # C  account → OK
    CLAIM_HANDLE = 0x42  # C    handle → OK
    LOOKUP_HANDLE = 0x43  # C   handle → HANDLE
    HANDLE = 0x44  # S          handle, account
    PRESENCE = 0x45  # S        account, online (pushed to the account's contacts only)
    BLOCK = 0x46  # C           account → OK
    UNBLOCK = 0x47  # C         account → OK
    REPORT = 0x48  # C          account, reason_code, message_ids → REPORT_RESULT
    REPORT_RESULT = 0x49  # S   named, verified
    # groups (membership is metadata; names and avatars travel encrypted between members)
    GROUP_CREATE = 0x50  # C    members → GROUP
    GROUP = 0x51  # S           group, members
    GROUP_ADD = 0x52  # C       group, account → OK
    GROUP_REMOVE = 0x53  # C    group, account → OK (a member may remove itself)
    GROUP_EVENT = 0x54  # S     group, actor, member, op (GroupOp)
    # media
    MEDIA_UPLOAD = 0x60  # C    blob (encrypted) → MEDIA_STORED
    MEDIA_STORED = 0x61  # S    blob_id, expires_at
    MEDIA_FETCH = 0x62  # C     blob_id → MEDIA
    MEDIA = 0x63  # S           blob_id, blob
    # enforcement and notices
    BAN = 0x70  # S             decision_id, reason_code, appeal (how to appeal: the decision id)
    NOTICE = 0x71  # S          kind, decision_id, reason_code


class Flag(enum.IntFlag):
    NONE = 0
    FROM_QUEUE = 0x01  # DELIVER: this message waited in the offline queue


class DeliveryStatus(enum.IntEnum):
    DELIVERED = 1  # the recipient's client acknowledged it
    QUEUED = 2  # committed to the database queue; delivered when the recipient logs in


class GroupOp(enum.IntEnum):
    CREATED = 1
    ADDED = 2
    REMOVED = 3


class ErrorCode(enum.IntEnum):
    """Every error the server answers with. 1xx: the peer broke the protocol (the connection is
    closed); 2xx: a refused request (the connection stays open)."""

    FRAME_TOO_LARGE = 100
    BAD_VERSION = 101
    UNKNOWN_FRAME = 102
    MALFORMED = 103
    TIMEOUT = 104
    FLOOD = 105
    NOT_AUTHENTICATED = 200
    BAD_SIGNATURE = 201
    NO_CHALLENGE = 202
    UNKNOWN_ACCOUNT = 203
    ALREADY_REGISTERED = 204
    ALREADY_AUTHENTICATED = 205
    BANNED = 206
    RATE_LIMITED = 207
    TOO_LARGE = 208
    NO_PREKEY = 209
    BLOCKED = 210
    NOT_A_MEMBER = 211
    UNKNOWN_GROUP = 212
    HANDLE_TAKEN = 213
    NOT_FOUND = 214
    QUOTA_EXCEEDED = 215
    INVALID = 216
    RECIPIENT_UNAVAILABLE = 217  # the recipient is banned: the message could never be delivered
    INTERNAL = 250

    @property
    def closes_connection(self) -> bool:
        return self.value < 200


# Field schemas: (name, kind). The codec compiles one encoder and one decoder per frame type.
SCHEMAS: dict[FrameType, tuple[tuple[str, str], ...]] = {
    FrameType.PING: (),
    FrameType.PONG: (),
    FrameType.ERROR: (("code", "u16"), ("detail", "str")),
    FrameType.OK: (("value", "u32"),),
    FrameType.BYE: (),
    FrameType.CHALLENGE_REQ: (),
    FrameType.CHALLENGE: (("nonce", "blob"),),
    FrameType.REGISTER: (("client_kind", "str"), ("identity_key", "str"), ("curve_key", "str"),
                         ("signature", "str")),
    FrameType.REGISTERED: (("account", "acct"),),
    FrameType.LOGIN: (("account", "acct"), ("signature", "str")),
    FrameType.LOGGED_IN: (("account", "acct"), ("queued", "u32")),
    FrameType.UPLOAD_PREKEYS: (("one_time_keys", "keys"), ("fallback_key_id", "str"), ("fallback_key", "str")),
    FrameType.CLAIM_PREKEY: (("account", "acct"),),
    FrameType.PREKEY: (("account", "acct"), ("identity_key", "str"), ("curve_key", "str"), ("key_id", "str"),
                       ("one_time_key", "str"), ("is_fallback", "u8")),
    FrameType.SEND: (("message_id", "mid"), ("recipient", "acct"), ("kind", "u8"), ("ciphertext", "rest")),
    FrameType.SEND_ACK: (("message_id", "mid"), ("status", "u8")),
    FrameType.DELIVER: (("message_id", "mid"), ("sender", "acct"), ("group", "str"), ("kind", "u8"),
                        ("ts", "u64"), ("ciphertext", "rest")),
    FrameType.DELIVER_ACK: (("message_ids", "mids"),),
    FrameType.RECEIPT: (("message_id", "mid"), ("recipient", "acct"), ("status", "u8")),
    FrameType.GROUP_SEND: (("message_id", "mid"), ("group", "str"), ("kind", "u8"), ("ciphertext", "rest")),
    FrameType.ADD_CONTACT: (("account", "acct"),),
    FrameType.REMOVE_CONTACT: (("account", "acct"),),
    FrameType.CLAIM_HANDLE: (("handle", "str"),),
    FrameType.LOOKUP_HANDLE: (("handle", "str"),),
    FrameType.HANDLE: (("handle", "str"), ("account", "acct")),
    FrameType.PRESENCE: (("account", "acct"), ("online", "u8")),
    FrameType.BLOCK: (("account", "acct"),),
    FrameType.UNBLOCK: (("account", "acct"),),
    FrameType.REPORT: (("account", "acct"), ("reason_code", "str"), ("message_ids", "mids")),
    FrameType.REPORT_RESULT: (("named", "u16"), ("verified", "u16")),
    FrameType.GROUP_CREATE: (("members", "accts"),),
    FrameType.GROUP: (("group", "str"), ("members", "accts")),
    FrameType.GROUP_ADD: (("group", "str"), ("account", "acct")),
    FrameType.GROUP_REMOVE: (("group", "str"), ("account", "acct")),
    FrameType.GROUP_EVENT: (("group", "str"), ("actor", "acct"), ("member", "acct"), ("op", "u8")),
    FrameType.MEDIA_UPLOAD: (("blob", "rest"),),
    FrameType.MEDIA_STORED: (("blob_id", "str"), ("expires_at", "u64")),
    FrameType.MEDIA_FETCH: (("blob_id", "str"),),
    FrameType.MEDIA: (("blob_id", "str"), ("blob", "rest")),
    FrameType.BAN: (("decision_id", "str"), ("reason_code", "str"), ("appeal", "str")),
    FrameType.NOTICE: (("kind", "str"), ("decision_id", "str"), ("reason_code", "str")),
}

KNOWN_TYPES = frozenset(int(t) for t in FrameType)
# Frames a client may send before it has logged in.
PRE_AUTH_TYPES = frozenset({FrameType.PING, FrameType.PONG, FrameType.BYE, FrameType.CHALLENGE_REQ,
                            FrameType.REGISTER, FrameType.LOGIN})
# Message kind byte ↔ contracts.MessageKind value.
KIND_NAMES = ("text", "media", "control")
