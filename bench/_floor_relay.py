"""The floor: the relay protocol's message path with nothing else — no signature checks, database,
limits, signals or timeouts. `python -m bench._floor_relay [--coalesce]`.

Why: the relay benchmark says how far our relay is from mosquitto; this says how much of that
is the protocol itself on this machine (four frames per message: SEND in, DELIVER out,
DELIVER_ACK in, SEND_ACK out, each a syscall) and how much is everything the relay adds.
Run it under the benchmark: `sealguard bench relay --relay-cmd "python -m bench._floor_relay"`.
`--coalesce` buffers each connection's frames and writes them once per loop iteration, the
cheapest way to fewer `write` calls.

It prints the relay's listening line (with a metrics URL that answers nothing) and accepts any
login: never run it anywhere but a benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import struct
import time

from relay.protocol import (
    ACCOUNT_ID_LEN,
    MESSAGE_ID_LEN,
    VERSION,
    DeliveryStatus,
    FrameReader,
    FrameType,
    PeerProtocolError,
    decode_message_ids,
    decode_payload,
    decode_send,
    encode,
    encode_send_ack,
)

_SEND, _ACK = int(FrameType.SEND), int(FrameType.DELIVER_ACK)
# The relay's own hot-path layouts (relay/server/core.py): DELIVER and SEND_ACK packed by one
# struct call each, so the floor costs no more Python per frame than the relay does.
_SEND_FIXED = MESSAGE_ID_LEN + ACCOUNT_ID_LEN + 1
_DELIVER_1TO1 = struct.Struct(f">IBBBI{MESSAGE_ID_LEN}s{ACCOUNT_ID_LEN}sBBQ")
_DELIVER_FIXED = _DELIVER_1TO1.size - 4
_ACK_FRAME = struct.Struct(f">IBBBI{MESSAGE_ID_LEN}sB")
_ACK_LEN = _ACK_FRAME.size - 4
_DELIVER, _SEND_ACK, _DELIVERED = int(FrameType.DELIVER), int(FrameType.SEND_ACK), int(DeliveryStatus.DELIVERED)


class Floor:
    def __init__(self, coalesce: bool) -> None:
        self.coalesce = coalesce
        self.conns: dict[bytes, FloorConn] = {}
        self.pending: dict[tuple[bytes, bytes], tuple[FloorConn, int]] = {}
        self.dirty: list[FloorConn] = []
        self.loop = asyncio.get_event_loop()
        self.next_id = 0

    def flush(self) -> None:
        dirty, self.dirty = self.dirty, []
        for c in dirty:
            out, c.out = c.out, []
            if c.transport is not None and not c.transport.is_closing():
                c.transport.write(b"".join(out) if len(out) > 1 else out[0])


class FloorConn(asyncio.Protocol):
    __slots__ = ("account", "floor", "out", "reader", "transport")

    def __init__(self, floor: Floor) -> None:
        self.floor = floor
        self.transport: asyncio.Transport | None = None
        self.reader = FrameReader()
        self.account = b""
        self.out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.account and self.floor.conns.get(self.account) is self:
            del self.floor.conns[self.account]

    def send(self, frame: bytes) -> None:
        floor = self.floor
        if not floor.coalesce:
            if self.transport is not None:
                self.transport.write(frame)
            return
        if not self.out:
            if not floor.dirty:
                floor.loop.call_soon(floor.flush)
            floor.dirty.append(self)
        self.out.append(frame)

    def data_received(self, data: bytes) -> None:
        floor = self.floor
        try:
            frames = self.reader.feed(data)
        except PeerProtocolError:
            assert self.transport is not None
            self.transport.close()
            return
        for ftype, _flags, rid, payload in frames:
            if ftype == _SEND:
                if len(payload) < _SEND_FIXED:
                    decode_send(payload)  # raises MALFORMED
                mid, recipient = payload[:MESSAGE_ID_LEN], payload[MESSAGE_ID_LEN:_SEND_FIXED - 1]
                rconn = floor.conns.get(recipient)
                if rconn is None:
                    self.send(encode_send_ack(rid, mid, DeliveryStatus.QUEUED))
                    continue
                floor.pending[(mid, recipient)] = (self, rid)
                rconn.send(_DELIVER_1TO1.pack(_DELIVER_FIXED + len(payload) - _SEND_FIXED, VERSION, _DELIVER, 0, 0, mid,
                                              self.account, 0, payload[_SEND_FIXED - 1], time.time_ns() // 1_000_000)
                           + payload[_SEND_FIXED:])
            elif ftype == _ACK:
                mids = [payload[2:18]] if len(payload) == 18 and payload[:2] == b"\x00\x01" else \
                    decode_message_ids(FrameType.DELIVER_ACK, payload)
                for mid in mids:
                    got = floor.pending.pop((mid, self.account), None)
                    if got is not None:
                        got[0].send(_ACK_FRAME.pack(_ACK_LEN, VERSION, _SEND_ACK, 0, got[1], mid, _DELIVERED))
            elif ftype == FrameType.CHALLENGE_REQ:
                self.send(encode(FrameType.CHALLENGE, rid, os.urandom(32)))
            elif ftype == FrameType.REGISTER:
                floor.next_id += 1
                self.send(encode(FrameType.REGISTERED, rid, f"a{floor.next_id:020x}"))
            elif ftype == FrameType.LOGIN:
                account, _sig = decode_payload(ftype, payload)
                self.account = account.encode()
                floor.conns[self.account] = self
                self.send(encode(FrameType.LOGGED_IN, rid, account, 0))
            elif ftype == FrameType.PING:
                self.send(encode(FrameType.PONG, rid))
            elif ftype == FrameType.BYE and self.transport is not None:
                self.transport.close()


async def main(coalesce: bool) -> None:
    floor = Floor(coalesce)
    server = await asyncio.get_running_loop().create_server(lambda: FloorConn(floor), "127.0.0.1", 0, backlog=4096)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"relay: listening={host}:{port} metrics=http://127.0.0.1:9/metrics node=floor", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    import uvloop

    ap = argparse.ArgumentParser(prog="python -m bench._floor_relay")
    ap.add_argument("--coalesce", action="store_true", help="one write per connection per loop iteration")
    uvloop.run(main(ap.parse_args().coalesce))
