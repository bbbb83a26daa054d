"""After a broker outage the relay reloads decisions from the database — the source of truth —
so a ban that never made it onto the (memory-only) log is still applied."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from moderation.decisions import DecisionRequest, do_decide
from relay.client import Identity, RelayClient
from relay.service import RelayService
from relay.testing import eventually, next_address, run
from sealguard.broker import EmbeddedBroker
from sealguard.contracts import Action, DecisionSource, ReasonCode, decode
from sealguard.net import free_port
from sealguard.settings import Settings
from sealguard.stream import ensure_topics

pytestmark = pytest.mark.timeout(120)


def test_a_ban_written_while_the_broker_was_down_is_applied_after_it_returns(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, partitions=1, broker_port=free_port(),
                        db_url=f"sqlite:///{tmp_path / 'db.sqlite'}")
    broker = EmbeddedBroker(settings).start()
    settings.kafka = broker.bootstrap

    async def main() -> None:
        svc = RelayService(settings)
        await svc.start()
        try:
            assert svc.db and svc.consumer
            c = RelayClient(*svc.address, Identity.generate(), bind_address=next_address())
            await c.connect()
            await c.register()
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, broker.kill)
            await asyncio.sleep(1.0)
            # The decision is committed but never published (the broker is gone).
            req = DecisionRequest(c.account_id or "", Action.ban, ReasonCode.spam, DecisionSource.auto, "rule:test")
            row = await loop.run_in_executor(None, do_decide, svc.db, None, req)
            await asyncio.sleep(0.5)
            assert c.banned is None
            await loop.run_in_executor(None, broker.start)
            await asyncio.wait_for(c.closed.wait(), 30)
            assert c.banned == (row.id, "spam")
            assert svc.consumer.reconnects >= 1
        finally:
            await svc.stop()

    try:
        run(main())
    finally:
        broker.stop()


def test_the_planes_message_sent_wait_out_a_broker_outage(tmp_path: Path) -> None:
    """The native plane produces message.sent itself (librdkafka, the emitter's settings): what it sends
    while the broker is away waits in librdkafka's queue and reaches the topic when the broker returns."""
    settings = Settings(state_dir=tmp_path, partitions=1, broker_port=free_port(),
                        db_url=f"sqlite:///{tmp_path / 'db.sqlite'}")
    broker = EmbeddedBroker(settings).start()
    settings.kafka = broker.bootstrap

    def sent_by(account: str) -> int:
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "t", "enable.auto.commit": False})
        c.assign([TopicPartition(settings.signals_topic, 0, OFFSET_BEGINNING)])
        records = [decode(m.value()) for m in c.consume(1000, 2.0) if m.error() is None]
        c.close()
        return sum(1 for e in records if e.type == "message.sent" and e.sender == account)

    async def main() -> None:
        svc = RelayService(settings)
        await svc.start()
        try:
            assert svc.server and svc.server.plane is not None
            a, b = [RelayClient(*svc.address, Identity.generate(), bind_address=next_address()) for _ in range(2)]
            for c in (a, b):
                await c.connect()
                await c.register()
                await c.upload_prekeys(3)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, broker.kill)
            for i in range(20):
                await a.send(b.account_id or "", f"while the broker is away {i}".encode())
            svc.server.sync_plane()
            assert svc.server.plane_count("sends") == 20 and svc.server.plane_count("signals_dropped") == 0
            await loop.run_in_executor(None, broker.start)  # the same port, an empty log
            await loop.run_in_executor(None, ensure_topics, broker.bootstrap, [settings.signals_topic], 1)
            await eventually(lambda: sent_by(a.account_id or "") == 20, timeout=60, interval=0.5)
        finally:
            await svc.stop()

    try:
        run(main())
    finally:
        broker.stop()
