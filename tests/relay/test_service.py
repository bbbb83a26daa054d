"""The relay service against the real broker and database: signals on the topic, every
enforcement action observed from a real client, offline delivery across a relay kill -9."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from sqlalchemy import func, select

from moderation.decisions import DecisionRequest, KafkaEnforcementPublisher, do_decide
from relay.client import Banned, Identity, RelayClient, RequestRefused
from relay.protocol import DeliveryStatus, ErrorCode
from relay.service import RelayService
from relay.testing import eventually, next_address, run
from sealguard.contracts import Action, DecisionSource, ReasonCode, decode, now_ms
from sealguard.net import free_port
from sealguard.settings import Settings
from sealguard.storage import Database, EnforcementApplicationRow, QueuedMessageRow

pytestmark = pytest.mark.timeout(120)


def read_topic(bootstrap: str, topic: str, partitions: int) -> list[Any]:
    """Every record on the topic right now (assigned, no group join: fast on Tansu): read until each
    partition's high watermark, or 5 s — a new consumer's first fetch on Tansu sometimes takes more
    than the second this used to wait for it (then every retry read nothing)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{os.urandom(4).hex()}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    want = sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1] for p in range(partitions))
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    out: list[Any] = []
    deadline = time.monotonic() + 5.0
    while len(out) < want and time.monotonic() < deadline:
        out += [decode(m.value()) for m in c.consume(1000, 0.3) if m.error() is None]
    c.close()
    return out


async def wait_signals(settings: Settings, predicate: Any, timeout: float = 30.0) -> list[Any]:
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout
    while True:
        assert settings.kafka
        events = await loop.run_in_executor(None, read_topic, settings.kafka, settings.signals_topic,
                                            settings.partitions)
        if predicate(events):
            return events
        if time.monotonic() > deadline:
            raise AssertionError(f"signals never matched; got {[e.type for e in events]}")
        await asyncio.sleep(0.3)


@contextlib.asynccontextmanager
async def service(settings: Settings) -> AsyncIterator[RelayService]:
    svc = RelayService(settings)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


async def user(svc: RelayService, prekeys: int = 3) -> RelayClient:
    host, port = svc.address
    c = RelayClient(host, port, Identity.generate(), bind_address=next_address())
    await c.connect()
    await c.register()
    if prekeys:
        await c.upload_prekeys(prekeys)
    return c


async def decide(settings: Settings, db: Database, account: str, action: Action,
                 expires_at: int | None = None) -> str:
    assert settings.kafka
    publisher = KafkaEnforcementPublisher(settings.kafka, settings.enforcement_topic)
    req = DecisionRequest(account, action, ReasonCode.spam if action is not Action.lift else ReasonCode.reviewer_lift,
                          DecisionSource.reviewer, "reviewer:tester", expires_at=expires_at)
    row = await asyncio.get_running_loop().run_in_executor(None, do_decide, db, publisher, req)
    publisher.flush()
    return row.id


def test_signals_reach_the_topic_and_metrics_are_served(topics: Settings) -> None:
    import httpx

    async def main() -> None:
        async with service(topics) as svc:
            a, b = await user(svc), await user(svc)
            await a.send(b.account_id, b"hi")
            await b.inbox.get()
            events = await wait_signals(topics, lambda ev: any(e.type == "message.sent" for e in ev))
            types = {e.type for e in events}
            assert {"account.registered", "session.opened", "message.sent"} <= types
            sent = next(e for e in events if e.type == "message.sent")
            assert (sent.sender, sent.recipient, sent.first_contact) == (a.account_id, b.account_id, True)
            assert svc.metrics_url
            async with httpx.AsyncClient() as http:
                text = (await http.get(svc.metrics_url)).text
            assert "sealguard_relay_sends_total 1.0" in text and "sealguard_relay_signals_dropped 0.0" in text
            await a.close()
            await b.close()

    run(main())


