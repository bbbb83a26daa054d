"""Three relay nodes as separate processes on one broker and one PostgreSQL database.

Clients (the SDK, real vodozemac) on different nodes message each other 1:1 and in a group, an
offline recipient gets its queue on another node, a ban issued once holds on every node, and a node
killed (SIGKILL) under load loses nothing it acknowledged. Nodes run with short timeouts (ack 2 s,
node TTL 2 s) so failures resolve in seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import uvloop

from bench._harness import create_pg_database, drop_pg_database
from bench.cluster import PG_ADMIN_URL, Nodes, kill_run
from relay.client import Banned, Identity, RelayClient
from relay.cluster import wire
from relay.cluster.routes import NodeTable, RouteTable
from relay.protocol import DeliveryStatus


@pytest.fixture(scope="module")
def nodes(broker_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    db = create_pg_database(PG_ADMIN_URL)
    state = tmp_path_factory.mktemp("cluster")
    ns = Nodes(state, broker_bootstrap, db, 3, ack_timeout_s=2.0, node_ttl_s=2.0)
    try:
        ns.start_all()
        yield ns
    finally:
        ns.stop()
        drop_pg_database(PG_ADMIN_URL, db)


async def _client(nodes: Nodes, i: int, index: int) -> RelayClient:
    c = RelayClient("127.0.0.1", nodes.ports[i], Identity.generate(), bind_address=f"127.9.{index}.1",
                    request_timeout=15.0, ping_interval=20.0)
    await c.connect()
    await c.register()
    await c.upload_prekeys(10)
    return c


async def _next(c: RelayClient, timeout: float = 15.0) -> tuple[str, bytes, str | None]:
    r = await asyncio.wait_for(c.inbox.get(), timeout)
    return r.sender, r.plaintext, r.group


async def _until(pred: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(0.05)


@pytest.mark.postgres
def test_one_to_one_group_and_queue_across_nodes(nodes: Nodes) -> None:
    async def main() -> None:
        a, b, c = [await _client(nodes, i, 10 + i) for i in range(3)]
        await asyncio.sleep(0.5)  # registrations and routes reach every node
        try:
            for s, r, text in ((a, b, b"a to b"), (b, c, b"b to c"), (c, a, b"c to a")):
                mid = await s.send(r.account_id, text)
                assert s.ack_status[mid] is DeliveryStatus.DELIVERED  # the other node's client acked it
                assert await _next(r) == (s.account_id, text, None)
            gid = await a.create_group([b.account_id, c.account_id])
            await a.send_group(gid, b"hello group")
            assert await _next(b) == (a.account_id, b"hello group", gid)
            assert await _next(c) == (a.account_id, b"hello group", gid)
            # node 2 tells b the membership (GROUP, then GROUP_EVENTs)
            await _until(lambda: b.groups.get(gid) == {a.account_id, b.account_id, c.account_id}, "b's group")
            await b.send_group(gid, b"from node 2")
            assert await _next(a) == (b.account_id, b"from node 2", gid)
            assert await _next(c) == (b.account_id, b"from node 2", gid)
            async def away_and_back(s: RelayClient, port: int, text: bytes) -> None:
                """c leaves; s's message is queued; c logs in on `port`, gets it, and s its receipt."""
                await c.close()
                await asyncio.sleep(0.5)
                mid = await s.send(c.account_id, text)
                assert s.ack_status[mid] is DeliveryStatus.QUEUED
                c.port = port
                await c.connect()
                await c.login()
                assert await _next(c) == (s.account_id, text, None)
                await _until(lambda: mid in s.delivered_ids, f"the receipt of {text!r}")

            # c leaves node 3, logs in on node 1 (a's node: the receipt is local) ...
            await away_and_back(a, nodes.ports[0], b"while away")
            # ... and again, back on node 3: b's receipt crosses from node 3 to node 2.
            await away_and_back(b, nodes.ports[2], b"away again")
            # c is now on node 3 again: b (node 2) reaches it there.
            await asyncio.sleep(0.5)
            mid = await b.send(c.account_id, b"found you")
            assert b.ack_status[mid] is DeliveryStatus.DELIVERED
            assert await _next(c) == (b.account_id, b"found you", None)
        finally:
            for x in (a, b, c):
                await x.close()

    uvloop.run(main())


