"""One client connection: an `asyncio.Protocol` (no per-connection task, no stream objects), so
an idle authenticated client costs one small slotted object, its transport and its reader."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from relay.protocol import MAX_FRAME_UNAUTHENTICATED, FrameReader

if TYPE_CHECKING:
    from relay.server.core import RelayServer


class Connection(asyncio.Protocol):
    __slots__ = (
        "account",
        "account_b",
        "bucket",
        "closed",
        "last_seen",
        "nonce",
        "opened_at",
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
        self.opened_at = self.last_seen = time.monotonic()
        self.closed = False

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else "0.0.0.0"
        self.server.on_connect(self)

    def data_received(self, data: bytes) -> None:
        self.last_seen = time.monotonic()
        self.server.on_data(self, data)

    def eof_received(self) -> bool:
        return False  # half-closed → close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.on_disconnect(self)

    # -- sending --------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()
            # connection_lost still runs and tells the server.
            self.closed = True

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
