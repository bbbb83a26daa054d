"""A cluster node's outbox and its signal emitter share one producer and one drain (relay/cluster/bus.py):
signals, handovers and routes records leave in the same produce requests."""

from __future__ import annotations

import asyncio
import os
import time
from types import SimpleNamespace

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from relay.cluster.bus import Outbox
from relay.emitter import KafkaEmitter
from sealguard.stream import ensure_topics

pytestmark = pytest.mark.timeout(60)


def _read(bootstrap: str, topic: str, want: int, timeout: float = 15.0) -> list[bytes]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{os.urandom(4).hex()}", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += [m.value() for m in c.consume(100, 0.2) if m.error() is None]
    c.close()
    return got


def test_the_outbox_shares_the_emitters_producer_and_drains_it_first(broker_bootstrap: str) -> None:
    p = f"t{os.urandom(3).hex()}"
    signals, routes = f"{p}.signals", f"{p}.routes"
    ensure_topics(broker_bootstrap, [signals, routes], 1)
    emitter = KafkaEmitter(broker_bootstrap, signals, linger_ms=1, idle_wait_s=0.005)

    async def main() -> Outbox:
        emitter.attach_loop(asyncio.get_running_loop())  # as the server does at its start
        emitter.emit_message_sent("a" * 21, "b" * 21, 100, 0, False, True, 1)
        await asyncio.sleep(0.05)
        assert len(emitter._queue) == 0  # not shared yet: its own timer drained it
        outbox = Outbox(broker_bootstrap, "n1", 7, drain_s=3600, emitter=emitter)  # the cluster starts after
        assert outbox._producer is emitter._producer  # one producer, one produce request per drain
        outbox.start(asyncio.get_running_loop())
        emitter.emit_message_sent("a" * 21, "c" * 21, 100, 0, False, True, 2)
        outbox.to_topic(routes, "acc", b"R n1 1 5")
        await asyncio.sleep(0.05)
        assert len(emitter._queue) == 1  # shared: the emitter's timer stopped; the outbox drains it
        outbox.drain()
        assert len(emitter._queue) == 0
        outbox.stop()
        return outbox

    outbox = asyncio.run(main())
    emitter.close(10)
    assert len(_read(broker_bootstrap, signals, 2)) == 2
    assert _read(broker_bootstrap, routes, 1) == [b"R n1 1 5"]
    # A failed cluster record is the outbox's to count, not a lost signal.
    err = KafkaError(KafkaError._MSG_TIMED_OUT)
    emitter._on_delivery(err, SimpleNamespace(topic=lambda: routes))
    assert (outbox.failed, emitter.failed) == (1, 0)
    emitter._on_delivery(err, SimpleNamespace(topic=lambda: signals))
    assert (outbox.failed, emitter.failed) == (1, 1)
