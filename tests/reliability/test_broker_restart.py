"""After a broker restart, decisions must still reach the relay through the topic.

Tansu keeps its log, and its idempotent-producer state, in memory. The relay reloads decisions from
the database at start and when its enforcement consumer reconnects; a ban written *after* that
reload can only arrive over `sg.enforcement.v1`, from a publisher that was created before the
restart (the API's and detection's are long-lived). Measured while investigating `bans_intact=0` in
a full fault run: an idempotent producer that produces within ~1 s of a Tansu restart loses those
messages (`_MSG_TIMED_OUT`); ten seconds later it delivers again — this test keeps that path honest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from moderation.decisions import DecisionRequest, KafkaEnforcementPublisher, do_decide
from relay.client import Identity, RelayClient
from relay.service import RelayService
from relay.testing import eventually, run
from sealguard.broker import EmbeddedBroker
from sealguard.contracts import Action, DecisionSource, ReasonCode
from sealguard.settings import Settings
from sealguard.storage import Database


class _Reloads(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "reloading decisions" in record.getMessage():
            self.count += 1


def test_a_ban_decided_after_a_broker_restart_reaches_the_relay(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state", db_url=f"sqlite:///{tmp_path / 'sg.db'}", partitions=2,
                        signals_topic="r.signals", inbound_topic="r.inbound", enforcement_topic="r.enforcement",
                        scores_topic="r.scores")
    with EmbeddedBroker(settings) as broker:
        settings.kafka = broker.bootstrap

        async def main() -> None:
            loop = asyncio.get_running_loop()
            service = RelayService(settings, metrics=False)
            await service.start()
            db = Database(settings.database_url, migrate=False)
            publisher = KafkaEnforcementPublisher(broker.bootstrap, settings.enforcement_topic)  # long-lived, as in the API
            try:
                port = service.address[1]
                clients = []
                for addr in ("127.91.0.1", "127.92.0.1", "127.93.0.1"):
                    c = RelayClient("127.0.0.1", port, Identity.generate(), bind_address=addr, request_timeout=10)
                    await c.connect()
                    await c.register()
                    clients.append(c)
                first, second, bystander = clients
                assert first.account_id and second.account_id

                def ban(account: str) -> None:
                    do_decide(db, publisher, DecisionRequest(account=account, action=Action.ban,
                                                             reason_code=ReasonCode.spam,
                                                             source=DecisionSource.reviewer, actor="r:test"))

                await loop.run_in_executor(None, ban, first.account_id)  # the control: before the restart
                await eventually(lambda: first.banned is not None, 20)
                reloads = _Reloads()
                consumer_log = logging.getLogger("relay.enforcement_consumer")
                consumer_log.addHandler(reloads)
                consumer_log.setLevel(logging.INFO)
                await loop.run_in_executor(None, broker.restart)
                # The relay's enforcement consumer reconnects and reloads from the database; only then
                # is the ban written, so the topic is the only way it can reach the relay.
                await eventually(lambda: reloads.count > 0, 30)
                await asyncio.sleep(2)
                started = time.monotonic()
                await loop.run_in_executor(None, ban, second.account_id)
                await eventually(lambda: second.banned is not None and not second.connected, 30)
                assert time.monotonic() - started < 30
                assert bystander.connected
            finally:
                await service.stop()
                publisher.flush(1)
                db.dispose()

        run(main())
