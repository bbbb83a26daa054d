"""Consumes `sg.enforcement.v1` for one relay node, on its own thread.

Every node must see every decision, so the consumer *assigns* itself all partitions (no group
rebalancing, nothing committed) starting at the beginning of the log: replays are harmless
because application is idempotent by decision id and an older decision never undoes a newer
one. When the broker comes back after being unreachable (Tansu restarts lose the log), the
consumer re-assigns and calls `on_reconnect` so the relay reloads active decisions from the
database — the source of truth.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from sealguard.contracts import ContractError, Enforcement, decode

log = logging.getLogger(__name__)


class EnforcementConsumer:
    def __init__(self, bootstrap: str, topic: str, node: str, on_enforcement: Callable[[Enforcement], None],
                 on_reconnect: Callable[[], None], *, health_interval_s: float = 2.0) -> None:
        from sealguard.stream import consumer

        self.topic = topic
        self.on_enforcement = on_enforcement
        self.on_reconnect = on_reconnect
        self.health_interval_s = health_interval_s
        self.received = 0
        self.rejected = 0
        self.reconnects = 0
        self._down = False
        self._stop = threading.Event()
        self._consumer = consumer(bootstrap, f"relay-{node}-{uuid.uuid4().hex[:8]}",
                                  **{"error_cb": self._on_error, "enable.auto.offset.store": False,
                                     "topic.metadata.refresh.interval.ms": 2000})
        self._thread = threading.Thread(target=self._run, name="enforcement-consumer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _on_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT) and not self._down:
            log.warning("enforcement broker unreachable: %s", err.str())
            self._down = True

    def _assign(self) -> bool:
        try:
            meta = self._consumer.list_topics(self.topic, timeout=2)
        except KafkaException as exc:
            log.debug("no metadata yet: %s", exc)
            return False
        tmeta = meta.topics.get(self.topic)
        if tmeta is None or tmeta.error is not None or not tmeta.partitions:
            return False
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in sorted(tmeta.partitions)])
        log.info("enforcement consumer assigned %d partitions of %s", len(tmeta.partitions), self.topic)
        return True

    def _run(self) -> None:
        assigned = False
        while not self._stop.is_set():
            if not assigned:
                assigned = self._assign()
                if not assigned:
                    self._stop.wait(0.5)
                    continue
            if self._down:
                # Wait for the broker; when it answers again the log may be new: start over.
                if self._assign():
                    self._down = False
                    self.reconnects += 1
                    log.info("enforcement broker back: reloading decisions from the database")
                    self.on_reconnect()
                else:
                    self._stop.wait(self.health_interval_s)
                continue
            msg = self._consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("enforcement consumer: %s", msg.error().str())
                continue
            try:
                event = decode(msg.value())
            except ContractError as exc:
                self.rejected += 1
                log.error("rejected a record on %s offset %d: %s", self.topic, msg.offset(), exc)
                continue
            if not isinstance(event, Enforcement):
                self.rejected += 1
                log.error("rejected a %s record on %s: not an enforcement", event.type, self.topic)
                continue
            self.received += 1
            self.on_enforcement(event)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        try:
            self._consumer.close()
        except RuntimeError:
            pass