@pytest.mark.postgres
def test_inboxes_keep_ciphertext_minutes_not_a_week(nodes: Nodes) -> None:
    """Each node created its inbox with a short retention (and segments that roll, so Apache Kafka
    can drop them), read back from the broker itself."""
    from confluent_kafka.admin import ConfigResource, ResourceType

    from relay.cluster import ClusterConfig
    from sealguard.stream import admin

    want = ClusterConfig(node="x").inbox_retention_ms
    assert want <= 10 * 60_000
    client = admin(nodes.kafka)
    topics = [f"{nodes.prefix}.relay.node.{nodes.node_id(i)}.v1" for i in range(nodes.n)]
    assert set(topics) <= set(client.list_topics(timeout=10).topics)
    for resource, fut in client.describe_configs([ConfigResource(ResourceType.TOPIC, t) for t in topics]).items():
        config = {k: v.value for k, v in fut.result().items()}
        assert config.get("retention.ms") == str(want), (resource, config)
        assert int(config.get("segment.ms", "0")) <= want, (resource, config)
        assert config.get("cleanup.policy") == "delete", (resource, config)


@pytest.mark.postgres
def test_presence_reaches_contacts_on_other_nodes(nodes: Nodes) -> None:
    async def main() -> None:
        x = await _client(nodes, 0, 40)
        y = await _client(nodes, 1, 41)
        await asyncio.sleep(0.5)
        try:
            await x.add_contact(y.account_id)
            await y.add_contact(x.account_id)
            await y.close()
            await _until(lambda: x.presence.get(y.account_id) is False, "x hears y (node 2) went")
            y.port = nodes.ports[2]
            await y.connect()
            await y.login()
            await _until(lambda: x.presence.get(y.account_id) is True, "x hears y came back on node 3")
            await _until(lambda: y.presence.get(x.account_id) is True, "y learns x is online on node 1")
        finally:
            await x.close()
            await y.close()

    uvloop.run(main())


@pytest.mark.postgres
def test_a_ban_holds_on_every_node(nodes: Nodes) -> None:
    from moderation.decisions import DecisionRequest, KafkaEnforcementPublisher, do_decide
    from sealguard.contracts import Action, DecisionSource, ReasonCode
    from sealguard.storage import Database, EnforcementApplicationRow

    async def main() -> None:
        x = await _client(nodes, 1, 30)
        friend = await _client(nodes, 0, 31)
        await asyncio.sleep(0.5)
        db = Database(nodes.db_url, migrate=False)
        publisher = KafkaEnforcementPublisher(nodes.kafka, nodes.enforcement_topic)
        loop = asyncio.get_running_loop()
        try:
            row = await loop.run_in_executor(None, lambda: do_decide(db, publisher, DecisionRequest(
                x.account_id, Action.ban, ReasonCode.spam, DecisionSource.reviewer, "rev-cluster")))
            await loop.run_in_executor(None, publisher.flush)
            await asyncio.wait_for(x.closed.wait(), 15)  # disconnected by node 2, where it was
            assert x.banned is not None and x.banned[0] == row.id
            for i in (0, 2):  # and refused on every other node
                x.port = nodes.ports[i]
                await x.connect()
                with pytest.raises(Banned):
                    await x.login()
            deadline = time.monotonic() + 15
            applied: set[str] = set()
            while time.monotonic() < deadline and len(applied) < 3:
                with db.session() as s:
                    applied = set(s.scalars(EnforcementApplicationRow.__table__.select()
                                            .with_only_columns(EnforcementApplicationRow.node)
                                            .where(EnforcementApplicationRow.decision_id == row.id)))
                await asyncio.sleep(0.2)
            assert applied == {nodes.node_id(i) for i in range(3)}
            with pytest.raises(Exception, match="RECIPIENT_UNAVAILABLE|cannot receive"):
                await friend.send(x.account_id, b"to the banned")
        finally:
            publisher.close()
            db.dispose()
            await friend.close()

    uvloop.run(main())


