"""The native data plane's Python side (relay/server/_plane.c holds the why).

The plane owns every client socket of a single relay node: it accepts, reads, cuts frames, writes,
and handles the common 1:1 message path itself — a SEND to an online recipient that did not block
the sender, within the sender's buckets; the DELIVER_ACK of what it holds; PING. Everything else reaches the unchanged `RelayServer` as the events of
an asyncio protocol: each plane connection has its `Connection`, whose transport is a
`PlaneTransport`. The server keeps the plane's copies true: routes (`login`), who may send here
(`set_fast`: not banned, not restricted), who talked, blocked or added whom (`pair`); the send and
first-contact buckets of a plane connection live in the plane (`take`).

`DataPlane.available()` is False when the module was not built (`make venv` builds it:
relay/server/build_plane.py); the server then runs its asyncio data plane, as a cluster node does.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relay.listener import NullListener, SignalListener
from relay.protocol import KIND_NAMES, MAX_FRAME, MAX_FRAME_UNAUTHENTICATED, MAX_MESSAGE_BYTES, ErrorCode
from relay.server.connection import FRAME_BUDGET, MAX_WRITE_BUFFER, WRITE_HIGH_WATER, Connection
from sealguard.contracts import Event, decode

try:
    from relay.server import _plane
except ImportError:  # not built: the asyncio data plane serves
    _plane = None  # type: ignore[assignment]
# The pair sets the plane mirrors (its `pair` / `has_pair`).
SET_TALKED, SET_BLOCKS, SET_CONTACTS = 0, 1, 2

if TYPE_CHECKING:
    from relay.server.core import RelayServer

log = logging.getLogger(__name__)
# message.sent the plane holds for a listener of events at most (past this they are dropped and
# counted, as the emitter's own buffer does); drained every SIGNAL_DRAIN_S.
MAX_SIGNALS = 200_000
SIGNAL_DRAIN_S = 0.01


class PlaneTransport:
    """What `Connection` uses of an asyncio transport, over one plane connection."""

    __slots__ = ("cid", "peer", "plane", "wsize")

    def __init__(self, plane: Any, cid: int, peer: str) -> None:
        self.plane = plane
        self.cid = cid
        self.peer = peer
        self.wsize = 0

    def write(self, data: bytes) -> None:
        n = self.plane.write(self.cid, data)
        self.wsize = max(0, n)

    def get_write_buffer_size(self) -> int:
        return self.wsize  # the plane drops a client past MAX_WRITE_BUFFER itself

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        return None  # the plane's own: WRITE_HIGH_WATER and MAX_WRITE_BUFFER

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.peer, 0) if name == "peername" else default

    def pause_reading(self) -> None:
        self.plane.pause(self.cid, True)

    def resume_reading(self) -> None:
        self.plane.pause(self.cid, False)

    def close(self) -> None:
        self.plane.close(self.cid)

    def abort(self) -> None:
        self.plane.close(self.cid, False)


class PlaneError(RuntimeError):
    """The native data plane cannot run here; the message says why."""


def rdkafka_library() -> str:
    """The librdkafka that confluent-kafka ships and has loaded (the plane's producer uses the same)."""
    import confluent_kafka

    libs = sorted(Path(confluent_kafka.__file__).parent.parent.glob("confluent_kafka.libs/librdkafka*.so*"))
    if not libs:
        raise PlaneError("confluent-kafka ships no librdkafka here: run with SEALGUARD_RELAY_NATIVE=0")
    return str(libs[0])


class InOrder:
    """A listener of events that sees the plane's signals in order with the server's own."""

    __slots__ = ("listener", "plane")

    def __init__(self, listener: SignalListener, plane: DataPlane) -> None:
        self.listener = listener
        self.plane = plane

    def emit(self, event: Event) -> None:
        self.plane.drain_signals()
        self.listener.emit(event)


class DataPlane:
    """One plane, its listening socket, and the `Connection` of each of its connection ids."""

    def __init__(self, server: RelayServer, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
        self.server = server
        self.loop = loop
        self.sock = socket.create_server((host, port), backlog=4096)  # SO_REUSEADDR, as asyncio's server
        self.sock.setblocking(False)
        self.plane = _plane.Plane(self.sock.fileno(), MAX_FRAME_UNAUTHENTICATED, MAX_FRAME, MAX_MESSAGE_BYTES,
                                  FRAME_BUDGET, WRITE_HIGH_WATER, MAX_WRITE_BUFFER, MAX_SIGNALS, tuple(KIND_NAMES))
        self.conns: dict[int, Connection] = {}
        self.host, self.port = self.sock.getsockname()[:2]
        loop.add_reader(self.plane.fd, self.drain)
        self._sink: Callable[[list[bytes]], None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    @staticmethod
    def available() -> bool:
        return _plane is not None

    # -- events ---------------------------------------------------------------------------------
    def drain(self) -> None:
        for ev in self.plane.poll():
            try:
                self._handle(ev)
            except Exception:  # one event's failure must not lose the events after it
                log.exception("data plane event %r failed", ev[:2])

    def _handle(self, ev: tuple[Any, ...]) -> None:
        kind, cid, server, conns = ev[0], ev[1], self.server, self.conns
        if kind == _plane.EV_DATA:
            conn = conns.get(cid)
            if conn is not None and not conn.closed:
                server.on_data(conn, ev[2])
        elif kind == _plane.EV_CONNECT:
            conn = conns[cid] = Connection(server)
            conn.connection_made(PlaneTransport(self.plane, cid, ev[2]))  # type: ignore[arg-type]
        elif kind == _plane.EV_CLOSED:
            conn = conns.pop(cid, None)
            if conn is not None:
                server.plane_closed(conn, *ev[2:])
                conn.connection_lost(None)
        elif kind == _plane.EV_REQUEUE:
            server.requeue_held(ev[2])
        elif kind == _plane.EV_FLOOD:
            conn = conns.get(cid)
            if conn is not None and not conn.closed:
                server.peer_error(conn, 0, ErrorCode.FLOOD, "too many frames; slow down")

    # -- signals --------------------------------------------------------------------------------
    def start_signals(self, listener: SignalListener) -> SignalListener:
        """Where the plane's `message.sent` go: with the Kafka emitter, straight to its topic through a
        librdkafka producer of the emitter's settings, made in C (no Python object per signal); any
        other listener gets them as events every SIGNAL_DRAIN_S. Returns the listener the server
        should emit to: a listener of events gets the plane's before each of the server's, so it sees
        them in order (tests, the simulator)."""
        native = getattr(listener, "native_config", None)
        if native is not None:  # the Kafka emitter's settings: the plane produces them itself
            self.plane.produce_to(rdkafka_library(), listener.topic, native)  # type: ignore[attr-defined]
            return listener
        if type(listener) is not NullListener:
            self._sink = lambda records: [listener.emit(decode(value)) for value in records]  # type: ignore[func-returns-value]
            listener = InOrder(listener, self)
        self._tick()
        return listener

    def _tick(self) -> None:
        self.drain_signals()
        self._timer = self.loop.call_later(SIGNAL_DRAIN_S, self._tick)

    def drain_signals(self) -> None:
        records = self.plane.take_signals()
        if records and self._sink is not None:
            self._sink(records)

    # -- lifecycle --------------------------------------------------------------------------------
    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.drain_signals()
        self.loop.remove_reader(self.plane.fd)
        self.plane.stop()
        self.sock.close()
