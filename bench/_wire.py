"""The relay benchmark's load client: one user speaking the relay's binary protocol directly.

Why not the client SDK: the SDK encrypts with Olm and keeps per-message state, which is right for
users and wrong for a load generator that must cost less than the server it measures. This
client registers a real vodozemac identity on a first connection and logs in on a second, as a
returning user does (each time signing the server's challenge),
then sends SEND frames whose 100-byte ciphertext is opaque to the server — its first 8 bytes
carry the send time, for the latency measurement — and acknowledges every DELIVER, batching the
acks of one read into one DELIVER_ACK as a real client may.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

from relay.protocol import (
    FrameReader,
    FrameType,
    decode_deliver,
    decode_payload,
    encode,
    encode_deliver_ack,
    encode_send,
)
from relay.protocol.frames import HEADER_SIZE

_TS = struct.Struct(">Q")
_MID = struct.Struct(">QQ")
_MIDS_HEAD = struct.Struct(">IBBBIH")
_DELIVER = int(FrameType.DELIVER)
_SEND_ACK = int(FrameType.SEND_ACK)
_ERROR = int(FrameType.ERROR)
_PING = int(FrameType.PING)


class RelayLoadError(RuntimeError):
    """The relay refused a step of the handshake; the message names the step and the error."""


class RelayClient(asyncio.Protocol):
    """One authenticated user. `on_message(sent_ns)` fires when a DELIVER arrives (the payload's
    timestamp), `on_ack()` when one of our SENDs is acknowledged as delivered."""

    def __init__(self, index: int, on_message: Callable[[int], None], on_ack: Callable[[], None],
                 payload_size: int = 100) -> None:
        self.index = index
        self.addr = b""  # our account id (21 ASCII bytes) once registered
        self.transport: asyncio.Transport | None = None
        self.on_message = on_message
        self.on_ack = on_ack
        self.errors = 0
        self.last_error = ""
        self._reader = FrameReader()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._seq = 0
        self._pad = bytes(payload_size - _TS.size)
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(RelayLoadError(f"connection lost during handshake: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        acks: list[bytes] = []
        for ftype, _flags, _rid, payload in self._reader.feed(data):
            if ftype == _DELIVER:
                # The codec's own decoder (not offsets of ours), so a protocol change cannot
                # silently mis-time the benchmark.
                mid, _sender, _group, _kind, _ts, ciphertext = decode_deliver(payload)
                self.on_message(_TS.unpack_from(ciphertext)[0])
                acks.append(mid)
            elif ftype == _SEND_ACK:
                self.on_ack()
            elif self._waiter is not None and not self._waiter.done():
                self._waiter.set_result((ftype, payload))
            elif ftype == _ERROR:
                self.errors += 1
                code, detail = decode_payload(ftype, payload)
                self.last_error = f"{code} {detail}"
            elif ftype == _PING:
                self._write(encode(FrameType.PONG, _rid))
        if acks:
            if len(acks) == 1:
                self._write(encode_deliver_ack(acks))
            else:
                body = b"".join(acks)
                head = _MIDS_HEAD.pack(HEADER_SIZE - 4 + 2 + len(body), 1, FrameType.DELIVER_ACK, 0, 0, len(acks))
                self._write(head + body)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # -- handshake ------------------------------------------------------------------------
    async def _request(self, frame: bytes, expect: FrameType, step: str, timeout: float) -> tuple[object, ...]:
        self._waiter = asyncio.get_running_loop().create_future()
        self._write(frame)
        try:
            ftype, payload = await asyncio.wait_for(self._waiter, timeout)
        finally:
            self._waiter = None
        if ftype == _ERROR:
            code, detail = decode_payload(ftype, payload)
            raise RelayLoadError(f"{step}: the relay answered error {code} ({detail})")
        if ftype != expect:
            raise RelayLoadError(f"{step}: expected {expect.name}, got frame type 0x{ftype:02x}")
        return decode_payload(ftype, payload)

    async def _challenge(self, timeout: float) -> bytes:
        (nonce,) = await self._request(encode(FrameType.CHALLENGE_REQ, 1), FrameType.CHALLENGE, "challenge",
                                       timeout)
        return nonce  # type: ignore[return-value]

    async def register(self, account: object, client_kind: str = "sdk", timeout: float = 60.0) -> str:
        """Register a fresh vodozemac identity: sign `sealguard-register|nonce|curve key`."""
        ik = account.ed25519_key.to_base64()  # type: ignore[attr-defined]
        ck = account.curve25519_key.to_base64()  # type: ignore[attr-defined]
        nonce = await self._challenge(timeout)
        sig = account.sign(b"sealguard-register|" + nonce + ck.encode()).to_base64()  # type: ignore[attr-defined]
        (acct,) = await self._request(encode(FrameType.REGISTER, 2, client_kind, ik, ck, sig), FrameType.REGISTERED,
                                      "register", timeout)
        return str(acct)

    async def login(self, account: object, account_id: str, timeout: float = 60.0) -> None:
        """Log in as a returning user: sign `sealguard-login|nonce|account id` with the identity key."""
        nonce = await self._challenge(timeout)
        sig = account.sign(b"sealguard-login|" + nonce + account_id.encode()).to_base64()  # type: ignore[attr-defined]
        await self._request(encode(FrameType.LOGIN, 3, account_id, sig), FrameType.LOGGED_IN, "login", timeout)
        self.addr = account_id.encode("ascii")

    # -- the load ------------------------------------------------------------------------
    def send(self, to: bytes, ts_ns: int) -> None:
        """SEND 100 opaque bytes (our timestamp first) to the account `to` (21 ASCII bytes)."""
        self._seq += 1
        assert self.transport is not None
        self.transport.write(encode_send(0, _MID.pack(self.index, self._seq), to, 0, _TS.pack(ts_ns) + self._pad))

    def ping(self) -> None:
        self._write(encode(FrameType.PING, 0))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._write(encode(FrameType.BYE, 0))
            self.transport.close()
