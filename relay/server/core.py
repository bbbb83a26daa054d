"""The relay server: connections, auth, routing, acks, the offline queue, and what each frame does.

Routing state (who is online, groups, blocks, bans) lives in memory; the database is written on
one DB thread, in batches, and never awaited on the path of a message to an online recipient.
A message's sender gets SEND_ACK only when the recipient's client acked it (DELIVERED) or it is
committed in `queued_messages` (QUEUED) — DESIGN.md's durability rule. Enforcement state and its
application live in `enforce.py`; people, groups, reports and media handlers in `features.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import secrets
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import vodozemac

from relay.listener import NullListener, SignalListener
from relay.protocol import (
    ACCOUNT_ID_LEN,
    KIND_NAMES,
    MAX_FRAME,
    MAX_MESSAGE_BYTES,
    MESSAGE_ID_LEN,
    PRE_AUTH_TYPES,
    VERSION,
    DeliveryStatus,
    ErrorCode,
    Flag,
    FrameType,
    PeerProtocolError,
    decode_message_ids,
    decode_payload,
    decode_send,
    encode,
    encode_deliver,
    encode_error,
    encode_frame,
    encode_send_ack,
)
from relay.server.connection import FRAME_BUDGET, LOOKUP_COST, PING_COST, Connection
from relay.server.enforce import DecisionState
from relay.server.limits import PER_NET_BUCKET, Rate, RateLimiter
from relay.server.plane import SET_BLOCKS, SET_CONTACTS, SET_TALKED, DataPlane
from relay.server.stalls import StallWatch
from relay.server.store import AlreadyRegistered, QueuedOut, RelayStore
from relay.signals import SignalBook, net_bucket
from sealguard.contracts import Action, ClientKind, Limit, MessageKind, now_ms
from sealguard.storage import Database

log = logging.getLogger(__name__)
T = TypeVar("T")
_KINDS = tuple(MessageKind(k) for k in KIND_NAMES)
_NKINDS = len(_KINDS)
_KIND_VALUES = tuple(k.value for k in _KINDS)
# Hot-path frame layouts, packed in one call each (codec.py holds the general encoders).
_SEND_FIXED = MESSAGE_ID_LEN + ACCOUNT_ID_LEN + 1  # SEND: mid, recipient, kind, then the ciphertext
_DELIVER_1TO1 = struct.Struct(f">IBBBI{MESSAGE_ID_LEN}s{ACCOUNT_ID_LEN}sBBQ")  # header, mid, sender, '' group, kind, ts
_DELIVER_FIXED = _DELIVER_1TO1.size - 4
_ACK = struct.Struct(f">IBBBI{MESSAGE_ID_LEN}sB")
_ACK_LEN = _ACK.size - 4
_VERSION, _DELIVER, _SEND_ACK, _DELIVERED = VERSION, int(FrameType.DELIVER), int(FrameType.SEND_ACK), \
    int(DeliveryStatus.DELIVERED)
_PONG = int(FrameType.PONG)
_time_ns = time.time_ns
_blake2b = hashlib.blake2b  # the commitment: store.binary_commitment, inlined on the hot path
_CLIENT_KINDS = {k.value: k for k in ClientKind}
COMPACT_PAUSE_S = 0.2  # between two steps of compacting report commitments (_purge)


class RelayError(Exception):
    """Root of relay server errors."""


class Refused(RelayError):
    """A request the server refuses; the connection stays open (codes ≥ 200)."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class Unlearned(Refused):
    """UNKNOWN_ACCOUNT on a cluster node, not answered yet: `account` is not in this node's table, but
    its registration news may never have reached the node (docs/cluster.md, "Readers and the embedded
    broker's gaps"), so the server asks the database first (`RelayServer._retry_unlearned`)."""

    def __init__(self, account: str, detail: str) -> None:
        super().__init__(ErrorCode.UNKNOWN_ACCOUNT, detail)
        self.account = account


@dataclass
class RelayConfig:
    """Knobs of one relay node. Defaults suit a laptop; tests shrink the timeouts."""

    node: str = "relay-1"
    net_salt: str = "sealguard-dev-salt"
    media_dir: Path = Path("media")
    idle_timeout_s: float = 120.0  # an authenticated connection silent this long is closed
    handshake_timeout_s: float = 15.0  # a connection must log in within this
    ack_timeout_s: float = 5.0  # an online recipient that has not acked by then: the message is queued
    queue_ttl_s: float = 14 * 86400.0
    queue_quota: int = 1000  # per recipient
    commitment_ttl_s: float = 30 * 86400.0
    media_ttl_s: float = 7 * 86400.0
    flush_interval_s: float = 0.002  # batching window for queue writes (a sender waits on them)
    # Report commitments wait longer: nobody waits on them (a report flushes them first), and each
    # commit rewrites the index pages it touched — random keys touch most of them — so one commit a
    # second costs ~40% less per row than four (measured 12 → 7 µs per row at 100k-200k rows).
    commitment_flush_s: float = 1.0
    notice_poll_s: float = 1.0
    reconcile_interval_s: float = 5.0  # active decisions re-read from the database (the truth) this often
    sweep_interval_s: float = 0.5
    purge_interval_s: float = 30.0
    limits: dict[Limit, Rate] = field(default_factory=dict)
    restricted_limits: dict[Limit, Rate] = field(default_factory=dict)
    # The sockets and the common 1:1 path in C (relay/server/plane.py) when the module is built; a
    # cluster node keeps the asyncio data plane (its handovers and pacing live there).
    native_plane: bool = True


class Outgoing:
    """A SEND waiting to be acked: settled once every recipient acked or the message is queued."""

    __slots__ = ("conn", "mid", "queued", "refused", "remaining", "rid")

    def __init__(self, conn: Connection, rid: int, mid: bytes, remaining: int) -> None:
        self.conn = conn
        self.rid = rid
        self.mid = mid
        self.remaining = remaining
        self.queued = False
        self.refused = 0