@pytest.mark.postgres
def test_an_account_whose_registration_news_never_came_is_learned(nodes: Nodes) -> None:
    """On the embedded Tansu a node's reader could miss a registration record (docs/cluster.md,
    "Readers and the embedded broker's gaps"); the accounts table is the truth. An account written to
    the database with no `A` record at all: its login on node 2 asks the database (no UNKNOWN_ACCOUNT),
    and its route record teaches nodes 1 and 3, so a client there reaches it; a SEND to another such
    account, never logged in, asks the database too and is queued — and so do a prekey claim, a
    contact, a block and a new group naming such accounts on node 3."""
    from relay.server.store import RelayStore
    from sealguard.contracts import new_account_id
    from sealguard.storage import Database

    async def main() -> None:
        ident = Identity.generate()
        db = Database(nodes.db_url, migrate=False)
        try:
            ident.account_id = RelayStore(db).create_account(ident.identity_key, ident.curve_key, "test", "sdk")
            other = Identity.generate()
            offline = RelayStore(db).create_account(other.identity_key, other.curve_key, "test", "sdk")
            # never logged in, known to the database only: one per request kind below (a node learns
            # an account at its first lookup, so each request must name one no node knows yet)
            unheard = [RelayStore(db).create_account(i.identity_key, i.curve_key, "test", "sdk")
                       for i in (Identity.generate() for _ in range(4))]
            RelayStore(db).upload_prekeys(unheard[0], [("k1", "one-time key")], None)
        finally:
            db.dispose()
        learned_before = nodes.metric("sealguard_relay_cluster_accounts_learned_total")
        x = RelayClient("127.0.0.1", nodes.ports[1], ident, bind_address="127.9.40.1", request_timeout=15.0,
                        ping_interval=20.0)
        await x.connect()
        await x.login()  # node 2 never heard of it: before the fix, UNKNOWN_ACCOUNT
        await x.upload_prekeys(5)
        a = await _client(nodes, 0, 41)
        try:
            await _until(lambda: nodes.metric("sealguard_relay_cluster_accounts_learned_total") >= learned_before + 3,
                         "node 2 (its login) and nodes 1, 3 (its route) learned it")
            mid = await a.send(x.account_id, b"found")
            assert a.ack_status[mid] is DeliveryStatus.DELIVERED
            assert await _next(x) == (a.account_id, b"found", None)
            # an account no node heard of, never logged in: a SEND to it asks the database, is queued
            mid = await a.send_raw(offline, b"opaque")
            assert a.ack_status[mid] is DeliveryStatus.QUEUED
            with pytest.raises(Exception, match="UNKNOWN_ACCOUNT|no such recipient"):
                await a.send_raw(new_account_id(), b"opaque")  # and one the database does not have either
            # the other requests naming an account ask the database too (node 3)
            c = await _client(nodes, 2, 42)
            try:
                learned = nodes.metric("sealguard_relay_cluster_accounts_learned_total")
                assert (await c.claim_prekey(unheard[0]))[2] == "one-time key"
                await c.add_contact(unheard[1])
                await c.block(unheard[2])
                gid = await c.create_group([unheard[3], x.account_id])
                assert gid
                assert nodes.metric("sealguard_relay_cluster_accounts_learned_total") >= learned + 4
                for request in (c.claim_prekey, c.add_contact, c.block):
                    with pytest.raises(Exception, match="UNKNOWN_ACCOUNT"):
                        await request(new_account_id())
                # made-up ids at once: each lookup costs 500 of the 5,000-frame budget, so the tenth is a flood
                results = await asyncio.gather(*(c.claim_prekey(new_account_id()) for _ in range(12)),
                                               return_exceptions=True)
                assert all(isinstance(r, Exception) for r in results), results
                assert any("FLOOD" in str(r) for r in results), results
            finally:
                await c.close()
        finally:
            await a.close()
            await x.close()

    uvloop.run(main())


@pytest.mark.postgres
def test_a_node_killed_under_load_loses_nothing_acked(nodes: Nodes) -> None:
    out = uvloop.run(kill_run(nodes, argparse.Namespace(kill_users=12, kill_rate=30.0, kill_seconds=6.0,
                                                        settle_s=20.0)))
    nodes.start(nodes.n - 1)  # from this thread: a child dies with the thread that started it
    assert out["acked"] > 50, out
    assert out["lost"] == 0, out
    assert out["reconnects"] >= 1, out  # the killed node's users reconnected elsewhere


