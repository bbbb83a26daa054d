"""RelayClient: the asyncio SDK the simulator, the tests, `sealguard chat` and `sealguard up` use.

    ident = Identity.generate()
    c = RelayClient(host, port, ident, bind_address="127.3.4.5")
    await c.connect(); await c.register()            # or: await c.login()
    await c.upload_prekeys(20)
    mid = await c.send(other, b"hi")                 # Olm-encrypted; returns once the server acked
    msg = await c.inbox.get()                        # Received(sender, message_id, plaintext, group, ts)

Message ids are 32 hex digits in this API (16 bytes on the wire). Received messages are acked to
the server right after they are decrypted and queued in `inbox`; duplicates (a redelivery after a
reconnect) are acked and dropped by message id.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from dataclasses import dataclass
from typing import Any

from relay.client.crypto import CryptoError, GroupBox, Inner, OlmBox
from relay.client.identity import Identity
from relay.client.media import MediaRef, compress_image, decrypt_blob, encrypt_blob
from relay.protocol import (
    KIND_NAMES,
    DeliveryStatus,
    ErrorCode,
    FrameReader,
    FrameType,
    PeerProtocolError,
    decode_deliver,
    decode_payload,
    encode,
    encode_deliver_ack,
    encode_send,
)
from sealguard.contracts import ClientKind, MessageKind, ReasonCode

log = logging.getLogger(__name__)
_KIND_INDEX = {MessageKind(name): i for i, name in enumerate(KIND_NAMES)}


class ClientError(Exception):
    """Root of SDK errors."""


class RequestRefused(ClientError):
    """The server answered a request with an ERROR frame."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(f"{code.name}: {detail}")
        self.code = code
        self.detail = detail


class Banned(ClientError):
    """The account is banned; `decision_id` is what an appeal names."""

    def __init__(self, decision_id: str, reason_code: str) -> None:
        super().__init__(f"banned by decision {decision_id} ({reason_code}); appeal with that decision id")
        self.decision_id = decision_id
        self.reason_code = reason_code


class ConnectionLost(ClientError):
    pass


@dataclass(frozen=True)
class Received:
    sender: str
    message_id: str
    plaintext: bytes
    group: str | None
    ts: int
    kind: MessageKind = MessageKind.text
    media: MediaRef | None = None


@dataclass(frozen=True)
class Notice:
    kind: str
    decision_id: str | None
    reason_code: str | None


class _Protocol(asyncio.Protocol):
    def __init__(self, client: RelayClient) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._on_lost(exc)