class Pending:
    """A group message, or one from the offline queue, handed to an online recipient and waiting
    for its DELIVER_ACK. A 1:1 message waits as a plain tuple, `Direct` — one tuple per message
    on the hot path instead of an object (a Python `__init__` call costs 10× a tuple)."""

    __slots__ = ("ciphertext", "deadline", "from_queue", "group", "kind", "out", "sender", "ts")

    def __init__(self, out: Outgoing | None, sender: str, group: str | None, kind: int, ts: int, ciphertext: bytes,
                 deadline: float, from_queue: bool) -> None:
        self.out = out
        self.sender = sender
        self.group = group
        self.kind = kind
        self.ts = ts
        self.ciphertext = ciphertext
        self.deadline = deadline
        self.from_queue = from_queue


# A 1:1 message handed to its online recipient: (sender's connection, SEND request id, sender, kind,
# ts, ciphertext, ack deadline).
Direct = tuple[Connection, int, str, int, int, bytes, float]
_DEADLINE = 6


class Stats:
    """Plain counters read by the Prometheus collector at scrape time (no locks on the hot path)."""

    __slots__ = (
        "acks_delivered",
        "acks_queued",
        "delivered",
        "enforcements",
        "errors",
        "frames_in",
        "frames_out",
        "limit_breaches",
        "logins",
        "protocol_errors",
        "queued",
        "registrations",
        "sends",
        "slow_consumers",
        "timeouts",
        "withheld",
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)