@pytest.mark.slow
@pytest.mark.postgres
def test_soak_a_longer_run_with_a_kill_loses_nothing(nodes: Nodes) -> None:
    """The same at a size closer to use: 60 users, 100 messages/s for 30 s, a node killed halfway."""
    out = uvloop.run(kill_run(nodes, argparse.Namespace(kill_users=60, kill_rate=100.0, kill_seconds=30.0,
                                                        settle_s=30.0)))
    nodes.start(nodes.n - 1)
    assert out["acked"] > 2000, out
    assert out["lost"] == 0, out
    assert out["duplicates"] == 0, out


@pytest.mark.slow
@pytest.mark.postgres
def test_a_broker_restart_is_survived(tmp_path: Path) -> None:
    """Tansu restarts empty: the nodes' readers create their topics again and reload routes from the
    database; messages cross nodes again, and nothing acked meanwhile is lost."""
    from sealguard.broker import EmbeddedBroker
    from sealguard.settings import Settings

    db = create_pg_database(PG_ADMIN_URL)
    broker = EmbeddedBroker(Settings(state_dir=tmp_path), log_path=tmp_path / "broker.log").start()
    ns = Nodes(tmp_path / "nodes", broker.bootstrap, db, 2, ack_timeout_s=2.0, node_ttl_s=2.0)
    try:
        ns.start_all()

        async def main() -> None:
            a, b = await _client(ns, 0, 50), await _client(ns, 1, 51)
            await asyncio.sleep(0.5)
            try:
                mid = await a.send(b.account_id, b"before")
                assert a.ack_status[mid] is DeliveryStatus.DELIVERED
                assert await _next(b) == (a.account_id, b"before", None)
                await asyncio.get_running_loop().run_in_executor(None, broker.restart)
                got: list[bytes] = []
                for i in range(40):  # while the nodes find the new broker: acked = delivered or queued
                    mid = await a.send(b.account_id, b"during %d" % i)
                    assert a.ack_status[mid] in (DeliveryStatus.DELIVERED, DeliveryStatus.QUEUED)
                    await asyncio.sleep(0.25)
                while not b.inbox.empty():
                    got.append((await _next(b))[1])
                await b.close()
                b.port = ns.ports[1]
                await b.connect()
                await b.login()  # whatever was queued comes now
                deadline = time.monotonic() + 15
                while len(set(got)) < 40 and time.monotonic() < deadline:
                    try:
                        got.append((await _next(b, 1.0))[1])
                    except TimeoutError:
                        pass
                assert {b"during %d" % i for i in range(40)} <= set(got)
                mid = await a.send(b.account_id, b"after")
                assert a.ack_status[mid] is DeliveryStatus.DELIVERED  # handed over again, not queued
            finally:
                await a.close()
                await b.close()

        uvloop.run(main())
    finally:
        ns.stop()
        broker.stop()
        drop_pg_database(PG_ADMIN_URL, db)


# -- the pure parts ----------------------------------------------------------------------------------

def test_wire_round_trips_and_names_bad_input() -> None:
    mid = secrets.token_bytes(16)
    frame = wire.handover(7, mid, 1, 123, "a" * 21, "b" * 21, "g" * 21, b"cipher")
    head = wire.record_head("relay-2", 11, 22)
    (record,) = list(wire.frame_records(head, [frame, wire.ack(7, wire.QUEUED), wire.poke("c" * 21)]))
    node, inc, to_inc, frames = wire.parse_record(record)
    assert (node, inc, to_inc, len(frames)) == ("relay-2", 11, 22, 3)
    assert wire.parse_handover(frames[0]) == (7, mid, 1, 123, "a" * 21, "b" * 21, "g" * 21, b"cipher")
    assert wire.parse_ack(frames[1]) == (7, wire.QUEUED)
    assert wire.parse_poke(frames[2]) == "c" * 21
    assert wire.parse_presence(wire.presence("a" * 21, True, ["b" * 21, "c" * 21])) == ("a" * 21, True,
                                                                                     ["b" * 21, "c" * 21])
    merged = wire.acks([(1, wire.DELIVERED), (2, wire.QUEUED)])
    assert list(wire.parse_acks(merged)) == [(1, wire.DELIVERED), (2, wire.QUEUED)]
    with pytest.raises(wire.WireError, match="ACKS"):
        list(wire.parse_acks(b"M" + b"x" * 7))
    with pytest.raises(wire.WireError, match="PRESENCE"):
        wire.parse_presence(b"S" + b"a" * 21 + b"\x01" + b"b" * 5)
    with pytest.raises(wire.WireError, match="runs past the record's end"):
        wire.parse_record(record[:-3])
    with pytest.raises(wire.WireError, match="node id"):
        wire.check_node_id("relay 1")
    with pytest.raises(wire.WireError, match="expected 4"):
        wire.parse_state(b"k", b"R relay-1 1")
    big = [b"x" * 300_000] * 3
    assert len(list(wire.frame_records(head, big))) == 3  # records stay under MAX_RECORD


