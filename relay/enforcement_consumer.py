"""Consumes `sg.enforcement.v1` for one relay node, on its own thread.

Every node must see every decision, so the consumer *assigns* itself all partitions (no group
rebalancing, nothing committed) starting at the beginning of the log: replays are harmless
because application is idempotent by decision id and an older decision never undoes a newer
one. When the broker comes back after being unreachable (Tansu restarts lose the log), or the log is
found reset while connected (offsets out of range, a partition ending before our position, the
partitions changed), the consumer re-assigns every partition from the beginning and calls
`on_reconnect` so the relay reloads active decisions from the database — the source of truth.
The relay also re-reads them every few seconds (`RelayConfig.reconcile_interval_s`): the safety
net for a reset nobody noticed.
"""

from __future__ import annotations

import logging
import threading
import time
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
        self._assigned: list[int] = []
        self._stop = threading.Event()
        self._consumer = consumer(bootstrap, f"relay-{node}-{uuid.uuid4().hex[:8]}",
                                  **{"error_cb": self._on_error, "enable.auto.offset.store": False,
                                     "auto.offset.reset": "earliest",
                                     "topic.metadata.refresh.interval.ms": 2000})
        self._thread = threading.Thread(target=self._run, name="enforcement-consumer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _on_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT) and not self._down:
            log.warning("enforcement broker unreachable: %s", err.str())
            self._down = True

    def _partitions(self) -> list[int] | None:
        try:
            meta = self._consumer.list_topics(self.topic, timeout=2)
        except KafkaException as exc:
            log.debug("no metadata yet: %s", exc)
            return None
        tmeta = meta.topics.get(self.topic)
        if tmeta is None or tmeta.error is not None or not tmeta.partitions:
            return None
        return sorted(tmeta.partitions)

    def _assign(self) -> bool:
        """(Re)assign every partition from the beginning of the log."""
        partitions = self._partitions()
        if partitions is None:
            return False
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
        self._assigned = partitions
        log.info("enforcement consumer assigned %d partitions of %s from the beginning", len(partitions), self.topic)
        return True

    def _log_reset(self) -> bool:
        """True when the log is not the one we were reading: the partitions changed, or a partition
        now ends before our position (Tansu restarted empty and has fewer records than we read; it
        answers such a fetch with nothing rather than OFFSET_OUT_OF_RANGE, so we must look)."""
        partitions = self._partitions()
        if partitions is None:
            return False
        if partitions != self._assigned:
            log.warning("enforcement topic now has partitions %s (was %s)", partitions, self._assigned)
            return True
        try:
            positions = self._consumer.position([TopicPartition(self.topic, p) for p in partitions])
            for tp in positions:
                if tp.offset < 0:
                    continue  # nothing fetched yet on this partition
                _, high = self._consumer.get_watermark_offsets(tp, timeout=2, cached=False)
                if high < tp.offset:
                    log.warning("enforcement partition %d ends at %d, before our position %d: the log shrank",
                                tp.partition, high, tp.offset)
                    return True
        except KafkaException as exc:
            log.debug("could not check the enforcement log: %s", exc)
        return False

    def _restart_from_beginning(self, why: str) -> None:
        """Replay every partition (applying a decision twice changes nothing) and reload from the
        database, the truth — decisions written while the log was gone are only there."""
        if self._assign():
            self.reconnects += 1
            log.info("enforcement %s: replaying the topic from the beginning, reloading decisions from the "
                     "database", why)
            self.on_reconnect()

    def _run(self) -> None:
        assigned = False
        next_check = time.monotonic() + self.health_interval_s
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
                    log.info("enforcement broker back: replaying the topic from the beginning, reloading "
                             "decisions from the database")
                    self.on_reconnect()
                else:
                    self._stop.wait(self.health_interval_s)
                continue
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + self.health_interval_s
                if self._log_reset():
                    self._restart_from_beginning("log reset")
                    continue
            msg = self._consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error() is not None:
                code = msg.error().code()
                if code == KafkaError.OFFSET_OUT_OF_RANGE:
                    self._restart_from_beginning("offsets out of range")
                elif code != KafkaError._PARTITION_EOF:
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