def test_ban_from_a_real_client_withholds_refuses_and_is_idempotent(topics: Settings) -> None:
    async def main() -> None:
        async with service(topics) as svc:
            assert svc.db
            spammer, victim, friend = await user(svc), await user(svc), await user(svc)
            await spammer.send(victim.account_id, b"spam 0")
            await victim.inbox.get()
            await victim.close()
            await eventually(lambda: victim.account_id not in svc.server.conns)  # type: ignore[union-attr]
            queued = [await spammer.send(victim.account_id, f"spam {i}".encode()) for i in range(3)]
            assert {spammer.ack_status[m] for m in queued} == {DeliveryStatus.QUEUED}
            decision = await decide(topics, svc.db, spammer.account_id, Action.ban)
            await asyncio.wait_for(spammer.closed.wait(), 20)
            assert spammer.banned == (decision, "spam")
            # Login refused with the ban frame (how to appeal: the decision id).
            again = RelayClient(*svc.address, spammer.identity)
            await again.connect()
            with pytest.raises(Banned) as err:
                await again.login()
            assert err.value.decision_id == decision
            # Its undelivered messages are withheld, kept in the books, not delivered.
            with svc.db.session() as s:
                assert s.scalar(select(func.count()).select_from(QueuedMessageRow)
                                .where(QueuedMessageRow.withheld.is_(True))) == 3
            await victim.connect()
            assert await victim.login() == 0
            # Others are unaffected.
            await friend.send(victim.account_id, b"hello")
            assert (await asyncio.wait_for(victim.inbox.get(), 5)).plaintext == b"hello"
            events = await wait_signals(topics, lambda ev: any(e.type == "enforcement.applied" for e in ev))
            applied = [e for e in events if e.type == "enforcement.applied"]
            assert [(e.account, e.decision_id, e.action) for e in applied] == [(spammer.account_id, decision, Action.ban)]
            for c in (friend, victim):
                await c.close()
        # A restart loads the ban from the database and applies nothing twice.
        async with service(topics) as svc2:
            assert svc2.server and svc2.db
            assert spammer.account_id in svc2.server.enforcer.bans
            await asyncio.sleep(2.0)  # the consumer replays the topic: still one application
            with svc2.db.session() as s:
                assert s.scalar(select(func.count()).select_from(EnforcementApplicationRow)) == 1
            assert svc2.server.stats.enforcements == 0

    run(main())


def test_messages_to_a_banned_recipient_are_refused_withheld_and_released_by_a_lift(topics: Settings) -> None:
    async def main() -> None:
        async with service(topics) as svc:
            assert svc.db and svc.server
            sender, target, other = await user(svc), await user(svc), await user(svc)
            gid = await sender.create_group([target.account_id, other.account_id])
            await sender.send(target.account_id, b"open")
            await target.inbox.get()
            await target.close()
            await eventually(lambda: target.account_id not in svc.server.conns)  # type: ignore[union-attr]
            queued = [await sender.send(target.account_id, f"before {i}".encode()) for i in range(2)]
            assert {sender.ack_status[m] for m in queued} == {DeliveryStatus.QUEUED}

            def held() -> int:
                assert svc.db
                with svc.db.session() as s:
                    return int(s.scalar(select(func.count()).select_from(QueuedMessageRow)
                                        .where(QueuedMessageRow.withheld.is_(True))) or 0)

            await decide(topics, svc.db, target.account_id, Action.ban)
            await eventually(lambda: target.account_id in svc.server.enforcer.bans, 20)  # type: ignore[union-attr]
            # What was queued for it is held back (withheld: the recipient is banned), not lost.
            await eventually(lambda: held() == 2, 10)
            # A new 1:1 message is refused, never acked.
            with pytest.raises(RequestRefused) as err:
                await sender.send(target.account_id, b"after")
            assert err.value.code is ErrorCode.RECIPIENT_UNAVAILABLE
            assert sender.connected
            # A group message skips the banned member: acked, delivered to the others, nothing queued for it.
            mid = await sender.send_group(gid, b"to the group")
            assert sender.ack_status[mid] is DeliveryStatus.DELIVERED
            assert (await asyncio.wait_for(other.inbox.get(), 5)).plaintext == b"to the group"
            with svc.db.session() as s:
                assert s.scalar(select(func.count()).select_from(QueuedMessageRow)
                                .where(QueuedMessageRow.recipient == target.account_id)) == 2
            # A lift releases what the ban held back; the account logs in and gets it.
            await decide(topics, svc.db, target.account_id, Action.lift)
            await eventually(lambda: target.account_id not in svc.server.enforcer.bans, 20)  # type: ignore[union-attr]
            await eventually(lambda: held() == 0, 10)
            await target.connect()
            assert await target.login() == 2
            got = [await asyncio.wait_for(target.inbox.get(), 5) for _ in range(2)]
            assert sorted(g.plaintext for g in got) == [b"before 0", b"before 1"]
            await sender.send(target.account_id, b"welcome back")
            assert (await asyncio.wait_for(target.inbox.get(), 5)).plaintext == b"welcome back"
            for c in (sender, target, other):
                await c.close()

    run(main())