class RelayServer:
    def __init__(self, db: Database, config: RelayConfig | None = None, listener: SignalListener | None = None,
                 clock: Callable[[], int] = now_ms) -> None:
        from relay.server.enforce import Enforcer
        from relay.server.features import Features

        self.config = config or RelayConfig()
        self.db = db
        self.store = RelayStore(db)
        self.listener: SignalListener = listener or NullListener()
        # A listener may take `message.sent` — most signals — as plain fields (the Kafka emitter
        # formats them on its own thread); any other gets the event object.
        self._emit_sent: Callable[[str, str, int, int, bool, bool, int], None] | None = getattr(
            self.listener, "emit_message_sent", None)
        self.book = SignalBook(self.config.node, clock)
        self.limiter = RateLimiter(self.config.limits, self.config.restricted_limits)
        limiter = self.limiter
        self._send_pool, self._send_tight = limiter.pool(Limit.send), limiter.pool(Limit.send, True)
        self._first_pool = limiter.pool(Limit.first_contact)
        self._first_tight = limiter.pool(Limit.first_contact, True)
        self.stats = Stats()
        self.conns: dict[str, Connection] = {}
        self.all_conns: set[Connection] = set()
        self.accounts: set[str] = set()
        self.blocks: set[tuple[str, str]] = set()  # (blocker, blocked)
        self.groups: dict[str, set[str]] = {}
        self.inflight: dict[tuple[bytes, str], Pending | Direct] = {}
        self.enforcer = Enforcer(self)
        self.features = Features(self)
        self.cluster: Any = None  # relay.cluster.Cluster when this node is one of several (docs/cluster.md)
        self.plane: DataPlane | None = None  # the native data plane, when it serves (start)
        self._plane_counts: dict[str, int] = {}  # its counters so far (sync_plane)
        self._plane_lock = threading.Lock()
        self.plane_inflight = 0
        self.plane_signal_buffer = 0
        # Spend one Limit.send / Limit.first_contact token of an unrestricted sender: its buckets live in
        # the plane when it serves (start).
        self._take_send: Callable[[Connection, str], bool] = lambda conn, account: self._send_pool.take(account)
        self._take_first: Callable[[Connection, str], bool] = lambda conn, account: self._first_pool.take(account)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-db")
        self._enqueue_batch: list[tuple[QueuedOut, Outgoing | None]] = []
        self._delete_batch: list[tuple[bytes, str]] = []
        # Report commitments since the last flush: concatenated 16-byte H(message id, sender, recipient),
        # hashed at send time. Bytes, not a tuple per message: nothing for the DB thread to do in Python
        # (it holds the GIL for none of it) and no object per message for the garbage collector.
        self._commits = bytearray()
        self._compacting = False  # compacting commitment blocks (_purge)
        self._flush_handle: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Future[Any]] = set()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self.stall_watch = StallWatch()  # event-loop lag and GC pauses, for /metrics
        self._tasks: set[asyncio.Task[Any]] = set()
        self.host = ""
        self.port = 0
        self._commit_ttl_ms = int(self.config.commitment_ttl_s * 1000)
        self._dirty: list[Connection] = []
        self.write_interval_s = 0.0  # see _pace_writes; a cluster node sets it
        self._next_write = 0.0
        # Sweep intervals are numbered (`sweep_gen`): a connection records the number of the interval of
        # its last complete frame (`Connection.last_seen`) and gets a fresh frame budget with its first
        # frame of an interval, so the sweep need not visit it. Each sweep visits the connections not
        # logged in (`_pre_auth`: handshake timeout) and, every ~idle_timeout/8, all of them (idle
        # timeout). At 10,000 users a pass over every connection twice a second was ~5% of the loop.
        self.sweep_gen = 1
        self._pre_auth: set[Connection] = set()
        self._idle_sweeps = max(1, math.ceil(self.config.idle_timeout_s / self.config.sweep_interval_s))
        self._idle_scan_every = max(1, round(self.config.idle_timeout_s / 8 / self.config.sweep_interval_s))
        self._ack_deadline = time.monotonic() + self.config.ack_timeout_s
        self.queue_depth = 0  # offline queue rows, refreshed by the purge job
        self.withheld_depth = 0
        self._handlers: dict[int, Callable[[Connection, int, int, bytes], None]] = {
            FrameType.PING: self._on_ping,
            FrameType.PONG: lambda c, f, r, p: None,
            FrameType.BYE: lambda c, f, r, p: c.close(),
            FrameType.CHALLENGE_REQ: self._on_challenge,
            FrameType.REGISTER: self._on_register,
            FrameType.LOGIN: self._on_login,
            FrameType.SEND: self._on_send,
            FrameType.DELIVER_ACK: self._on_deliver_ack,
            **self.features.handlers(),
        }

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._loop = asyncio.get_running_loop()
        self.config.media_dir.mkdir(parents=True, exist_ok=True)
        self.accounts = await self.run_db(self.store.all_account_ids)
        self.blocks = await self.run_db(self.store.all_blocks)
        self.groups = await self.run_db(self.store.all_groups)
        await self.enforcer.load_from_db()
        if self.config.native_plane and DataPlane.available():
            self.plane = plane = DataPlane(self, self._loop, host, port)
            self.host, self.port = plane.host, plane.port
            pool, take = self._send_pool, plane.plane.take
            self._take_send = lambda conn, account: take(conn.transport.cid, False, pool.clock())  # type: ignore[union-attr]
            self._take_first = lambda conn, account: take(conn.transport.cid, True, pool.clock())  # type: ignore[union-attr]
            for blocker, blocked in self.blocks:
                self.mirror(SET_BLOCKS, blocker, blocked)
            self.listener = plane.start_signals(self.listener)
        else:
            self._server = await self._loop.create_server(lambda: Connection(self), host, port, backlog=4096,
                                                          reuse_address=True)
            sock = self._server.sockets[0].getsockname()
            self.host, self.port = sock[0], sock[1]
        self.stall_watch.start(self._loop)
        attach = getattr(self.listener, "attach_loop", None)  # the Kafka emitter drains on this loop, not a thread
        if attach is not None:
            attach(self._loop)
        self._every(self.config.sweep_interval_s, self._sweep)
        self._every(self.config.commitment_flush_s, self._flush_commits)
        self._every(self.config.purge_interval_s, lambda: self.spawn(self._purge()))
        self._every(self.config.notice_poll_s, lambda: self.spawn(self.enforcer.poll_notices()))
        self._every(self.config.reconcile_interval_s, self.enforcer.reconcile_soon)
        log.info("relay %s listening on %s:%d (%s)", self.config.node, self.host, self.port,
                 f"native data plane, {self.plane.plane.io}" if self.plane is not None else "asyncio data plane")

    def _every(self, interval: float, fn: Callable[[], None]) -> None:
        assert self._loop is not None
        loop = self._loop

        def tick() -> None:
            try:
                fn()
            except Exception:
                log.exception("periodic job failed")
            self._timers.append(loop.call_later(interval, tick))

        self._timers.append(loop.call_later(interval, tick))

    async def stop(self) -> None:
        """Stop accepting, queue what is in flight (so nothing accepted is lost), close everyone."""
        for t in self._timers:
            t.cancel()
        self.stall_watch.stop()
        if self._server is not None:
            self._server.close()
        for key in list(self.inflight):
            self._requeue(key)
        if self.plane is not None:
            for held in self.plane.plane.take_inflight():
                self.requeue_held(held)
        for conn in list(self.all_conns):
            conn.send(encode(FrameType.BYE, 0))
            conn.close()
        if self.plane is not None:
            self.plane.drain()  # the closes' events: each connection's end is told (session.closed), as with asyncio
        await self._flush_now()
        if self.plane is not None:
            self.plane.stop()
        for t in list(self._tasks):
            t.cancel()
        if self._server is not None:
            await self._server.wait_closed()
        self._executor.shutdown(wait=True)

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("relay task failed", exc_info=task.exception())

    async def run_db(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._loop is not None
        return await self._loop.run_in_executor(self._executor, fn, *args)

    # -- connections -----------------------------------------------------------------------------
    def mark_dirty(self, conn: Connection) -> None:
        """`conn` has frames to write: write them (all at once) at the end of this loop iteration."""
        dirty = self._dirty
        if not dirty and self._loop is not None:
            self._loop.call_soon(self.flush_writes)
        dirty.append(conn)

    def flush_writes(self) -> None:
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush()
        if self.write_interval_s:
            self._pace_writes()

    def _pace_writes(self) -> None:
        """At most one writing iteration per `write_interval_s` (a cluster node sets it, see
        ClusterConfig.write_interval_ms): after this one's writes, the loop sleeps out the rest of
        the interval, so the next iteration finds more sockets ready with more frames each — fewer
        epoll wakeups, reads and writes per message. When the last writing iteration ended at least
        an interval ago (a busy loop) it never sleeps. Off (0) for a single node."""
        now = time.monotonic()
        wait = self._next_write - now
        if wait > 0:
            time.sleep(wait)
            now += wait
        self._next_write = now + self.write_interval_s

    def on_connect(self, conn: Connection) -> None:
        conn.bucket = net_bucket(conn.peer, self.config.net_salt)
        self.all_conns.add(conn)
        self._pre_auth.add(conn)

    def on_disconnect(self, conn: Connection) -> None:
        self.all_conns.discard(conn)
        self._pre_auth.discard(conn)
        account = conn.account
        if account is None or self.conns.get(account) is not conn:
            return
        del self.conns[account]
        if self.cluster is not None:
            self.cluster.disconnected(account)
        # Messages handed to this client and not acked go to the queue.
        for key in [k for k in self.inflight if k[1] == account]:
            self._requeue(key)
        self.listener.emit(self.book.session_closed(account, conn.bucket, time.monotonic() - conn.opened_at))
        self.features.presence_changed(account, False)

    def on_data(self, conn: Connection, data: bytes) -> None:
        try:
            frames = conn.reader.feed(data)
        except PeerProtocolError as exc:
            self.peer_error(conn, 0, exc.code, exc.message)
            return
        handlers = self._handlers
        n = len(frames)
        if n and conn.last_seen != self.sweep_gen:
            # Its first frames in this sweep interval (no clock read per read) — only complete frames
            # count, so a client dribbling bytes that never finish a frame times out.
            conn.last_seen = self.sweep_gen
            if conn.account is not None:
                conn.budget = FRAME_BUDGET  # FRAME_BUDGET frames per sweep interval once logged in
        conn.budget -= n
        self.stats.frames_in += n
        if conn.budget < 0:
            self.peer_error(conn, 0, ErrorCode.FLOOD, "too many frames; slow down")
            return
        for ftype, flags, rid, payload in frames:
            if conn.closed:
                return
            if conn.account is None and ftype not in PRE_AUTH_TYPES:
                self.reply_error(conn, rid, ErrorCode.NOT_AUTHENTICATED, f"{FrameType(ftype).name} needs a login")
                continue
            handler = handlers.get(ftype)
            if handler is None:
                self.reply_error(conn, rid, ErrorCode.INVALID, f"{FrameType(ftype).name} is a server-to-client frame")
                continue
            try:
                handler(conn, flags, rid, payload)
            except Unlearned as exc:
                self.spawn(self._retry_unlearned(conn, handler, flags, rid, payload, exc))
            except Refused as exc:
                self.reply_error(conn, rid, exc.code, exc.detail)
            except PeerProtocolError as exc:
                self.peer_error(conn, rid, exc.code, exc.message)
                return

    def peer_error(self, conn: Connection, rid: int, code: ErrorCode, detail: str) -> None:
        """The peer broke the protocol: tell it why, close only its connection."""
        self.stats.protocol_errors += 1
        log.info("closing %s: %s (%s)", conn.account or conn.bucket, code.name, detail)
        conn.send(encode_error(rid, code, detail))
        conn.close()

    def reply_error(self, conn: Connection, rid: int, code: ErrorCode, detail: str) -> None:
        self.stats.errors += 1
        conn.send(encode_error(rid, code, detail))

    def reply(self, conn: Connection, frame: bytes) -> None:
        self.stats.frames_out += 1
        conn.send(frame)

    def breach(self, limit: Limit, *, account: str | None = None, bucket: str | None = None) -> Refused:
        self.stats.limit_breaches += 1
        self.listener.emit(self.book.limit_breached(limit, account=account, bucket=bucket))
        return Refused(ErrorCode.RATE_LIMITED, f"rate limit {limit.value} exceeded")

    def take(self, limit: Limit, conn: Connection) -> None:
        """Spend one token of `limit` for this connection (its net_bucket before login) or refuse."""
        if limit in PER_NET_BUCKET:
            if not self.limiter.take(limit, conn.bucket):
                raise self.breach(limit, bucket=conn.bucket)
            return
        account = conn.account or ""
        if not self.limiter.take(limit, account, account in self.enforcer.restricted):
            raise self.breach(limit, account=account)

    # -- auth -------------------------------------------------------------------------------------
    def _on_ping(self, conn: Connection, flags: int, rid: int, payload: bytes) -> None:
        conn.budget -= PING_COST
        if conn.budget < 0:
            raise PeerProtocolError(ErrorCode.FLOOD, "too many PINGs; one every few seconds keeps a connection")
        conn.send(encode_frame(_PONG, rid))  # no fields: the header alone (the generic encoder cost 5x)

    def _on_challenge(self, conn: Connection, flags: int, rid: int, payload: bytes) -> None:
        self.take(Limit.challenge, conn)
        conn.nonce = secrets.token_bytes(32)
        self.reply(conn, encode(FrameType.CHALLENGE, rid, conn.nonce))

    def _take_nonce(self, conn: Connection) -> bytes:
        if conn.account is not None:
            raise Refused(ErrorCode.ALREADY_AUTHENTICATED, "this connection is already logged in")
        nonce, conn.nonce = conn.nonce, None
        if nonce is None:
            raise Refused(ErrorCode.NO_CHALLENGE, "ask for a CHALLENGE first; each one is good for one attempt")
        return nonce

    @staticmethod
    def _verify(identity_key: str, message: bytes, signature: str) -> None:
        try:
            vodozemac.Ed25519PublicKey.from_base64(identity_key).verify_signature(
                message, vodozemac.Ed25519Signature.from_base64(signature))
        except (ValueError, TypeError):
            raise Refused(ErrorCode.BAD_SIGNATURE, "the signature does not verify with this identity key") from None

    def _on_register(self, conn: Connection, flags: int, rid: int, payload: bytes) -> None:
        kind, identity_key, curve_key, signature = decode_payload(FrameType.REGISTER, payload)
        nonce = self._take_nonce(conn)
        if kind not in _CLIENT_KINDS:
            raise Refused(ErrorCode.INVALID, f"client_kind {kind!r} is not one of {', '.join(_CLIENT_KINDS)}")
        try:
            vodozemac.Curve25519PublicKey.from_base64(curve_key)
        except (ValueError, TypeError):
            raise Refused(ErrorCode.INVALID, "curve_key is not a Curve25519 public key") from None
        self._verify(identity_key, b"sealguard-register|" + nonce + curve_key.encode(), signature)
        self.take(Limit.register, conn)
        self.spawn(self._register(conn, rid, _CLIENT_KINDS[kind], identity_key, curve_key))

    async def _register(self, conn: Connection, rid: int, kind: ClientKind, identity_key: str, curve_key: str) -> None:
        try:
            account = await self.run_db(self.store.create_account, identity_key, curve_key, conn.bucket, kind.value)
        except AlreadyRegistered as exc:
            self.reply_error(conn, rid, ErrorCode.ALREADY_REGISTERED, str(exc))
            return
        self.accounts.add(account)
        if self.cluster is not None:
            self.cluster.registered(account)
        self.stats.registrations += 1
        self.listener.emit(self.book.registered(account, conn.bucket, kind))
        if conn.closed:
            return
        self._authenticated(conn, account)
        self.reply(conn, encode(FrameType.REGISTERED, rid, account))
        self.listener.emit(self.book.session_opened(account, conn.bucket))

    def _on_login(self, conn: Connection, flags: int, rid: int, payload: bytes) -> None:
        account, signature = decode_payload(FrameType.LOGIN, payload)
        nonce = self._take_nonce(conn)
        if account not in self.accounts and self.cluster is None:  # a cluster node asks the database (`_login`)
            raise Refused(ErrorCode.UNKNOWN_ACCOUNT, "no such account")
        self.spawn(self._login(conn, rid, account, nonce, signature))

    async def _login(self, conn: Connection, rid: int, account: str, nonce: bytes, signature: str) -> None:
        keys, db_ban = await self.run_db(self.store.login_lookup, account)
        if conn.closed:
            return
        if keys is None:
            self.reply_error(conn, rid, ErrorCode.UNKNOWN_ACCOUNT, "no such account")
            return
        self._learn(account)
        try:
            self._verify(keys[0], b"sealguard-login|" + nonce + account.encode(), signature)
        except Refused as exc:
            self.reply_error(conn, rid, exc.code, exc.detail)
            return
        if db_ban is not None and self.enforcer.active_ban(account) is None:
            # Banned in the database before this node read the decision from the topic: apply it now.
            await self.enforcer.apply(account, DecisionState(db_ban.decision_id, Action.ban, db_ban.reason_code,
                                                             db_ban.created_at, db_ban.expires_at))
            if conn.closed:
                return
        ban = self.enforcer.active_ban(account)
        if ban is not None:
            conn.send(self.enforcer.ban_frame(ban, rid))
            conn.close()
            return
        old = self.conns.get(account)
        if old is not None and old is not conn:  # one device per account: the newer login wins
            old.send(encode(FrameType.BYE, 0))
            old.close()
            self.on_disconnect(old)
        # Routable before the queue is read: a message sent meanwhile is delivered directly, and one
        # committed to the queue after the read is handed over by `_write` (never left in the
        # database while its recipient is online). `_deliver_queued` skips what is already in flight.
        self._authenticated(conn, account)
        contacts, queued = await asyncio.gather(self.run_db(self.store.contacts_of, account),
                                                self.run_db(self.store.load_queue, account,
                                                            self.config.queue_quota))
        if conn.closed:
            return
        self.book.set_contacts(account, set(contacts))
        for contact in contacts:
            self.mirror(SET_CONTACTS, account, contact)
        self.stats.logins += 1
        self.reply(conn, encode(FrameType.LOGGED_IN, rid, account, len(queued)))
        self.listener.emit(self.book.session_opened(account, conn.bucket))
        self._deliver_queued(conn, queued)
        self.features.presence_changed(account, True)
        await self.enforcer.deliver_notices(account)

    def _authenticated(self, conn: Connection, account: str) -> None:
        self._pre_auth.discard(conn)
        conn.budget = FRAME_BUDGET
        conn.account = account
        conn.account_b = account.encode()
        conn.reader.max_len = MAX_FRAME
        conn.opened_at = time.monotonic()
        self.conns[account] = conn
        if self.plane is not None:
            self.plane.plane.login(conn.transport.cid, conn.account_b, self.may_stay_native(account),  # type: ignore[union-attr]
                                   self._send_pool.bucket(account), self._first_pool.bucket(account))
        if self.cluster is not None:
            self.cluster.connected(account)

    def _deliver_queued(self, conn: Connection, queued: list[QueuedOut]) -> None:
        deadline = time.monotonic() + self.config.ack_timeout_s
        account = conn.account
        assert account is not None
        for q in queued:
            key = (q.message_id, account)
            if key in self.inflight:
                continue
            self.inflight[key] = Pending(None, q.sender, q.group, q.kind, q.enqueued_at, q.ciphertext, deadline, True)
            conn.send(encode_deliver(q.message_id, q.sender.encode(), (q.group or "").encode(), q.kind,
                                     q.enqueued_at, q.ciphertext, Flag.FROM_QUEUE))

    # -- messages -----------------------------------------------------------------------------------
    def check_send(self, conn: Connection, kind: int, size: int) -> str:
        account = conn.account
        assert account is not None
        if size > MAX_MESSAGE_BYTES:
            raise Refused(ErrorCode.TOO_LARGE, f"ciphertext of {size} bytes exceeds {MAX_MESSAGE_BYTES}")
        if kind >= len(_KINDS):
            raise Refused(ErrorCode.INVALID, f"message kind {kind} is not one of 0..{len(_KINDS) - 1}")
        if account in self.enforcer.bans:
            raise Refused(ErrorCode.BANNED, "this account is banned")
        if not (self._send_tight.take(account) if account in self.enforcer.restricted
                else self._take_send(conn, account)):
            raise self.breach(Limit.send, account=account)
        return account

    def _learn(self, account: str) -> None:
        """The database has `account` but this node's table did not: a cluster node learns it (its
        registration record, on the routes topic, never reached this node — docs/cluster.md, "Readers
        and the embedded broker's gaps")."""
        if account not in self.accounts:
            self.accounts.add(account)
            if self.cluster is not None:
                self.cluster.stats.accounts_learned += 1
            log.warning("account %s learned from the database: its registration news never came", account)

    def unknown(self, account: str, detail: str) -> Refused:
        """The refusal for an account this node does not know: UNKNOWN_ACCOUNT — on a cluster node
        only after the database said so (`Unlearned`); a known account never gets here."""
        if self.cluster is None:
            return Refused(ErrorCode.UNKNOWN_ACCOUNT, detail)
        return Unlearned(account, detail)

    async def _retry_unlearned(self, conn: Connection, handler: Callable[[Connection, int, int, bytes], None],
                               flags: int, rid: int, payload: bytes, miss: Unlearned) -> None:
        """Cluster nodes only, the miss path of any request naming an account (a SEND's recipient, a
        prekey claim, a contact, a block, a report, a group's members): the accounts table is the
        truth, so ask it before answering UNKNOWN_ACCOUNT; if the account is there, learn it and
        handle the request again (its limits are taken again). Each lookup costs the connection
        LOOKUP_COST of its frame budget, so made-up account ids cannot turn into a flood of queries."""
        while True:
            conn.budget -= LOOKUP_COST
            if conn.budget < 0:
                self.peer_error(conn, rid, ErrorCode.FLOOD, "too many requests naming unknown accounts")
                return
            try:
                keys = await self.run_db(self.store.get_account, miss.account)
            except Exception:
                log.exception("account lookup failed")
                self.reply_error(conn, rid, ErrorCode.INTERNAL, "could not look the account up; retry")
                return
            if conn.closed:
                return
            if keys is None:
                self.reply_error(conn, rid, miss.code, miss.detail)
                return
            self._learn(miss.account)
            try:
                handler(conn, flags, rid, payload)
                return
            except Unlearned as exc:  # a group's next unknown member
                miss = exc
            except Refused as exc:
                self.reply_error(conn, rid, exc.code, exc.detail)
                return
            except PeerProtocolError as exc:
                self.peer_error(conn, rid, exc.code, exc.message)
                return

    def _on_send(self, conn: Connection, flags: int, rid: int, payload: bytes) -> None:
        # The hot path: a SEND to an online recipient costs a tuple in `inflight`, one DELIVER and
        # a tuple each for the signal and the report commitment; everything rare is checked by set lookups.
        if len(payload) < _SEND_FIXED:
            decode_send(payload)  # raises MALFORMED naming the fields
        kind = payload[_SEND_FIXED - 1]
        size = len(payload) - _SEND_FIXED
        sender = conn.account
        assert sender is not None
        enforcer = self.enforcer
        restricted = enforcer.restricted
        if size > MAX_MESSAGE_BYTES or kind >= _NKINDS or sender in enforcer.bans:
            self.check_send(conn, kind, size)  # raises the right refusal
        if not (self._send_tight.take(sender) if sender in restricted else self._take_send(conn, sender)):
            raise self.breach(Limit.send, account=sender)
        try:
            recipient = payload[16:_SEND_FIXED - 1].decode("ascii")
        except UnicodeDecodeError:
            raise PeerProtocolError(ErrorCode.MALFORMED, "SEND.recipient is not an ASCII account id") from None
        if recipient not in self.accounts:
            raise self.unknown(recipient, "no such recipient")
        if recipient in enforcer.bans and enforcer.active_ban(recipient) is not None:
            # Never acked: it could be neither delivered nor queued for delivery.
            raise Refused(ErrorCode.RECIPIENT_UNAVAILABLE, "the recipient cannot receive messages")
        book = self.book
        pair = sender + "\x00" + recipient if sender < recipient else recipient + "\x00" + sender  # signals._pair
        first = pair not in book._talked and recipient not in book._contacts.get(sender, ())
        plane = self.plane.plane if self.plane is not None else None
        if first and plane is not None and plane.has_pair(SET_TALKED, conn.account_b, payload[16:_SEND_FIXED - 1]):
            first = False  # they talked through the plane: the book learns it (book.message_sent below)
            book._talked.add(pair)
        if first and not (self._first_tight.take(sender) if sender in restricted else self._take_first(conn, sender)):
            raise self.breach(Limit.first_contact, account=sender)
        if (recipient, sender) in self.blocks:
            raise Refused(ErrorCode.BLOCKED, "the recipient blocked this account")
        if plane is not None:
            plane.pair(SET_TALKED, conn.account_b, payload[16:_SEND_FIXED - 1])
        self.stats.sends += 1
        rconn = self.conns.get(recipient)
        ts = _time_ns() // 1_000_000
        emit_sent = self._emit_sent
        if emit_sent is not None:
            if first:
                book._talked.add(pair)
            emit_sent(sender, recipient, size, kind, first, rconn is not None, ts)
        else:
            self.listener.emit(book.message_sent(sender, recipient, size, _KINDS[kind], rconn is not None, ts))
        mid = payload[:16]
        self._commits += _blake2b(mid + conn.account_b + payload[16:_SEND_FIXED - 1], digest_size=16).digest()
        ciphertext = payload[_SEND_FIXED:]
        if rconn is not None and not rconn.closed:
            self.inflight[(mid, recipient)] = (conn, rid, sender, kind, ts, ciphertext, self._ack_deadline)
            rconn.send(_DELIVER_1TO1.pack(_DELIVER_FIXED + size, _VERSION, _DELIVER, 0, 0, mid, conn.account_b, 0,
                                          kind, ts) + ciphertext)
            self.stats.frames_out += 1
        else:
            cluster = self.cluster  # on another node: handed over as plain fields (no QueuedOut, no Outgoing)
            if cluster is not None and cluster.hand_over_direct(conn, rid, mid, recipient, sender, kind, ts,
                                                                ciphertext):
                return
            self._queue(QueuedOut(mid, recipient, sender, None, kind, ciphertext, ts,
                                  ts + int(self.config.queue_ttl_s * 1000)), Outgoing(conn, rid, mid, 1))

    def route(self, out: Outgoing, mid: bytes, sender: str, sender_b: bytes, recipient: str, group: str | None,
              kind: int, ts: int, ciphertext: bytes, rconn: Connection | None) -> None:
        """Hand a message to its online recipient (awaiting the client's ack) or to the queue."""
        if rconn is not None and not rconn.closed:
            self.inflight[(mid, recipient)] = Pending(out, sender, group, kind, ts, ciphertext,
                                                      self._ack_deadline, False)
            rconn.send(encode_deliver(mid, sender_b, group.encode() if group else b"", kind, ts, ciphertext))
            self.stats.frames_out += 1
        else:
            item = QueuedOut(mid, recipient, sender, group, kind, ciphertext, ts,
                             ts + int(self.config.queue_ttl_s * 1000))
            if self.cluster is None or not self.cluster.hand_over(item, out):  # on another node, or queued
                self._queue(item, out)

    def _on_deliver_ack(self, conn: Connection, flags: int, rid: int, payload: bytes) -> None:
        account = conn.account
        assert account is not None
        deletes = self._delete_batch
        stats = self.stats
        n = len(deletes)
        mids = [payload[2:18]] if len(payload) == 18 and payload[:2] == b"\x00\x01" else \
            decode_message_ids(FrameType.DELIVER_ACK, payload)
        for mid in mids:
            pending = self.inflight.pop((mid, account), None)
            if pending is None:
                # Acked late (after a timeout queued it) or after a reconnect: drop the queued copy.
                deletes.append((mid, account))
                continue
            stats.delivered += 1
            if type(pending) is tuple:  # 1:1, delivered: the sender's ack
                stats.acks_delivered += 1
                pending[0].send(_ACK.pack(_ACK_LEN, _VERSION, _SEND_ACK, 0, pending[1], mid, _DELIVERED))
            elif pending.from_queue:
                deletes.append((mid, account))
                sconn = self.conns.get(pending.sender)
                if sconn is not None:
                    sconn.send(encode(FrameType.RECEIPT, 0, mid, account, DeliveryStatus.DELIVERED))
                elif self.cluster is not None:  # the sender may be on another node
                    self.cluster.receipt(pending.sender, mid, account)
            elif pending.out is not None:
                self._settle(pending.out, queued=False)
        if len(deletes) > n:
            self._schedule_flush()

    def _settle(self, out: Outgoing, *, queued: bool, refused: bool = False) -> None:
        if out.remaining == 1 and not (queued or refused or out.queued or out.refused):  # 1:1, delivered
            out.remaining = 0
            self.stats.acks_delivered += 1
            out.conn.send(encode_send_ack(out.rid, out.mid, DeliveryStatus.DELIVERED))
            return
        if queued:
            out.queued = True
        if refused:
            out.refused += 1
        out.remaining -= 1
        if out.remaining > 0:
            return
        if out.refused and not out.queued and out.refused >= 1 and out.conn is not None:
            self.reply_error(out.conn, out.rid, ErrorCode.QUOTA_EXCEEDED, "the recipient's offline queue is full")
            return
        if out.queued:
            self.stats.acks_queued += 1
        else:
            self.stats.acks_delivered += 1
        out.conn.send(encode_send_ack(out.rid, out.mid, DeliveryStatus.QUEUED if out.queued
                                      else DeliveryStatus.DELIVERED))

    def _requeue(self, key: tuple[bytes, str]) -> None:
        pending = self.inflight.pop(key, None)
        ttl = int(self.config.queue_ttl_s * 1000)
        if type(pending) is tuple:
            sconn, rid, sender, kind, ts, ciphertext, _ = pending
            item, out = QueuedOut(key[0], key[1], sender, None, kind, ciphertext, ts, ts + ttl), \
                Outgoing(sconn, rid, key[0], 1)
        elif pending is None or pending.from_queue:
            return  # a queued message is still in the database
        else:
            item, out = QueuedOut(key[0], key[1], pending.sender, pending.group, pending.kind, pending.ciphertext,
                                  pending.ts, pending.ts + ttl), pending.out
        item.handed_to = self.conns.get(key[1])  # a timeout: that connection is not handed it again
        self.stats.timeouts += 1
        self._queue(item, out)
        self._schedule_flush()

    def _queue(self, item: QueuedOut, out: Outgoing | None) -> None:
        bans = self.enforcer.bans
        if item.sender in bans or item.recipient in bans:
            item.withheld = True  # banned after the send was accepted (e.g. handed over, then requeued)
        self._enqueue_batch.append((item, out))
        self._schedule_flush()

    # -- the native data plane (relay/server/plane.py) ------------------------------------------------------
    def may_stay_native(self, account: str) -> bool:
        """May this account's SENDs be handled by the plane (neither banned nor restricted)?"""
        return account not in self.enforcer.bans and account not in self.enforcer.restricted

    def enforcement_changed(self, account: str) -> None:
        """A ban or restriction of `account` began or ended: its SENDs come up to Python or go back."""
        conn = self.conns.get(account)
        if self.plane is not None and conn is not None:
            self.plane.plane.set_fast(conn.transport.cid, self.may_stay_native(account))  # type: ignore[union-attr]

    def mirror(self, pairs: int, a: str, b: str, on: bool = True) -> None:
        """Keep the plane's copy of a pair set true (SET_BLOCKS: a blocked b; SET_CONTACTS: b is a's contact)."""
        if self.plane is not None:
            self.plane.plane.pair(pairs, a.encode(), b.encode(), on)

    def requeue_held(self, held: tuple[bytes, str, int, int, str, int, int, bytes]) -> None:
        """A message the plane held for its recipient, not acked in time or its connection gone: queue it
        (the sender's SEND_ACK follows the queue write, as for `_requeue`)."""
        assert self.plane is not None
        mid, recipient, sender_cid, rid, sender, kind, ts, ciphertext = held
        sconn = self.plane.conns.get(sender_cid)
        item = QueuedOut(mid, recipient, sender, None, kind, ciphertext, ts, ts + int(self.config.queue_ttl_s * 1000))
        item.handed_to = self.conns.get(recipient)  # a timeout: that connection is not handed it again
        self.stats.timeouts += 1
        self._queue(item, Outgoing(sconn, rid, mid, 1) if sconn is not None else None)

    def plane_closed(self, conn: Connection, tokens: float, last: float, ftokens: float, flast: float) -> None:
        """The plane closed `conn`: its buckets come back to the pools (a reconnect does not refill them)."""
        account = conn.account
        if account is not None and self.conns.get(account) is conn:
            self._send_pool.buckets[account] = [tokens, last]
            self._first_pool.buckets[account] = [ftokens, flast]

    def sync_plane(self) -> None:
        """Add the plane's counters since the last call to `_plane_counts` (any thread: /metrics too)."""
        if self.plane is None:
            return
        with self._plane_lock:
            got = self.plane.plane.take_stats()
            counts = self._plane_counts
            for name in ("frames_in", "frames_out", "sends", "delivered", "acks_delivered", "slow_consumers",
                         "signals_dropped"):
                counts[name] = counts.get(name, 0) + got[name]
            self.plane_inflight = got["inflight"]
            self.plane_signal_buffer = got["signal_buffer"]

    def plane_count(self, name: str) -> int:
        """What the plane counted of `name` (as of the last `sync_plane`)."""
        return self._plane_counts.get(name, 0)

    def counter(self, name: str) -> int:
        """A `Stats` counter with what the plane counted of it."""
        return getattr(self.stats, name) + self._plane_counts.get(name, 0)

    # -- batched database writes -----------------------------------------------------------------------
    def add_commitment(self, mid: bytes, sender_b: bytes, recipient: str) -> None:
        """Remember H(message id, sender, recipient) for report verification (written within
        `commitment_flush_s`; a report flushes first). `_on_send` inlines this."""
        self._commits += _blake2b(mid + sender_b + recipient.encode(), digest_size=16).digest()

    def _flush_commits(self) -> None:
        if self.plane is not None:
            self._commits += self.plane.plane.take_commits()
        if self._commits:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_handle is None and self._loop is not None:
            self._flush_handle = self._loop.call_later(self.config.flush_interval_s, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        enq, self._enqueue_batch = self._enqueue_batch, []
        dele, self._delete_batch = self._delete_batch, []
        if self.plane is not None:
            self._commits += self.plane.plane.take_commits()
        com, self._commits = self._commits, bytearray()
        if not (enq or dele or com):
            return
        fut = asyncio.ensure_future(self._write(enq, dele, com))
        self._flushing.add(fut)
        fut.add_done_callback(self._flushing.discard)

    async def _write(self, enq: list[tuple[QueuedOut, Outgoing | None]], dele: list[tuple[bytes, str]],
                     com: bytearray) -> None:
        # A batch of commitments belongs to the hour of its flush and expires `commitment_ttl_s`
        # after that hour's end: at least its TTL after its message's send, at most an hour (and
        # `commitment_flush_s`) longer (store.add_commitment_digests).
        com_at = now_ms()

        def work() -> list[bool]:
            ok = self.store.enqueue([i for i, _ in enq], self.config.queue_quota) if enq else []
            if dele:
                self.store.delete_queued(dele)
            if com:
                self.store.add_commitment_digests(bytes(com), com_at, self._commit_ttl_ms)
            return ok

        try:
            oks = await self.run_db(work)
        except Exception:
            log.exception("database write failed; %d queued messages not acked", len(enq))
            for _, out in enq:
                if out is not None and out.conn is not None:
                    self.reply_error(out.conn, out.rid, ErrorCode.INTERNAL, "could not queue the message; retry")
            return
        late: dict[Connection, list[QueuedOut]] = {}
        for (item, out), ok in zip(enq, oks):
            if ok:
                self.stats.queued += 1
                rconn = self.conns.get(item.recipient)
                if rconn is not None and rconn is not item.handed_to and not item.withheld:  # it came online meanwhile
                    late.setdefault(rconn, []).append(item)
            if out is not None:
                self._settle(out, queued=ok, refused=not ok)
        for rconn, items in late.items():
            if not rconn.closed:
                self._deliver_queued(rconn, items)

    async def _flush_now(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._flush()
        while self._flushing:
            await asyncio.gather(*list(self._flushing), return_exceptions=True)

    # -- periodic ---------------------------------------------------------------------------------------
    def _sweep(self) -> None:
        now = time.monotonic()
        # Deadlines are set from this (one clock read per sweep, not per message): an ack may
        # get up to one sweep interval more than ack_timeout_s.
        self._ack_deadline = now + self.config.ack_timeout_s
        expired = []
        for key, pending in self.inflight.items():
            if (pending[_DEADLINE] if type(pending) is tuple else pending.deadline) <= now:
                expired.append(key)
        inflight = self.inflight
        for key in expired:
            pending = inflight[key]
            if type(pending) is not tuple and pending.from_queue:
                del inflight[key]  # still in the database; delivered again at the next login
            else:
                self._requeue(key)
        self.sweep_gen = gen = self.sweep_gen + 1
        plane = self.plane.plane if self.plane is not None else None
        if plane is not None:
            plane.set_sweep(gen, self._ack_deadline)
            for held in plane.expire(now):
                self.requeue_held(held)
            self.sync_plane()
        idle, handshake = gen - self._idle_sweeps, now - self.config.handshake_timeout_s
        late = [c for c in self._pre_auth if c.opened_at < handshake or c.last_seen < idle]
        if gen % self._idle_scan_every == 0:
            late += [c for c in self.all_conns if c.last_seen < idle and c.account is not None
                     and (plane is None or plane.seen(c.transport.cid) < idle)]  # type: ignore[union-attr]
        for conn in late:
            if conn.closed:
                continue
            self.stats.timeouts += 1
            conn.send(encode_error(0, ErrorCode.TIMEOUT, "idle or unauthenticated for too long"))
            conn.close()
        self.enforcer.expire()
        self.limiter.prune_step()  # a full pass over ~40,000 buckets (U=10,000) every ~10 s, 2,000 a sweep

    async def _purge(self) -> None:
        now = now_ms()
        _, _, blobs = await self.run_db(self.store.purge_expired, now)
        self.queue_depth, self.withheld_depth = await self.run_db(self.store.queue_depth)
        for blob_id in blobs:
            try:
                os.unlink(self.config.media_dir / blob_id)
            except FileNotFoundError:
                pass
        # Report commitments: the flushed blocks gathered a chunk at a time (~1 MiB of digests), closed
        # hours' split into blocks per two-byte prefix — whatever is due, each purge. A bounded step
        # per call, so queue writes (a sender waits on them) run in between, and a pause after each, so
        # compacting is a trickle of short bursts rather than a core taken from delivery for seconds.
        if self._compacting:
            return
        self._compacting = True
        try:
            while await self.run_db(self.store.compact_commitments, now):
                await asyncio.sleep(COMPACT_PAUSE_S)
        finally:
            self._compacting = False

    # -- introspection (metrics, tests) ---------------------------------------------------------------
    @property
    def online(self) -> int:
        return len(self.conns)
