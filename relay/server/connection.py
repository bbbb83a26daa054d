"""One client connection: an `asyncio.Protocol` (no per-connection task, no stream objects), so
an idle authenticated client costs one small slotted object, its transport and its reader.

Writes are coalesced: `send` only collects frames; the server writes each connection's frames
once per event-loop iteration (`RelayServer.flush_writes`). A write is a syscall — the largest
single cost per message — and one iteration often has a DELIVER and a SEND_ACK for the same
client."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from relay.protocol import MAX_FRAME_UNAUTHENTICATED, FrameReader

# Frames a connection may send before it logs in (a login takes 3), and per sweep interval after
# (a PING costs PING_COST): a flood is closed before it costs the loop more than a few ms.
PRE_AUTH_BUDGET = 32
FRAME_BUDGET = 5000
PING_COST = 100
# A cluster node's database lookup of an account it does not know (RelayServer._retry_unlearned):
# at most FRAME_BUDGET / LOOKUP_COST = 10 per sweep interval for one connection.
LOOKUP_COST = 500
# Pause reading a client once this much output waits for it; drop it past MAX_WRITE_BUFFER.
WRITE_HIGH_WATER = 256 * 1024
MAX_WRITE_BUFFER = 8 * 1024 * 1024

if TYPE_CHECKING:
    from relay.server.core import RelayServer


class Connection(asyncio.Protocol):
    __slots__ = (
        "account",
        "account_b",
        "bucket",
        "budget",
        "closed",
        "last_seen",
        "nonce",
        "opened_at",
        "out",
        "peer",
        "reader",
        "server",
        "transport",
    )

    def __init__(self, server: RelayServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.reader = FrameReader(MAX_FRAME_UNAUTHENTICATED)
        self.account: str | None = None
        self.account_b = b""
        self.bucket = ""
        self.peer = ""
        self.nonce: bytes | None = None
        self.opened_at = time.monotonic()
        self.last_seen = server.sweep_gen  # the sweep interval of its last complete frame (RelayServer._sweep)
        self.closed = False
        self.out: bytes | list[bytes] | None = None  # frames waiting for this iteration's write
        self.budget = PRE_AUTH_BUDGET  # frames it may still send (refilled each sweep interval once logged in)

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else "0.0.0.0"
        self.server.on_connect(self)

    def data_received(self, data: bytes) -> None:
        self.server.on_data(self, data)  # it marks the connection seen only for complete frames

    def eof_received(self) -> bool:
        return False  # half-closed → close

    # Backpressure: a client that does not read what we send stops being read from, so it can
    # make the relay neither buffer without bound nor spend the loop on its requests.
    def pause_writing(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.on_disconnect(self)

    # -- sending --------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        if self.closed:
            return
        out = self.out
        if out is None:
            self.out = data
            self.server.mark_dirty(self)
        elif type(out) is list:
            out.append(data)
        else:
            self.out = [out, data]  # type: ignore[list-item]

    def flush(self) -> None:
        out, self.out = self.out, None
        transport = self.transport
        if out is not None and not self.closed and transport is not None:
            transport.write(out if type(out) is bytes else b"".join(out))  # type: ignore[arg-type]
            if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
                # It reads nothing we send: drop it (what it was handed and did not ack is requeued).
                self.server.stats.slow_consumers += 1
                self.closed = True
                transport.abort()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.flush()
            self.closed = True
            self.transport.close()
            # connection_lost still runs and tells the server.
            self.closed = True

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