class RelayClient:
    def __init__(self, host: str, port: int, identity: Identity, bind_address: str | None = None,
                 *, request_timeout: float = 30.0, ping_interval: float = 30.0) -> None:
        self.host, self.port = host, port
        self.identity = identity
        self.bind_address = bind_address
        self.request_timeout = request_timeout
        self.ping_interval = ping_interval
        self.inbox: asyncio.Queue[Received] = asyncio.Queue()
        self.notices: asyncio.Queue[Notice] = asyncio.Queue()
        self.banned: tuple[str, str] | None = None
        self.closed_by: str | None = None  # the error the server closed the connection with ("FLOOD: ...")
        self.acked_ids: set[str] = set()  # message ids the server acked (delivered or queued)
        self.ack_status: dict[str, DeliveryStatus] = {}
        self.received_ids: set[str] = set()
        self.delivered_ids: set[str] = set()  # receipts: queued messages that reached their recipient
        self.read_ids: set[str] = set()  # read receipts received (E2E)
        self.presence: dict[str, bool] = {}
        self.groups: dict[str, set[str]] = {}
        self.olm = OlmBox(identity)
        self.megolm = GroupBox()
        self._reader = FrameReader(max_len=1 << 30)
        self._transport: asyncio.Transport | None = None
        self._rids = itertools.count(1)
        self._waiters: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self._peer_locks: dict[str, asyncio.Lock] = {}
        self._held: list[tuple[bytes, str, str, int, int, bytes]] = []  # group messages awaiting their key
        self._ping: asyncio.TimerHandle | None = None
        self.closed = asyncio.Event()

    # -- connection ---------------------------------------------------------------------------
    @property
    def account_id(self) -> str | None:
        return self.identity.account_id

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        local = (self.bind_address, 0) if self.bind_address else None
        self._reader = FrameReader(max_len=1 << 30)
        self.closed = asyncio.Event()
        self.closed_by = None
        transport, _ = await loop.create_connection(lambda: _Protocol(self), self.host, self.port, local_addr=local)
        self._transport = transport  # type: ignore[assignment]
        self._schedule_ping()

    def _schedule_ping(self) -> None:
        if self.ping_interval > 0:
            self._ping = asyncio.get_running_loop().call_later(self.ping_interval, self._send_ping)

    def _send_ping(self) -> None:
        if self.connected:
            self._write(encode(FrameType.PING, 0))
            self._schedule_ping()

    async def close(self) -> None:
        if self._ping is not None:
            self._ping.cancel()
        if self.connected:
            assert self._transport is not None
            self._write(encode(FrameType.BYE, 0))
            self._transport.close()
        await asyncio.sleep(0)

    def abort(self) -> None:
        """Drop the connection without a goodbye (tests of half-open and crash paths)."""
        if self._transport is not None:
            self._transport.abort()

    def _write(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise ConnectionLost(f"not connected: closed by the server ({self.closed_by})" if self.closed_by
                                 else "not connected")
        self._transport.write(data)

    def _on_lost(self, exc: Exception | None) -> None:
        if self._ping is not None:
            self._ping.cancel()
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(Banned(*self.banned) if self.banned else ConnectionLost(
                    f"connection closed by the server ({self.closed_by})" if self.closed_by else "connection closed"))
        self._waiters.clear()
        self.closed.set()

    async def request(self, ftype: FrameType, *values: Any) -> tuple[int, bytes]:
        """Send a frame and wait for the reply with its request id: (frame type, payload)."""
        rid = next(self._rids)
        return await self._request_raw(rid, encode(ftype, rid, *values))

    async def _request_raw(self, rid: int, frame: bytes) -> tuple[int, bytes]:
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._waiters[rid] = fut
        try:
            self._write(frame)
            return await asyncio.wait_for(fut, self.request_timeout)
        finally:
            self._waiters.pop(rid, None)

    # -- incoming frames --------------------------------------------------------------------------
    def _on_data(self, data: bytes) -> None:
        try:
            frames = self._reader.feed(data)
        except PeerProtocolError as exc:
            log.error("server sent a bad frame: %s", exc)
            self.abort()
            return
        acks: list[bytes] = []
        for ftype, flags, rid, payload in frames:
            if ftype == FrameType.DELIVER:
                mid = self._on_deliver(payload)
                if mid is not None:
                    acks.append(mid)
            elif rid and rid in self._waiters:
                fut = self._waiters[rid]
                if fut.done():
                    continue
                if ftype == FrameType.ERROR:
                    code, detail = decode_payload(ftype, payload)
                    fut.set_exception(RequestRefused(ErrorCode(code), detail))
                elif ftype == FrameType.BAN:
                    self._on_ban(payload)
                    assert self.banned is not None
                    fut.set_exception(Banned(*self.banned))
                else:
                    fut.set_result((ftype, payload))
            else:
                self._on_push(ftype, payload)
        if acks and self.connected:
            for i in range(0, len(acks), 1000):
                self._write(encode_deliver_ack(acks[i:i + 1000]))

    def _on_ban(self, payload: bytes) -> None:
        decision_id, reason_code, _appeal = decode_payload(FrameType.BAN, payload)
        self.banned = (decision_id, reason_code)

    def _on_push(self, ftype: int, payload: bytes) -> None:
        if ftype == FrameType.BAN:
            self._on_ban(payload)
        elif ftype == FrameType.NOTICE:
            kind, decision_id, reason_code = decode_payload(ftype, payload)
            self.notices.put_nowait(Notice(kind, decision_id or None, reason_code or None))
        elif ftype == FrameType.RECEIPT:
            mid, _recipient, _status = decode_payload(ftype, payload)
            self.delivered_ids.add(mid.hex())
        elif ftype == FrameType.PRESENCE:
            account, online = decode_payload(ftype, payload)
            self.presence[account] = bool(online)
        elif ftype == FrameType.GROUP:
            gid, members = decode_payload(ftype, payload)
            self.groups[gid] = set(members)
        elif ftype == FrameType.GROUP_EVENT:
            gid, _actor, member, op = decode_payload(ftype, payload)
            members = self.groups.setdefault(gid, set())
            if op == 3:  # removed
                members.discard(member)
                if member == self.account_id:
                    self.groups.pop(gid, None)
                    self.megolm.forget_group(gid)
                else:
                    self.megolm.rotate(gid)
            else:
                members.add(member)
        elif ftype == FrameType.ERROR:  # one of no request: the server closes the connection after it
            code, detail = decode_payload(ftype, payload)
            log.warning("server error: %s %s", ErrorCode(code).name, detail)
            self.closed_by = f"{ErrorCode(code).name}: {detail}"
        elif ftype == FrameType.BYE:
            pass

    def _on_deliver(self, payload: bytes) -> bytes | None:
        mid, sender, group, kind, ts, ciphertext = decode_deliver(payload)
        hex_id = mid.hex()
        if hex_id in self.received_ids:
            return mid  # a redelivery: ack again, drop
        try:
            if group:
                plaintext = self.megolm.decrypt(group, sender, ciphertext)
            else:
                plaintext = self.olm.decrypt(sender, ciphertext)
        except CryptoError as exc:
            if group:
                self._held.append((mid, sender, group, kind, ts, ciphertext))  # its key may come next
                return mid
            log.warning("dropping undecryptable message %s from %s: %s", hex_id, sender, exc)
            return mid
        self._accept(mid, sender, group or None, kind, ts, plaintext)
        return mid

    def _accept(self, mid: bytes, sender: str, group: str | None, kind: int, ts: int, plaintext: bytes) -> None:
        self.received_ids.add(mid.hex())
        if not plaintext:
            return
        inner, body = plaintext[0], plaintext[1:]
        if inner == Inner.USER:
            self.inbox.put_nowait(Received(sender, mid.hex(), body, group, ts, MessageKind(KIND_NAMES[kind])))
        elif inner == Inner.MEDIA:
            try:
                ref = MediaRef.decode(body)
            except ValueError:
                return
            self.inbox.put_nowait(Received(sender, mid.hex(), ref.caption.encode(), group, ts, MessageKind.media, ref))
        elif inner == Inner.GROUP_KEY:
            try:
                gid = self.megolm.add_inbound(sender, body)
            except (CryptoError, UnicodeDecodeError):
                return
            self.groups.setdefault(gid, set()).add(sender)
            self._retry_held(gid, sender)
        elif inner == Inner.READ:
            for i in range(0, len(body) - 15, 16):
                self.read_ids.add(body[i:i + 16].hex())

    def _retry_held(self, gid: str, sender: str) -> None:
        held, self._held = self._held, []
        for item in held:
            mid, s, g, kind, ts, ct = item
            if (g, s) != (gid, sender):
                self._held.append(item)
                continue
            try:
                self._accept(mid, s, g, kind, ts, self.megolm.decrypt(g, s, ct))
            except CryptoError:
                self._held.append(item)

    # -- auth --------------------------------------------------------------------------------------
    async def _challenge(self) -> bytes:
        _, payload = await self.request(FrameType.CHALLENGE_REQ)
        (nonce,) = decode_payload(FrameType.CHALLENGE, payload)
        return bytes(nonce)

    async def register(self, client_kind: ClientKind = ClientKind.sdk) -> str:
        nonce = await self._challenge()
        ident = self.identity
        signature = ident.sign(b"sealguard-register|" + nonce + ident.curve_key.encode())
        _, payload = await self.request(FrameType.REGISTER, client_kind.value, ident.identity_key, ident.curve_key,
                                        signature)
        (account,) = decode_payload(FrameType.REGISTERED, payload)
        ident.account_id = account
        return str(account)

    async def login(self) -> int:
        """Log in as the identity's account; returns how many queued messages are coming."""
        account = self.identity.account_id
        if account is None:
            raise ClientError("this identity is not registered yet")
        nonce = await self._challenge()
        signature = self.identity.sign(b"sealguard-login|" + nonce + account.encode())
        _, payload = await self.request(FrameType.LOGIN, account, signature)
        _, queued = decode_payload(FrameType.LOGGED_IN, payload)
        return int(queued)

    # -- prekeys and sessions ---------------------------------------------------------------------
    async def upload_prekeys(self, n: int = 20) -> int:
        acc = self.identity.account
        acc.generate_one_time_keys(n)
        keys = [(k, v.to_base64()) for k, v in acc.one_time_keys.items()]
        acc.generate_fallback_key()
        fb = next(iter(acc.fallback_key.items()), None)
        _, payload = await self.request(FrameType.UPLOAD_PREKEYS, keys, fb[0] if fb else "",
                                        fb[1].to_base64() if fb else "")
        acc.mark_keys_as_published()
        (count,) = decode_payload(FrameType.OK, payload)
        return int(count)

    async def claim_prekey(self, account: str) -> tuple[str, str, str, bool]:
        """(curve_key, key_id, one_time_key, is_fallback) of another account."""
        _, payload = await self.request(FrameType.CLAIM_PREKEY, account)
        _, _identity_key, curve_key, key_id, otk, is_fallback = decode_payload(FrameType.PREKEY, payload)
        return curve_key, key_id, otk, bool(is_fallback)

    async def _ensure_session(self, peer: str) -> None:
        if self.olm.has_session(peer):
            return
        lock = self._peer_locks.setdefault(peer, asyncio.Lock())
        async with lock:
            if not self.olm.has_session(peer):
                curve_key, _, otk, _ = await self.claim_prekey(peer)
                self.olm.open_outbound(peer, curve_key, otk)

    # -- messages ---------------------------------------------------------------------------------
    async def send_raw(self, recipient: str, ciphertext: bytes, kind: MessageKind = MessageKind.text) -> str:
        """Send opaque bytes (no encryption): for benchmarks and protocol tests."""
        mid = os.urandom(16)
        rid = next(self._rids)
        _, payload = await self._request_raw(rid, encode_send(rid, mid, recipient.encode("ascii"),
                                                              _KIND_INDEX[kind], ciphertext))
        _, status = decode_payload(FrameType.SEND_ACK, payload)
        hex_id = mid.hex()
        self.acked_ids.add(hex_id)
        self.ack_status[hex_id] = DeliveryStatus(status)
        return hex_id

    async def _send_inner(self, recipient: str, inner: Inner, body: bytes, kind: MessageKind) -> str:
        await self._ensure_session(recipient)
        return await self.send_raw(recipient, self.olm.encrypt(recipient, bytes((inner,)) + body), kind)

    async def send(self, recipient: str, plaintext: bytes, kind: MessageKind = MessageKind.text) -> str:
        """Olm-encrypt and send; returns the message id once the server acked (delivered or queued)."""
        return await self._send_inner(recipient, Inner.USER, plaintext, kind)

    async def send_read_receipt(self, sender: str, message_ids: list[str]) -> str:
        """Read receipts travel end to end, as control messages the relay cannot read."""
        body = b"".join(bytes.fromhex(m) for m in message_ids)
        return await self._send_inner(sender, Inner.READ, body, MessageKind.control)

    # -- groups -----------------------------------------------------------------------------------
    async def create_group(self, members: list[str]) -> str:
        _, payload = await self.request(FrameType.GROUP_CREATE, list(members))
        gid, all_members = decode_payload(FrameType.GROUP, payload)
        self.groups[gid] = set(all_members)
        return str(gid)

    async def add_member(self, gid: str, account: str) -> None:
        await self.request(FrameType.GROUP_ADD, gid, account)
        self.groups.setdefault(gid, set()).add(account)

    async def remove_member(self, gid: str, account: str) -> None:
        await self.request(FrameType.GROUP_REMOVE, gid, account)
        self.groups.get(gid, set()).discard(account)
        self.megolm.rotate(gid)

    async def send_group(self, gid: str, plaintext: bytes, kind: MessageKind = MessageKind.text,
                         inner: Inner = Inner.USER) -> str:
        """Megolm-encrypt once; the key goes over Olm to members that do not have it yet."""
        members = self.groups.get(gid)
        if members is None:
            raise ClientError(f"not a member of group {gid}")
        self.megolm.session_for(gid)
        shared = self.megolm.shared[gid]
        for m in sorted(members - shared - {self.account_id}):
            try:
                await self._send_inner(m, Inner.GROUP_KEY, self.megolm.key_message(gid), MessageKind.control)
            except RequestRefused as exc:
                if exc.code is not ErrorCode.RECIPIENT_UNAVAILABLE:
                    raise
                continue  # a banned member gets no key (nor the message); it gets the key after a lift
            shared.add(m)
        ciphertext = self.megolm.encrypt(gid, bytes((inner,)) + plaintext)
        mid = os.urandom(16)
        _, payload = await self.request(FrameType.GROUP_SEND, mid, gid, _KIND_INDEX[kind], ciphertext)
        _, status = decode_payload(FrameType.SEND_ACK, payload)
        self.acked_ids.add(mid.hex())
        self.ack_status[mid.hex()] = DeliveryStatus(status)
        return mid.hex()

    # -- people -------------------------------------------------------------------------------------
    async def add_contact(self, account: str) -> None:
        await self.request(FrameType.ADD_CONTACT, account)

    async def remove_contact(self, account: str) -> None:
        await self.request(FrameType.REMOVE_CONTACT, account)

    async def claim_handle(self, handle: str) -> None:
        await self.request(FrameType.CLAIM_HANDLE, handle)

    async def lookup_handle(self, handle: str) -> str:
        _, payload = await self.request(FrameType.LOOKUP_HANDLE, handle)
        _, account = decode_payload(FrameType.HANDLE, payload)
        return str(account)

    async def block(self, account: str) -> None:
        await self.request(FrameType.BLOCK, account)

    async def unblock(self, account: str) -> None:
        await self.request(FrameType.UNBLOCK, account)

    async def report(self, account: str, message_ids: list[str], reason: ReasonCode = ReasonCode.spam) -> int:
        """Report an account naming messages it sent us; returns how many the relay verified."""
        _, payload = await self.request(FrameType.REPORT, account, reason.value,
                                        [bytes.fromhex(m) for m in message_ids])
        _, verified = decode_payload(FrameType.REPORT_RESULT, payload)
        return int(verified)

    # -- media ---------------------------------------------------------------------------------------
    async def upload_media(self, data: bytes, *, compress: bool = True) -> MediaRef:
        if compress:
            data = await asyncio.get_running_loop().run_in_executor(None, compress_image, data)
        ciphertext, key, nonce = encrypt_blob(data)
        _, payload = await self.request(FrameType.MEDIA_UPLOAD, ciphertext)
        blob_id, _expires = decode_payload(FrameType.MEDIA_STORED, payload)
        return MediaRef(blob_id, key, nonce)

    async def send_media(self, recipient: str, data: bytes, caption: str = "", *, compress: bool = True) -> str:
        ref = await self.upload_media(data, compress=compress)
        ref = MediaRef(ref.blob_id, ref.key, ref.nonce, caption)
        return await self._send_inner(recipient, Inner.MEDIA, ref.encode(), MessageKind.media)

    async def fetch_media(self, ref: MediaRef) -> bytes:
        _, payload = await self.request(FrameType.MEDIA_FETCH, ref.blob_id)
        _, ciphertext = decode_payload(FrameType.MEDIA, payload)
        return decrypt_blob(ciphertext, ref.key, ref.nonce)

    async def ping(self) -> None:
        await self.request(FrameType.PING)
