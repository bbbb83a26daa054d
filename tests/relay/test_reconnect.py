"""After a broker outage the relay reloads decisions from the database — the source of truth —
so a ban that never made it onto the (memory-only) log is still applied."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from moderation.decisions import DecisionRequest, do_decide
from relay.client import Identity, RelayClient
from relay.service import RelayService
from relay.testing import next_address, run
from sealguard.broker import EmbeddedBroker
from sealguard.contracts import Action, DecisionSource, ReasonCode
from sealguard.net import free_port
from sealguard.settings import Settings

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