def test_decisions_missed_on_the_topic_are_reconciled_from_the_database(topics: Settings) -> None:
    """The database is the truth: a ban and its lift written without being published (as when a
    broker restart loses them) still reach the relay, through its periodic reconciliation."""
    from relay.service import config_from_settings

    async def main() -> None:
        svc = RelayService(topics, config=config_from_settings(topics, reconcile_interval_s=0.3), metrics=False)
        await svc.start()
        try:
            assert svc.db and svc.server
            spammer, victim = await user(svc), await user(svc)
            await spammer.send(victim.account_id, b"open")
            await victim.inbox.get()
            await victim.close()
            await eventually(lambda: victim.account_id not in svc.server.conns)  # type: ignore[union-attr]
            await spammer.send(victim.account_id, b"queued")
            loop = asyncio.get_running_loop()

            def decide_unpublished(action: Action) -> None:
                assert svc.db
                do_decide(svc.db, None, DecisionRequest(spammer.account_id, action, ReasonCode.spam
                                                        if action is Action.ban else ReasonCode.reviewer_lift,
                                                        DecisionSource.reviewer, "reviewer:tester"))

            await loop.run_in_executor(None, decide_unpublished, Action.ban)
            await asyncio.wait_for(spammer.closed.wait(), 10)
            assert spammer.banned is not None
            await loop.run_in_executor(None, decide_unpublished, Action.lift)
            await eventually(lambda: spammer.account_id not in svc.server.enforcer.bans, 10)  # type: ignore[union-attr]
            # What the ban withheld is released: the victim gets it at login.
            await eventually(lambda: _withheld(svc.db) == 0, 10)
            await victim.connect()
            assert await victim.login() == 1
            await victim.close()
        finally:
            await svc.stop()

    run(main())


def _withheld(db: Database | None) -> int:
    assert db is not None
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(QueuedMessageRow)
                            .where(QueuedMessageRow.withheld.is_(True))) or 0)


def test_restrict_warn_lift_and_expiry_seen_from_real_clients(topics: Settings) -> None:
    async def main() -> None:
        async with service(topics) as svc:
            assert svc.db and svc.server
            a = await user(svc)
            strangers = [await user(svc) for _ in range(5)]
            await decide(topics, svc.db, a.account_id, Action.warn)
            assert (await asyncio.wait_for(a.notices.get(), 20)).kind == "warned"
            await decide(topics, svc.db, a.account_id, Action.restrict)
            assert (await asyncio.wait_for(a.notices.get(), 20)).kind == "restricted"
            # Restricted: only 3 first contacts, then refused (and limit.breached).
            for s in strangers[:3]:
                await a.send(s.account_id, b"hi")
            with pytest.raises(RequestRefused) as err:
                await a.send(strangers[3].account_id, b"hi")
            assert err.value.code is ErrorCode.RATE_LIMITED
            await decide(topics, svc.db, a.account_id, Action.lift)
            await eventually(lambda: a.account_id not in svc.server.enforcer.restricted, 20)  # type: ignore[union-attr]
            await a.send(strangers[3].account_id, b"hi again")
            # A ban that expires: refused while active, welcome after.
            await decide(topics, svc.db, a.account_id, Action.ban, expires_at=now_ms() + 1500)
            await asyncio.wait_for(a.closed.wait(), 20)
            again = RelayClient(*svc.address, a.identity)
            await again.connect()
            with pytest.raises(Banned):
                await again.login()
            await asyncio.sleep(1.6)
            await again.connect()
            await again.login()
            await again.send(strangers[4].account_id, b"back")
            events = await wait_signals(topics, lambda ev: sum(e.type == "enforcement.applied" for e in ev) >= 4)
            assert [e.action for e in events if e.type == "enforcement.applied"] == [
                Action.warn, Action.restrict, Action.lift, Action.ban]
            for c in [again, *strangers]:
                await c.close()

    run(main())


