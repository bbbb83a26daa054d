"""A minimal MQTT 3.1.1 client (CONNECT, SUBSCRIBE, PUBLISH at QoS 0) for the load side of the
relay benchmark.

Why not paho-mqtt: it spends tens of microseconds of Python per message and a thread per client;
the load side must cost less than the server it measures, so this speaks the four packets we need
straight from an asyncio Protocol, like the relay's load client does. One client = one user,
subscribed to its own topic (the user's 21-character id), clean session, no keep-alive.

Quick ACKs: mosquitto 2.0 leaves Nagle on (`set_tcp_nodelay false` by default) and a QoS 0
subscriber never writes back, so a second PUBLISH to one subscriber waits for the subscriber's
delayed ACK (40 ms on Linux). Measured here at 16k msgs/s: p99 45 ms with delayed ACKs, 12 ms
with TCP_QUICKACK re-armed after every read. We re-arm it (one setsockopt per read, on the load
side) so mosquitto is measured at its best, not at a kernel timer.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

_U16 = struct.Struct(">H")
_TS = struct.Struct(">Q")

CONNECT = 0x10
CONNACK = 0x20
PUBLISH = 0x30
SUBSCRIBE = 0x82
SUBACK = 0x90
DISCONNECT = 0xE0


class MqttError(RuntimeError):
    """The broker refused us or sent something this minimal client does not handle."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: bytes) -> bytes:
    return _U16.pack(len(s)) + s


def connect_packet(client_id: bytes, keepalive: int = 0) -> bytes:
    body = _string(b"MQTT") + bytes((4, 0x02)) + _U16.pack(keepalive) + _string(client_id)
    return bytes((CONNECT,)) + _varint(len(body)) + body


def subscribe_packet(packet_id: int, topic: bytes) -> bytes:
    body = _U16.pack(packet_id) + _string(topic) + b"\x00"
    return bytes((SUBSCRIBE,)) + _varint(len(body)) + body


def publish_packet(topic: bytes, payload: bytes) -> bytes:
    body_len = 2 + len(topic) + len(payload)
    return bytes((PUBLISH,)) + _varint(body_len) + _U16.pack(len(topic)) + topic + payload


class MqttClient(asyncio.Protocol):
    """One user on the broker. `on_message(sent_ns)` is called with the send timestamp that the
    benchmark puts in the first 8 bytes of every payload."""

    __slots__ = ("_buf", "_pad", "_sock", "_waiter", "addr", "closed", "on_message", "quickack", "transport")

    def __init__(self, addr: bytes, on_message: Callable[[int], None], payload_size: int = 100,
                 quickack: bool = True) -> None:
        self.addr = addr  # the topic this user subscribes to, and others publish to
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.on_message = on_message
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pad = bytes(payload_size - _TS.size)
        self._sock: socket.socket | None = None
        self.quickack = quickack

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._sock = transport.get_extra_info("socket")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(MqttError(f"connection lost during handshake: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.quickack and self._sock is not None:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        buf = self._buf + data if self._buf else data
        n = len(buf)
        pos = 0
        on_message = self.on_message
        while pos + 2 <= n:
            first = buf[pos]
            # remaining length: 1–4 bytes, 7 bits each
            length = 0
            shift = 0
            i = pos + 1
            while True:
                if i >= n:
                    self._buf = buf[pos:]
                    return
                byte = buf[i]
                length |= (byte & 0x7F) << shift
                i += 1
                if not byte & 0x80:
                    break
                shift += 7
                if shift > 21:
                    raise MqttError("malformed remaining length from the broker")
            end = i + length
            if end > n:
                break
            if first & 0xF0 == PUBLISH:
                tlen = (buf[i] << 8) | buf[i + 1]
                start = i + 2 + tlen + (2 if first & 0x06 else 0)  # a packet id only at QoS > 0
                on_message(_TS.unpack_from(buf, start)[0])
            elif self._waiter is not None and not self._waiter.done():
                self._waiter.set_result((first, buf[i:end]))
            pos = end
        self._buf = buf[pos:] if pos < n else b""

    # -- the load side ------------------------------------------------------------------
    async def handshake(self, client_id: bytes, timeout: float = 30.0) -> None:
        """CONNECT (clean session, no keep-alive) and SUBSCRIBE to our own topic at QoS 0."""
        assert self.transport is not None
        kind, body = await self._request(connect_packet(client_id), timeout)
        if kind != CONNACK or len(body) < 2 or body[1] != 0:
            raise MqttError(f"CONNECT refused: packet 0x{kind:02x} {body.hex()}")
        kind, body = await self._request(subscribe_packet(1, self.addr), timeout)
        if kind != SUBACK or body[-1:] == b"\x80":
            raise MqttError(f"SUBSCRIBE refused: packet 0x{kind:02x} {body.hex()}")

    async def _request(self, packet: bytes, timeout: float) -> tuple[int, bytes]:
        self._waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(packet)
        try:
            return await asyncio.wait_for(self._waiter, timeout)
        finally:
            self._waiter = None

    def send(self, to: bytes, ts_ns: int) -> None:
        """PUBLISH (QoS 0) 100 opaque bytes, our timestamp first, to another user's topic."""
        assert self.transport is not None
        self.transport.write(publish_packet(to, _TS.pack(ts_ns) + self._pad))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(bytes((DISCONNECT, 0)))
            self.transport.close()