def test_routes_newer_wins_and_nodes_expire_on_our_clock() -> None:
    routes = RouteTable()
    assert routes.apply("acc", "n2", True, 100)
    assert not routes.apply("acc", "n3", True, 90)  # older: ignored (a replay over a snapshot)
    assert routes.apply("acc", "n3", True, 110)
    assert not routes.apply("acc", "n2", False, 120)  # n2's late disconnect does not remove n3's route
    assert routes.node_of["acc"] == "n3"
    assert routes.drop_node("n3") == ["acc"]
    table = NodeTable("n1", ttl_s=2.0)
    row = ("n2", 5, "t.n2", 1_000_000, None)
    assert table.observe([row], 10.0, 1_000_500) == ([], ["n2"])
    assert table.observe([("n2", 5, "t.n2", 1_000_900, None)], 11.5, 0) == ([], [])  # changed: alive
    assert table.observe([("n2", 5, "t.n2", 1_000_900, None)], 13.6, 0) == (["n2"], [])  # still: dead
    assert table.observe([("n2", 6, "t.n2", 5, None)], 14.0, 0) == ([], ["n2"])  # restarted
    assert table.observe([("n2", 6, "t.n2", 6, 7)], 14.5, 0) == (["n2"], [])  # stopped cleanly


def test_the_cluster_reader_finds_a_new_enforcement_log_by_its_watermarks() -> None:
    """A cluster node reads the enforcement topic in its cluster reader (no EnforcementConsumer): a
    watched source whose high watermark goes down is a new log (Tansu restarted empty), so the
    reader re-assigns and the node reloads its decisions from the database."""
    from confluent_kafka import TopicPartition

    from relay.cluster.bus import Reader

    class Consumer:
        high: ClassVar[dict[int, int]] = {0: 5, 1: 7}

        def get_watermark_offsets(self, tp: TopicPartition, timeout: float, cached: bool) -> tuple[int, int]:
            return 0, self.high[tp.partition]

    reader = Reader.__new__(Reader)
    reader.name, reader._consumer = "cluster-reader", Consumer()
    reader._watched = [TopicPartition("enf", 0), TopicPartition("enf", 1)]
    reader._high = {}
    assert not reader._log_reset()
    Consumer.high = {0: 6, 1: 7}  # grew: the same log
    assert not reader._log_reset()
    Consumer.high = {0: 6, 1: 2}  # went down: a new log
    assert reader._log_reset()


def test_outbox_drains_on_the_wall_clocks_multiples_of_its_period(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every node drains at the same instants (so an inbox gets its peers' records of a period
    together), and a timer that fired a little early does not drain twice in one period."""
    from relay.cluster import bus

    outbox = bus.Outbox.__new__(bus.Outbox)
    outbox.drain_s = 0.04
    for now, wait in ((1000.000, 0.04), (1000.001, 0.039), (1000.039, 0.041), (1000.0395, 0.0405),
                      (1000.021, 0.059)):
        monkeypatch.setattr(bus.time, "time", lambda now=now: now)
        got = outbox._until_next()
        assert got == pytest.approx(wait, abs=1e-6), now
        assert outbox.drain_s / 2 < got <= 1.5 * outbox.drain_s
        assert round((now + got) / outbox.drain_s, 6) % 1 == 0  # a multiple of the period


def test_bad_node_id_is_refused_by_the_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "sealguard", "relay", "--cluster", "--node-id", "bad id"],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={"SEALGUARD_STATE_DIR": str(tmp_path), "SEALGUARD_KAFKA": "127.0.0.1:1",
                               "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0
    assert "node id 'bad id'" in proc.stderr