def _start_relay_process(settings: Settings, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SEALGUARD_KAFKA": settings.kafka or "", "SEALGUARD_DB_URL": settings.database_url,
           "SEALGUARD_STATE_DIR": str(settings.state_dir), "SEALGUARD_SIGNALS_TOPIC": settings.signals_topic,
           "SEALGUARD_ENFORCEMENT_TOPIC": settings.enforcement_topic, "SEALGUARD_PARTITIONS": str(settings.partitions)}
    proc = subprocess.Popen([sys.executable, "-m", "sealguard", "relay", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=open(log, "ab"))  # noqa: SIM115
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    assert line.startswith(f"relay: listening=127.0.0.1:{port} metrics=http://"), line
    return proc


def test_offline_delivery_survives_a_relay_kill_9(topics: Settings, tmp_path: Path) -> None:
    port = free_port()
    proc = _start_relay_process(topics, port, tmp_path / "relay.log")
    try:
        async def before() -> tuple[Identity, Identity, list[str]]:
            a = RelayClient("127.0.0.1", port, Identity.generate(), bind_address=next_address())
            b = RelayClient("127.0.0.1", port, Identity.generate(), bind_address=next_address())
            for c in (a, b):
                await c.connect()
                await c.register()
                await c.upload_prekeys(3)
            await a.send(b.account_id, b"open")
            await b.inbox.get()
            await b.close()
            await asyncio.sleep(0.2)
            mids = await asyncio.gather(*(a.send(b.account_id, f"m{i}".encode()) for i in range(20)))
            assert {a.ack_status[m] for m in mids} == {DeliveryStatus.QUEUED}
            b.identity.account.pickle(b"k" * 32)
            await a.close()
            # Keep b's Olm sessions for after the crash (a real client persists them).
            before.olm = b.olm  # type: ignore[attr-defined]
            return a.identity, b.identity, list(mids)

        _, b_ident, acked = run(before())
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc = _start_relay_process(topics, port, tmp_path / "relay.log")

        async def after() -> list[str]:
            b = RelayClient("127.0.0.1", port, b_ident, bind_address=next_address())
            b.olm = before.olm  # type: ignore[attr-defined]
            await b.connect()
            assert await b.login() == 20
            got = [await asyncio.wait_for(b.inbox.get(), 10) for _ in range(20)]
            await b.close()
            return [g.message_id for g in got]

        assert sorted(run(after())) == sorted(acked)  # nothing acked was lost
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0


def test_a_login_is_refused_by_a_ban_the_node_has_not_read_yet(topics: Settings) -> None:
    """The database is the truth: a ban committed but not yet on this node's enforcement stream (not
    published here at all, reconciliation far off) still refuses the account's next login at once —
    in a cluster, a banned account reconnecting to another node a moment after its ban."""
    from relay.service import config_from_settings

    async def main() -> None:
        svc = RelayService(topics, config=config_from_settings(topics, reconcile_interval_s=3600), metrics=False)
        await svc.start()
        try:
            assert svc.db and svc.server
            c = await user(svc)
            await c.close()
            row = await asyncio.get_running_loop().run_in_executor(None, lambda: do_decide(
                svc.db, None, DecisionRequest(c.account_id, Action.ban, ReasonCode.spam, DecisionSource.reviewer,
                                              "reviewer:tester")))
            await c.connect()
            with pytest.raises(Banned):
                await c.login()
            assert c.account_id in svc.server.enforcer.bans
            with Database(topics.database_url, migrate=False).session() as s:
                assert s.scalar(select(func.count()).select_from(EnforcementApplicationRow)
                                .where(EnforcementApplicationRow.decision_id == row.id)) == 1
        finally:
            await svc.stop()

    run(main())
