"""One relay node's part in the cluster: routes, presence, handover, liveness (docs/cluster.md).

The server calls a handful of hooks (`RelayServer.cluster`): `hand_over` when a recipient is not
connected here, `connected` / `disconnected` / `registered`, and `group_changed` / `block_changed`
from the features. Everything else runs here, on the event loop, fed in batches by the Kafka
threads (`bus.py`) and the cluster's DB thread.

The durability argument (DESIGN.md: the sender's ack waits for the recipient's ack or the
database queue), for a message from a client on node A to an account routed to node B:
1. A keeps the message (ciphertext included) in `_pending` under a token and hands a HANDOVER to
   B's inbox. A acks its sender only when B answers DELIVERED (B's client acked it) or QUEUED
   (B committed it to the queue) — exactly what a single node would wait for.
2. If B is dead (heartbeats stopped), stopped, restarted (another incarnation), answers FAILED, or
   does not answer within `handover_timeout_s` (longer than B's own ack timeout plus its queue
   flush), A commits the message to the queue itself and acks QUEUED. Duplicates are possible (B
   was only slow), losses are not: clients de-duplicate by message id.
3. B delivers a HANDOVER as it would a local message: an online recipient gets a DELIVER and the
   ack is awaited; a recipient that is not (or no longer) connected to B gets it queued by B.
4. A queued message reaches a recipient online elsewhere: the node that saw it committed pokes the
   recipient's node, and every login re-reads the queue once more `queue_recheck_s` later (a route
   not yet known when the commit happened).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from relay.cluster import wire
from relay.cluster.bus import Outbox, Reader, Source, ensure_inbox
from relay.cluster.routes import NodeTable, Peer, RouteTable
from relay.cluster.store import ClusterStore
from relay.protocol import DeliveryStatus, ErrorCode, FrameType, GroupOp, encode
from relay.server.core import _ACK as _SEND_ACK_STRUCT
from relay.server.core import _ACK_LEN, _DELIVER, _DELIVER_1TO1, _DELIVER_FIXED, _VERSION
from relay.server.store import QueuedOut
from sealguard.contracts import now_ms
from sealguard.storage import Database

if TYPE_CHECKING:
    from relay.server.core import Outgoing, RelayServer

log = logging.getLogger(__name__)
_SEND_ACK, _ERROR = int(FrameType.SEND_ACK), int(FrameType.ERROR)
_SEND_ACK_PACK = _SEND_ACK_STRUCT.pack
_QUOTA = int(ErrorCode.QUOTA_EXCEEDED)


class ClusterError(RuntimeError):
    """Root of cluster errors: the node could not join (bad node id, no broker, no database)."""


@dataclass
class ClusterConfig:
    node: str
    routes_topic: str = "sg.relay.routes.v1"
    inbox_prefix: str = "sg.relay.node."
    # The routes topic's partitions. Every node reads all of it, so more partitions buy no reader
    # parallelism, and each one costs every node's fetch requests (Tansu ~0.1–0.3 ms of CPU a
    # partition a fetch here, 2026-11-28). Keyed by account, so one account's news stays in order
    # whatever the count; a deployment that created the topic with more keeps working.
    routes_partitions: int = 1
    heartbeat_s: float = 1.0
    node_ttl_s: float = 5.0  # a node whose heartbeat has not changed this long is dead
    handover_timeout_s: float = 7.0  # > the relay's ack_timeout_s + its queue flush + two topic hops
    route_flush_s: float = 0.1  # route rows are written in batches this often
    queue_recheck_s: float = 1.0  # a login re-reads the queue once more after this
    sweep_s: float = 0.25
    # Kafka request rates: Tansu charges ~0.2 ms of CPU per produce and ~0.4 ms per fetch request
    # whatever it carries, so each node's handovers leave as one record per destination every
    # `batch_ms`, and its inbox is fetched (1 byte wanted, `inbox_fetch_wait_ms` at most) about every
    # half of that wait while busy — each hop waits up to a batch and a fetch (see bus.py). 40/80
    # took a third off the broker's CPU against 20/40 (docs/cluster.md). The routes topic is read
    # by the same consumer, in the same fetch requests.
    batch_ms: int = 40
    inbox_fetch_wait_ms: int = 80
    # An inbox record is needed until its node read it (milliseconds) and is useless once its sender
    # gave up on it (`handover_timeout_s`): the inbox keeps ciphertext minutes, not Kafka's week.
    inbox_retention_ms: int = 300_000
    # The server's writing iterations are paced to one per `write_interval_ms` (RelayServer._pace_writes):
    # a node carrying 1/N of the clients wakes for fewer sockets and frames at a time than one node
    # carrying all of them, and pays an epoll wakeup, a read and a write per few messages instead of
    # per many. The pause costs a hop at most this long, against the batch_ms a crossing waits anyway.
    write_interval_ms: float = 1.0
    # The signal emitter's drains on a cluster node (a timer on the loop; each drain's records leave
    # in one produce request). Signals are not on any message's path — the closed loop never waits
    # for one, `enforcement.applied` carries its own `ts` — so a node sends them in fewer, larger
    # requests than its handovers: Tansu's CPU goes by requests.
    signal_batch_ms: int = 200

    def inbox_topic(self, node: str) -> str:
        return f"{self.inbox_prefix}{node}.v1"


class Stats:
    __slots__ = ("accounts_learned", "acks_received", "acks_sent", "enforcements", "fallbacks", "handed_over",
                 "handovers_received", "late_acks", "pokes", "rejected", "stale", "takeovers")

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class AckPort:
    """Stands in for the sender's connection in an `Outgoing` whose sender is not a local client:
    the server settles it as usual (`out.conn.send(SEND_ACK or ERROR)`), and the port turns the
    frame back into (token = the frame's request id, status)."""

    __slots__ = ("closed", "on_status")

    def __init__(self, on_status: Any) -> None:
        self.on_status = on_status
        self.closed = False

    def send(self, frame: bytes) -> None:
        ftype = frame[5]
        rid = int.from_bytes(frame[7:11], "big")
        if ftype == _SEND_ACK:
            status = frame[-1]
        elif ftype == _ERROR:
            status = wire.REFUSED if int.from_bytes(frame[11:13], "big") == _QUOTA else wire.FAILED
        else:
            return
        self.on_status(rid, status)


class Cluster:
    def __init__(self, server: RelayServer, db: Database, bootstrap: str, config: ClusterConfig, *,
                 enforcement_topic: str | None = None, enforcement_partitions: int | None = None) -> None:
        wire.check_node_id(config.node)
        if config.node != server.config.node:
            raise ClusterError(f"cluster node {config.node!r} differs from the relay's node {server.config.node!r}")
        self.server = server
        self.bootstrap = bootstrap
        self.config = config
        # Read by the cluster reader, in the same fetch requests as the inbox and the routes topic
        # (RelayService then starts no EnforcementConsumer): one fetching consumer per node, not two.
        self.enforcement_topic = enforcement_topic
        self.enforcement_partitions = enforcement_partitions or 1  # RelayService passes the platform's count
        self.node = config.node
        self.store = ClusterStore(db)
        self.routes = RouteTable()
        self.nodes = NodeTable(config.node, config.node_ttl_s)
        self.incarnation = secrets.randbits(31) | 1
        self.stats = Stats()
        self.ready = False
        self.outbox: Outbox | None = None
        self._reader: Reader | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # token → (the sender's Outgoing, the message, deadline (monotonic), destination node); from
        # hand_over_direct: (the sender's Connection, the SEND's fields as a tuple, deadline, node)
        self._pending: dict[int, tuple[Any, Any, float, str]] = {}
        self._local: dict[int, tuple[Outgoing, QueuedOut]] = {}  # token → queued here after a failed handover
        self._tokens = itertools.count(1)
        self._deadline = time.monotonic() + config.handover_timeout_s  # for a handover now; refreshed each sweep
        self._ports: dict[tuple[str, int], AckPort] = {}
        self._local_port = AckPort(self._on_local_status)
        self._logins: dict[str, int] = {}  # local account → when it logged in (ms)
        self._taking_over: str | None = None
        self._route_changes: deque[tuple[str, bool, int]] = deque()
        self._drops: deque[str] = deque()  # dead nodes whose route rows to delete
        self._stop = threading.Event()
        self._db_thread: threading.Thread | None = None
        self._timer: asyncio.TimerHandle | None = None

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        from sealguard.stream import ensure_topics

        loop = self._loop = asyncio.get_running_loop()
        c = self.config
        inbox = c.inbox_topic(self.node)
        run = loop.run_in_executor
        create_inbox = functools.partial(ensure_inbox, self.bootstrap, inbox, c.inbox_retention_ms)
        try:
            await run(None, ensure_topics, self.bootstrap, [c.routes_topic], c.routes_partitions)
            await run(None, create_inbox)
        except Exception as exc:
            raise ClusterError(f"could not create the cluster topics on {self.bootstrap}: {exc}") from exc
        self.outbox = Outbox(self.bootstrap, self.node, self.incarnation, drain_s=c.batch_ms / 1000)
        self.server.write_interval_s = c.write_interval_ms / 1000
        emitter = self.server.listener
        if getattr(emitter, "idle_wait_s", None) is not None:
            # The signal emitter drains on this loop too, every `signal_batch_ms`, not 100 times a
            # second — a node of N carries 1/N of the signals, so 100 drains (and produce requests) a
            # second each carried 1/N as many as on a single node.
            emitter.idle_wait_s = max(emitter.idle_wait_s, c.signal_batch_ms / 1000)
        self.outbox.start(loop)

        def feed(fn: Any) -> Any:
            return lambda batch: loop.call_soon_threadsafe(fn, batch)

        sources = [
            Source(inbox, True, feed(self._on_inbox), create_inbox),
            Source(c.routes_topic, False, feed(self._on_routes),
                   functools.partial(ensure_topics, self.bootstrap, [c.routes_topic], c.routes_partitions)),
        ]
        if self.enforcement_topic is not None:
            # Every node applies every decision (idempotent by decision id), read from the beginning;
            # a new log (broker restart, watermark down) reloads the decisions from the database.
            sources.append(Source(self.enforcement_topic, False, self._enforcement_feed(loop),
                                  functools.partial(ensure_topics, self.bootstrap, [self.enforcement_topic],
                                                    self.enforcement_partitions), watch=True))
        self._reader = Reader(self.bootstrap, sources, "cluster-reader",
                              on_reset=lambda: loop.call_soon_threadsafe(self._reload_soon),
                              fetch_wait_ms=c.inbox_fetch_wait_ms)
        # The inbox is positioned before anyone can learn we exist (our node row); the routes topic is
        # replayed from the beginning over the database snapshot (older records lose to newer ones).
        await run(None, self._reader.assign)
        await run(None, self.store.register_node, self.node, self.incarnation, inbox, now_ms())
        await self._reload()
        self._reader.start()
        self._db_thread = threading.Thread(target=self._db_loop, name="cluster-db", daemon=True)
        self._db_thread.start()
        self._timer = loop.call_later(c.sweep_s, self._sweep)
        for account in list(self.server.conns):  # connected while we were joining
            self.connected(account)
        self.ready = True
        log.info("cluster: node %s (incarnation %d) joined; %d peers alive, %d remote routes; inbox %s",
                 self.node, self.incarnation, sum(p.alive for p in self.nodes.peers.values()), len(self.routes),
                 inbox)

    def begin_stop(self) -> None:
        """Before the server stops: nothing more is handed over, and what is still waiting for
        another node goes to the queue here (the server's stop flushes it)."""
        self.ready = False
        if self._timer is not None:
            self._timer.cancel()
        for token in list(self._pending):
            self._fallback(token, self._pending.pop(token))

    async def close(self) -> None:
        """After the server stopped: acks flushed, our node row marked stopped (peers drop our
        routes at once), threads ended."""
        loop = asyncio.get_running_loop()
        self._stop.set()
        if self._db_thread is not None:
            await loop.run_in_executor(None, self._db_thread.join, 5)
        if self._reader is not None:
            await loop.run_in_executor(None, self._reader.stop)
        if self.outbox is not None:
            self.outbox.stop()
            await loop.run_in_executor(None, self.outbox.flush, 5.0)
        try:
            await loop.run_in_executor(None, self.store.mark_stopped, self.node, self.incarnation, now_ms())
        except Exception:
            log.exception("cluster: could not mark node %s stopped; peers will find it dead", self.node)

    async def _reload(self) -> None:
        """Peers and routes from the database (at start, and after the broker came back)."""
        loop = asyncio.get_running_loop()
        rows = await loop.run_in_executor(None, self.store.nodes)
        self._on_nodes(rows)
        alive = [n for n, p in self.nodes.peers.items() if p.alive]
        for account, node, ts in await loop.run_in_executor(None, self.store.load_routes, alive):
            self.routes.apply(account, node, True, ts)

    def _reload_soon(self) -> None:
        self.server.spawn(self._reload())
        if self.enforcement_topic is not None:
            log.info("cluster: the enforcement log is new: reloading decisions from the database")
            self.server.spawn(self.server.enforcer.load_from_db())

    def _enforcement_feed(self, loop: asyncio.AbstractEventLoop) -> Any:
        """The enforcement topic's records, decoded on the reader's thread; the decisions applied on the loop."""
        from relay.enforcement_consumer import decode_enforcement

        topic, stats = self.enforcement_topic, self.stats

        def on_records(batch: list[tuple[Any, bytes]]) -> None:
            events = []
            for _key, value in batch:
                event = decode_enforcement(value, topic or "")
                if event is None:
                    stats.rejected += 1
                else:
                    events.append(event)
            if events:
                stats.enforcements += len(events)
                loop.call_soon_threadsafe(self._on_enforcements, events)

        return on_records

    def _on_enforcements(self, events: list[Any]) -> None:
        on_enforcement = self.server.enforcer.on_enforcement
        for event in events:
            on_enforcement(event)

    # -- the cluster's DB thread ---------------------------------------------------------------------------
    def _db_loop(self) -> None:
        assert self._loop is not None
        loop = self._loop
        next_beat = 0.0
        while not self._stop.is_set():
            changes = []
            while self._route_changes:
                changes.append(self._route_changes.popleft())
            try:
                if changes:
                    self.store.write_routes(self.node, changes)
                while self._drops:
                    node = self._drops[0]
                    n = self.store.drop_routes(node)
                    self._drops.popleft()
                    log.info("cluster: dropped %d route rows of node %s", n, node)
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.config.heartbeat_s
                    rows = self.store.heartbeat(self.node, self.incarnation, now_ms())
                    loop.call_soon_threadsafe(self._on_nodes, rows)
            except Exception as exc:  # noqa: BLE001 - the database is down: keep the changes, try again
                log.warning("cluster: database write failed (%s); retrying", exc)
                self._route_changes.extendleft(reversed(changes))
                self._stop.wait(1.0)
            self._stop.wait(self.config.route_flush_s)

    def _on_nodes(self, rows: list[tuple[str, int, str, int, int | None]]) -> None:
        died, born = self.nodes.observe(rows, time.monotonic(), now_ms())
        for node in born:
            log.info("cluster: node %s is alive", node)
        for node in died:
            gone = self.routes.drop_node(node)
            n = 0
            for token, entry in list(self._pending.items()):
                if entry[3] == node:
                    del self._pending[token]
                    self._fallback(token, entry)
                    n += 1
            self._drops.append(node)
            log.warning("cluster: node %s is dead or stopped: %d routes expired, %d handovers queued here",
                        node, len(gone), n)

    # -- hooks the server calls -------------------------------------------------------------------------
    def _live_peer(self, recipient: str) -> Peer | None:
        """The live node `recipient` is connected to, or None (not ready, not routed, or its node is dead)."""
        if not self.ready:
            return None
        node = self.routes.node_of.get(recipient)
        return None if node is None else self.nodes.alive(node)

    def hand_over(self, item: QueuedOut, out: Outgoing) -> bool:
        """The recipient is not connected here: hand the message to the node it is on. False when no
        live node has it (the server queues the message)."""
        peer = self._live_peer(item.recipient)
        if peer is None:
            return False
        token = next(self._tokens) & 0xFFFFFFFF
        # The deadline is the sweep's clock (±sweep_s): a monotonic() call per message saved, and
        # `_pending` stays in deadline order, so the sweep stops at the first one not yet due.
        self._pending[token] = (out, item, self._deadline, peer.node)
        assert self.outbox is not None
        self.outbox.to_inbox(peer.inbox_topic, peer.incarnation, wire.handover(
            token, item.message_id, item.kind, item.enqueued_at, item.recipient, item.sender, item.group,
            item.ciphertext))
        self.stats.handed_over += 1
        return True

    def hand_over_direct(self, conn: Any, rid: int, mid: bytes, recipient: str, sender: str, kind: int, ts: int,
                         ciphertext: bytes) -> bool:
        """`hand_over` for a 1:1 SEND, called first in the server's send path with the SEND's fields:
        the sender's connection and (rid, mid, recipient, sender, kind, ts, ciphertext) wait in
        `_pending` as they are, and a DELIVERED ack answers the sender with one packed SEND_ACK. The
        QueuedOut and Outgoing are built only when the message must be queued here or settled any
        other way (`_materialize`)."""
        peer = self._live_peer(recipient)
        if peer is None:
            return False
        token = next(self._tokens) & 0xFFFFFFFF
        self._pending[token] = (conn, (rid, mid, recipient, sender, kind, ts, ciphertext), self._deadline, peer.node)
        self.outbox.to_inbox(peer.inbox_topic, peer.incarnation,  # type: ignore[union-attr]
                             wire.handover(token, mid, kind, ts, recipient, sender, None, ciphertext))
        self.stats.handed_over += 1
        return True

    def _materialize(self, entry: tuple[Any, Any, float, str]) -> tuple[Outgoing, QueuedOut, float, str]:
        """A `_pending` entry as (Outgoing, QueuedOut, deadline, node), whichever hook made it."""
        from relay.server.core import Outgoing

        conn, item, deadline, node = entry
        if type(item) is not tuple:
            return entry
        rid, mid, recipient, sender, kind, ts, ct = item
        return (Outgoing(conn, rid, mid, 1),
                QueuedOut(mid, recipient, sender, None, kind, ct, ts, ts + int(self.server.config.queue_ttl_s * 1000)),
                deadline, node)

    def connected(self, account: str) -> None:
        if self.outbox is None:
            return  # start() publishes whoever connected before it
        ts = now_ms()
        self._logins[account] = ts
        self.outbox.to_topic(self.config.routes_topic, account, wire.route_record(self.node, True, ts))
        self._route_changes.append((account, True, ts))
        if self._loop is not None:
            self._loop.call_later(self.config.queue_recheck_s, self._recheck, account)

    def disconnected(self, account: str) -> None:
        self._logins.pop(account, None)
        if self.outbox is None:
            return
        ts = now_ms()
        self.outbox.to_topic(self.config.routes_topic, account, wire.route_record(self.node, False, ts))
        self._route_changes.append((account, False, ts))

    def presence_changed(self, account: str, online: bool) -> None:
        """The features told the account's contacts on this node; tell those on other nodes (one
        frame per node), and a client that came online which of its contacts are online elsewhere."""
        if self.outbox is None or account == self._taking_over:
            return
        server = self.server
        contacts = server.book.contacts_of(account)
        if not contacts:
            return
        node_of, by_node = self.routes.node_of, {}
        for c in contacts:
            node = node_of.get(c)
            if node is not None and c not in server.conns:
                by_node.setdefault(node, []).append(c)
        for node, watchers in by_node.items():
            peer = self.nodes.peers.get(node)
            if peer is not None and peer.alive:
                self.outbox.to_inbox(peer.inbox_topic, peer.incarnation, wire.presence(account, online, watchers))
        conn = server.conns.get(account) if online else None
        if conn is not None:
            for watchers in by_node.values():
                for c in watchers:
                    conn.send(encode(FrameType.PRESENCE, 0, c, 1))

    def receipt(self, sender: str, mid: bytes, recipient: str) -> None:
        """A queued message was delivered here and its sender is not: tell the sender's node."""
        node = self.routes.node_of.get(sender)
        peer = self.nodes.peers.get(node) if node is not None else None
        if peer is not None and peer.alive and self.outbox is not None:
            self.outbox.to_inbox(peer.inbox_topic, peer.incarnation, wire.receipt(mid, sender, recipient))

    def registered(self, account: str) -> None:
        if self.outbox is not None:
            self.outbox.to_topic(self.config.routes_topic, account, wire.account_record(self.node))

    def group_changed(self, gid: str, member: str, added: bool, actor: str) -> None:
        if self.outbox is not None:
            self.outbox.to_topic(self.config.routes_topic, gid,
                                 wire.group_record(self.node, gid, added, member, actor))

    def block_changed(self, blocker: str, blocked: str, on: bool) -> None:
        if self.outbox is not None:
            self.outbox.to_topic(self.config.routes_topic, blocker, wire.block_record(self.node, blocked, on))

    # -- settling -------------------------------------------------------------------------------------------
    def _fallback(self, token: int, entry: tuple[Outgoing, QueuedOut, float, str]) -> None:
        """The destination did not take the message: commit it to the queue here, then ack."""
        from relay.server.core import Outgoing

        out, item, _, _ = self._materialize(entry)
        self.stats.fallbacks += 1
        self._local[token] = (out, item)
        self.server._queue(item, Outgoing(self._local_port, token, item.message_id, 1))  # type: ignore[arg-type]

    def _on_local_status(self, token: int, status: int) -> None:
        entry = self._local.pop(token, None)
        if entry is None:
            return
        out, item = entry
        if status == wire.FAILED:
            self.server.reply_error(out.conn, out.rid, ErrorCode.INTERNAL, "could not queue the message; retry")
            return
        self.server._settle(out, queued=status == wire.QUEUED, refused=status == wire.REFUSED)
        if status == wire.QUEUED:
            self._poke(item.recipient, skip=self.node)  # a local recipient got it from the server's own write

    def _on_ack(self, token: int, status: int) -> None:
        entry = self._pending.pop(token, None)
        if entry is None:
            self.stats.late_acks += 1  # already queued here after a timeout: the copy there is a duplicate
            return
        self.stats.acks_received += 1
        self._settle_ack(token, entry, status)

    def _settle_ack(self, token: int, entry: tuple[Any, Any, float, str], status: int) -> None:
        """The destination answered `status` for the `_pending` entry (already popped) of `token`."""
        if status == wire.DELIVERED and type(entry[1]) is tuple:  # a 1:1 from hand_over_direct: the SEND_ACK
            rid, mid = entry[1][0], entry[1][1]
            self.server.stats.acks_delivered += 1
            entry[0].send(_SEND_ACK_PACK(_ACK_LEN, _VERSION, _SEND_ACK, 0, rid, mid, wire.DELIVERED))
            return
        if status == wire.FAILED:
            self._fallback(token, entry)
            return
        out, item, _, node = self._materialize(entry)
        self.server._settle(out, queued=status == wire.QUEUED, refused=status == wire.REFUSED)
        if status == wire.QUEUED:
            self._poke(item.recipient, skip=node)

    def _poke(self, recipient: str, skip: str) -> None:
        """A message for `recipient` is committed to the queue: if the account is connected (here or on
        another live node), have that node deliver its queue now."""
        if recipient in self.server.conns:
            if skip != self.node:
                self.server.spawn(self._deliver_queue(recipient))
            return
        node = self.routes.node_of.get(recipient)
        peer = self.nodes.alive(node) if node is not None and node != skip else None
        if peer is not None and self.outbox is not None:
            self.stats.pokes += 1
            self.outbox.to_inbox(peer.inbox_topic, peer.incarnation, wire.poke(recipient))

    def _recheck(self, account: str) -> None:
        if account in self.server.conns:
            self.server.spawn(self._deliver_queue(account))

    async def _deliver_queue(self, account: str) -> None:
        server = self.server
        conn = server.conns.get(account)
        if conn is None:
            return
        queued = await server.run_db(server.store.load_queue, account, server.config.queue_quota)
        if queued and server.conns.get(account) is conn and not conn.closed:
            server._deliver_queued(conn, queued)

    def _port(self, node: str, incarnation: int) -> AckPort:
        port = self._ports.get((node, incarnation))
        if port is None:
            assert self.outbox is not None
            append, topic, stats = self.outbox.ack_append, self.config.inbox_topic(node), self.stats

            def send_ack(token: int, status: int) -> None:  # Outbox.ack, inlined: one per crossing message
                stats.acks_sent += 1
                append((topic, incarnation, token, status))

            port = self._ports[(node, incarnation)] = AckPort(send_ack)
        return port

    def _sweep(self) -> None:
        assert self._loop is not None
        try:
            now = time.monotonic()
            self._deadline = now + self.config.handover_timeout_s
            expired = []
            for t, e in self._pending.items():  # in deadline order (see hand_over)
                if e[2] > now:
                    break
                expired.append(t)
            for token in expired:
                self._fallback(token, self._pending.pop(token))
            if expired:
                log.info("cluster: %d handovers not acked in %.1fs: queued here", len(expired),
                         self.config.handover_timeout_s)
        finally:
            if self.ready:
                self._timer = self._loop.call_later(self.config.sweep_s, self._sweep)

    def _group_changed(self, gid: str, added: bool, member: str, actor: str) -> None:
        """Membership changed on another node: ours in memory, and our connected members told, as the
        features do for their own node (GROUP to a new member, GROUP_EVENT to the others)."""
        server = self.server
        members = server.groups.setdefault(gid, set())
        if added:
            if member in members:
                return
            members.add(member)
            conn = server.conns.get(member)
            if conn is not None:
                conn.send(encode(FrameType.GROUP, 0, gid, sorted(members)))
            event = encode(FrameType.GROUP_EVENT, 0, gid, actor, member, GroupOp.ADDED)
            for m in members:
                other = server.conns.get(m) if m != member else None
                if other is not None:
                    other.send(event)
        elif member in members:
            event = encode(FrameType.GROUP_EVENT, 0, gid, actor, member, GroupOp.REMOVED)
            for m in members:  # the removed member hears it too
                other = server.conns.get(m)
                if other is not None:
                    other.send(event)
            members.discard(member)

    # -- input from the Kafka threads -------------------------------------------------------------------
    def _on_inbox(self, batch: list[tuple[Any, bytes]]) -> None:
        from relay.server.core import Outgoing

        server = self.server
        conns, inflight, stats, ports = server.conns, server.inflight, self.stats, self._ports
        ttl = int(server.config.queue_ttl_s * 1000)
        me = self.incarnation
        parse_handover, pack_deliver = wire.parse_handover, _DELIVER_1TO1.pack
        for _key, value in batch:
            try:
                node, inc, to_inc, frames = wire.parse_record(value)
            except wire.WireError as exc:
                self.stats.rejected += 1
                log.error("cluster: rejected an inbox record: %s", exc)
                continue
            if to_inc != me:
                stats.stale += len(frames)  # for an earlier incarnation of this node: its sender queues it
                continue
            port = ports.get((node, inc)) or self._port(node, inc)
            for frame in frames:
                try:
                    tag = frame[0]
                    if tag == wire.H:
                        token, mid, kind, ts, recipient, sender, group, ct = parse_handover(frame)
                        stats.handovers_received += 1
                        rconn = conns.get(recipient)
                        if rconn is not None and not rconn.closed:
                            if group is None:
                                # 1:1 on the server's own fast path (`Direct`): the port stands in for the
                                # sender's connection, so the client's DELIVER_ACK (or a timeout's requeue)
                                # acks the handing node through it.
                                inflight[(mid, recipient)] = (port, token, sender, kind, ts, ct, server._ack_deadline)
                                rconn.send(pack_deliver(_DELIVER_FIXED + len(ct), _VERSION, _DELIVER, 0, 0, mid,
                                                        sender.encode(), 0, kind, ts) + ct)
                                server.stats.frames_out += 1
                            else:
                                server.route(Outgoing(port, token, mid, 1), mid, sender,  # type: ignore[arg-type]
                                             sender.encode(), recipient, group, kind, ts, ct, rconn)
                        else:  # not (or no longer) here: into the queue, acked QUEUED
                            server._queue(QueuedOut(mid, recipient, sender, group, kind, ct, ts, ts + ttl),
                                          Outgoing(port, token, mid, 1))  # type: ignore[arg-type]
                    elif tag == wire.M:
                        # A batch's acks; a DELIVERED one for a 1:1 from hand_over_direct (nearly all of
                        # them) answers its sender here, anything else goes through _settle_ack.
                        pending_pop, settle, sstats = self._pending.pop, self._settle_ack, server.stats
                        for token, status in wire.parse_acks(frame):
                            entry = pending_pop(token, None)
                            if entry is None:
                                stats.late_acks += 1  # queued here after a timeout: the copy there is a duplicate
                                continue
                            stats.acks_received += 1
                            f = entry[1]
                            if status == wire.DELIVERED and type(f) is tuple:
                                sstats.acks_delivered += 1
                                entry[0].send(_SEND_ACK_PACK(_ACK_LEN, _VERSION, _SEND_ACK, 0, f[0], f[1],
                                                             wire.DELIVERED))
                            else:
                                settle(token, entry, status)
                    elif tag == wire.A:
                        self._on_ack(*wire.parse_ack(frame))
                    elif tag == wire.P:
                        account = wire.parse_poke(frame)
                        if account in conns:
                            server.spawn(self._deliver_queue(account))
                    elif tag == wire.D:
                        mid, sender, recipient = wire.parse_receipt(frame)
                        sconn = conns.get(sender)
                        if sconn is not None:
                            sconn.send(encode(FrameType.RECEIPT, 0, mid, recipient, DeliveryStatus.DELIVERED))
                    elif tag == wire.S:
                        account, online, watchers = wire.parse_presence(frame)
                        presence = encode(FrameType.PRESENCE, 0, account, int(online))
                        for w in watchers:
                            wconn = conns.get(w)
                            if wconn is not None:
                                wconn.send(presence)
                    else:
                        raise wire.WireError(f"unknown frame tag {tag!r}")
                except (wire.WireError, UnicodeDecodeError, IndexError) as exc:
                    self.stats.rejected += 1
                    log.error("cluster: rejected a frame from %s: %s", node, exc)

    def _on_routes(self, batch: list[tuple[Any, bytes]]) -> None:
        server = self.server
        for key, value in batch:
            try:
                tag, node, k, f = wire.parse_state(key, value)
                if node == self.node:
                    continue
                if tag == "R":
                    online, ts = f[0] == "1", int(f[1])
                    self.routes.apply(k, node, online, ts)
                    if k not in server.accounts:  # a route is news of a login there: the account exists
                        server.accounts.add(k)
                        self.stats.accounts_learned += 1
                        log.warning("cluster: account %s learned from its route: its registration news never came", k)
                    conn = server.conns.get(k)
                    if online and conn is not None and self._logins.get(k, ts) < ts:
                        # One device per account, cluster-wide: the newer login (on `node`) wins.
                        self.stats.takeovers += 1
                        conn.send(encode(FrameType.BYE, 0))
                        conn.close()
                        self._taking_over = k  # it is online (there), not gone: no "offline" presence
                        try:
                            server.on_disconnect(conn)
                        finally:
                            self._taking_over = None
                        online_frame = encode(FrameType.PRESENCE, 0, k, 1)
                        for c in server.book.contacts_of(k):
                            other = server.conns.get(c)
                            if other is not None:
                                other.send(online_frame)
                elif tag == "A":
                    server.accounts.add(k)
                elif tag == "G":
                    self._group_changed(k, f[1] == "+", f[2], f[3])
                elif tag == "B":
                    (server.blocks.add if f[1] == "1" else server.blocks.discard)((k, f[0]))
            except (wire.WireError, ValueError, IndexError) as exc:
                self.stats.rejected += 1
                log.error("cluster: rejected a routes record: %s", exc)
