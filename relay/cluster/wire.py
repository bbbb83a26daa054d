"""What relay nodes say to each other through Kafka — metadata and ciphertext, never plaintext or keys.

Node inboxes (`<inbox_prefix><node>.v1`, one partition each, read by assignment by that node only).
One Kafka record carries many frames for one destination, so the broker handles one record per
batch rather than one per message:

    record  = version u8 | from_len u8 | from node | from_incarnation u32 | to_incarnation u32 | frames
    frames  = (length u32 | frame)*
    HANDOVER  'H' token u32 | mid 16 | kind u8 | ts u64 | recipient 21 | sender 21 | group_len u8 | group
                | ciphertext                 — "deliver this to your client, then ack me token"
    ACK       'A' token u32 | status u8      — DELIVERED, QUEUED (in the database), REFUSED, FAILED
    ACKS      'M' (token u32 | status u8)*   — the ACKs of one batch (what a node sends; packed by its outbox
                                               thread, so its event loop only appends (token, status))
    POKE      'P' recipient 21               — "a message for this account was just committed to the
                                               queue; if it is connected to you, deliver the queue"
    PRESENCE  'S' account 21 | online u8 | watcher 21 * n
                                             — "tell these clients of yours the account came / went"
    RECEIPT   'D' mid 16 | sender 21 | recipient 21
                                             — "your client's queued message reached its recipient"

A record addressed to another incarnation of the destination (`to_incarnation`) is ignored: its
sender has, or will, put the message in the database queue itself (see node.py).

The routes topic (`sg.relay.routes.v1`, key = account, group or blocker; every node reads every
partition) carries short ASCII records `TAG NODE FIELDS...`:

    R node 1|0 ts_ms          the account connected to / disconnected from node (key = account)
    A node                    the account (key) was registered on node
    G node gid +|- member actor   group membership changed (key = gid)
    B node blocked 1|0        the key (blocker) blocked / unblocked `blocked`
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator

from relay.protocol import ACCOUNT_ID_LEN, MESSAGE_ID_LEN

VERSION = 1
NODE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
H, A, P, S, D, M = ord("H"), ord("A"), ord("P"), ord("S"), ord("D"), ord("M")

# Statuses carried by ACK (1 and 2 are the protocol's DeliveryStatus values).
DELIVERED, QUEUED, REFUSED, FAILED = 1, 2, 3, 4

_HEAD = struct.Struct(">BB")
_INC = struct.Struct(">II")
_LEN = struct.Struct(">I")
_HANDOVER = struct.Struct(f">BI{MESSAGE_ID_LEN}sBQ{ACCOUNT_ID_LEN}s{ACCOUNT_ID_LEN}sB")
_ACK = struct.Struct(">BIB")
_ACKS_ITEM = struct.Struct(">IB")
MAX_RECORD = 512 * 1024  # a record's frames stop here (Kafka's default max message size is 1 MB)


class WireError(ValueError):
    """A record from another node is malformed; the message names what was wrong."""


def check_node_id(node: str) -> str:
    if not NODE_RE.match(node):
        raise WireError(f"node id {node!r} must be 1-32 characters of A-Z, a-z, 0-9, '_', '.', '-'")
    return node


def record_head(node: str, incarnation: int, to_incarnation: int) -> bytes:
    raw = node.encode()
    return _HEAD.pack(VERSION, len(raw)) + raw + _INC.pack(incarnation, to_incarnation)


def handover(token: int, mid: bytes, kind: int, ts: int, recipient: str, sender: str, group: str | None,
             ciphertext: bytes) -> bytes:
    g = group.encode() if group else b""
    return _HANDOVER.pack(H, token, mid, kind, ts, recipient.encode(), sender.encode(), len(g)) + g + ciphertext


def ack(token: int, status: int) -> bytes:
    return _ACK.pack(A, token, status)


def acks(pairs: list[tuple[int, int]]) -> bytes:
    """One ACKS frame for a batch's (token, status) pairs, packed by the outbox thread: the event
    loops on both ends handle one frame per batch instead of one per message."""
    pack = _ACKS_ITEM.pack
    return b"M" + b"".join([pack(t, s) for t, s in pairs])


def parse_acks(frame: bytes) -> Iterator[tuple[int, int]]:
    if (len(frame) - 1) % _ACKS_ITEM.size:
        raise WireError(f"ACKS of {len(frame)} bytes is not 1 + 5 × n")
    return _ACKS_ITEM.iter_unpack(frame[1:])


def poke(recipient: str) -> bytes:
    return b"P" + recipient.encode()


def presence(account: str, online: bool, watchers: list[str]) -> bytes:
    return b"S" + account.encode() + (b"\x01" if online else b"\x00") + "".join(watchers).encode()


def parse_presence(frame: bytes) -> tuple[str, bool, list[str]]:
    n = ACCOUNT_ID_LEN
    if len(frame) < 2 + n or (len(frame) - 2 - n) % n:
        raise WireError(f"PRESENCE of {len(frame)} bytes is not 2 + 21 × (1 + watchers)")
    body = frame[2 + n:].decode("ascii")
    return frame[1:1 + n].decode("ascii"), frame[1 + n] == 1, [body[i:i + n] for i in range(0, len(body), n)]


def receipt(mid: bytes, sender: str, recipient: str) -> bytes:
    return b"D" + mid + sender.encode() + recipient.encode()


def parse_receipt(frame: bytes) -> tuple[bytes, str, str]:
    n, m = ACCOUNT_ID_LEN, MESSAGE_ID_LEN
    if len(frame) != 1 + m + 2 * n:
        raise WireError(f"RECEIPT of {len(frame)} bytes, expected {1 + m + 2 * n}")
    return frame[1:1 + m], frame[1 + m:1 + m + n].decode("ascii"), frame[1 + m + n:].decode("ascii")


def frame_records(head: bytes, frames: list[bytes]) -> Iterator[bytes]:
    """Pack frames behind `head` into records of at most MAX_RECORD bytes (a frame bigger than that
    gets a record of its own)."""
    parts: list[bytes] = [head]
    size = len(head)
    for f in frames:
        if size + 4 + len(f) > MAX_RECORD and len(parts) > 1:
            yield b"".join(parts)
            parts, size = [head], len(head)
        parts.append(_LEN.pack(len(f)))
        parts.append(f)
        size += 4 + len(f)
    if len(parts) > 1:
        yield b"".join(parts)


def parse_record(value: bytes) -> tuple[str, int, int, list[bytes]]:
    """(from node, from incarnation, to incarnation, frames) of one inbox record."""
    if len(value) < 2:
        raise WireError(f"inbox record of {len(value)} bytes is shorter than its header")
    version, n = _HEAD.unpack_from(value)
    if version != VERSION:
        raise WireError(f"inbox record version {version}, expected {VERSION}")
    pos = 2 + n
    if len(value) < pos + _INC.size:
        raise WireError("inbox record ends inside its header")
    node = value[2:pos].decode("ascii", "replace")
    inc, to_inc = _INC.unpack_from(value, pos)
    pos += _INC.size
    frames = []
    end = len(value)
    while pos < end:
        if pos + 4 > end:
            raise WireError(f"inbox record from {node}: a frame length is cut at byte {pos}")
        (length,) = _LEN.unpack_from(value, pos)
        pos += 4
        if pos + length > end:
            raise WireError(f"inbox record from {node}: a frame of {length} bytes runs past the record's end")
        frames.append(value[pos:pos + length])
        pos += length
    return node, inc, to_inc, frames


def parse_handover(frame: bytes) -> tuple[int, bytes, int, int, str, str, str | None, bytes]:
    """(token, mid, kind, ts, recipient, sender, group, ciphertext)."""
    if len(frame) < _HANDOVER.size:
        raise WireError(f"HANDOVER of {len(frame)} bytes is shorter than its {_HANDOVER.size}-byte header")
    _, token, mid, kind, ts, recipient, sender, glen = _HANDOVER.unpack_from(frame)
    pos = _HANDOVER.size
    if len(frame) < pos + glen:
        raise WireError("HANDOVER ends inside its group id")
    group = frame[pos:pos + glen].decode("ascii") if glen else None
    return token, mid, kind, ts, recipient.decode("ascii"), sender.decode("ascii"), group, frame[pos + glen:]


def parse_ack(frame: bytes) -> tuple[int, int]:
    if len(frame) != _ACK.size:
        raise WireError(f"ACK of {len(frame)} bytes, expected {_ACK.size}")
    _, token, status = _ACK.unpack(frame)
    return token, status


def parse_poke(frame: bytes) -> str:
    if len(frame) != 1 + ACCOUNT_ID_LEN:
        raise WireError(f"POKE of {len(frame)} bytes, expected {1 + ACCOUNT_ID_LEN}")
    return frame[1:].decode("ascii")


# -- the routes topic ---------------------------------------------------------------------------------
def route_record(node: str, online: bool, ts: int) -> bytes:
    return f"R {node} {1 if online else 0} {ts}".encode()


def account_record(node: str) -> bytes:
    return f"A {node}".encode()


def group_record(node: str, gid: str, added: bool, member: str, actor: str) -> bytes:
    return f"G {node} {gid} {'+' if added else '-'} {member} {actor}".encode()


def block_record(node: str, blocked: str, on: bool) -> bytes:
    return f"B {node} {blocked} {1 if on else 0}".encode()


def parse_state(key: bytes | None, value: bytes) -> tuple[str, str, str, list[str]]:
    """(tag, node, key, fields) of a routes-topic record; raises WireError naming what is wrong."""
    if not key:
        raise WireError("routes record without a key")
    try:
        parts = value.decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise WireError("routes record is not ASCII") from None
    if len(parts) < 2 or parts[0] not in ("R", "A", "G", "B"):
        raise WireError(f"routes record {value[:40]!r} has no known tag")
    want = {"R": 4, "A": 2, "G": 6, "B": 4}[parts[0]]
    if len(parts) != want:
        raise WireError(f"routes record {parts[0]} has {len(parts)} fields, expected {want}")
    return parts[0], parts[1], key.decode("ascii", "replace"), parts[2:]
