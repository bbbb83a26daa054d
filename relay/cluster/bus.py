"""The cluster's Kafka side, on threads of its own, feeding the event loop in batches.

* `Outbox` — one producer thread. The event loop appends (topic, key, value) for the routes topic
  and (topic, to_incarnation, frame) for a node's inbox to a deque (an append: nothing blocks the
  loop); the thread drains it every `drain_s` (ClusterConfig.batch_ms), packs each destination's
  frames into as few records as fit (`wire.frame_records`) and hands them to librdkafka at once
  (`linger.ms` 1). Tansu's CPU goes by records and requests, not bytes: one record per destination
  per drain keeps both low.
* `Reader` — one consumer thread per input, by assignment (no consumer group, nothing committed):
  the node's inbox from its end, the routes topic from the beginning. Each poll's records reach
  the loop as one `call_soon_threadsafe`.

When the broker was unreachable and answers again, a reader re-assigns its partitions (the log
may be new: Tansu restarts empty) and calls `on_reset`, so the node reloads what it knows from
the database.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from relay.cluster import wire

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, bootstrap: str, node: str, incarnation: int, *, drain_s: float = 0.02,
                 linger_ms: int = 1) -> None:
        from sealguard.stream import producer

        self.node, self.incarnation = node, incarnation
        self.drain_s = drain_s
        self.records = 0
        self.failed = 0
        self._q: deque[tuple[str, Any, bytes]] = deque()
        self._stop = threading.Event()
        self._producer = producer(bootstrap, **{"linger.ms": linger_ms, "message.timeout.ms": 10_000,
                                                "delivery.report.only.error": True,
                                                "on_delivery": self._on_delivery})
        self._thread = threading.Thread(target=self._run, name="cluster-outbox", daemon=True)
        self._thread.start()

    def to_inbox(self, topic: str, to_incarnation: int, frame: bytes) -> None:
        self._q.append((topic, to_incarnation, frame))

    def to_topic(self, topic: str, key: str, value: bytes) -> None:
        self._q.append((topic, key, value))

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:  # a lost handover is re-queued by its sender's deadline; count it
            self.failed += 1
            log.warning("cluster record not delivered: %s", err.str())

    def _run(self) -> None:
        q, produce, poll = self._q, self._producer.produce, self._producer.poll
        while True:
            stopping = self._stop.is_set()
            if not q:
                if stopping:
                    return
                poll(0)
                self._stop.wait(self.drain_s)
                continue
            inboxes: dict[tuple[str, int], list[bytes]] = {}
            n = len(q)
            for _ in range(n):
                topic, key, value = q.popleft()
                if type(key) is int:
                    inboxes.setdefault((topic, key), []).append(value)
                else:
                    self._produce(produce, poll, topic, key, value)
            for (topic, to_inc), frames in inboxes.items():
                head = wire.record_head(self.node, self.incarnation, to_inc)
                for value in wire.frame_records(head, wire.merge_acks(frames)):
                    self._produce(produce, poll, topic, None, value)
            poll(0)
            if not stopping:
                self._stop.wait(self.drain_s)

    def _produce(self, produce: Callable[..., None], poll: Callable[[float], int], topic: str, key: str | None,
                 value: bytes) -> None:
        for _ in range(50):
            try:
                produce(topic, key=key, value=value)
                self.records += 1
                return
            except BufferError:  # librdkafka's queue is full (the broker is slow or gone)
                poll(0.1)
            except KafkaException as exc:
                self.failed += 1
                log.error("could not produce to %s: %s", topic, exc)
                return
        self.failed += 1
        log.error("dropped a cluster record for %s: the producer queue stayed full", topic)

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self._producer.flush(timeout)


class Reader:
    """Consume `topic` by assignment on a thread; `on_records(list[(key, value)])` on the loop.

    `fetch_wait_ms` is the latency of an idle partition: Tansu (measured here) answers a fetch of an
    empty partition only when that wait is over, even if records arrive meanwhile, and an empty
    fetch costs it ~0.3 ms of CPU — 6 readers at 5 ms kept an idle broker at 41% of a core."""

    def __init__(self, bootstrap: str, topic: str, name: str, on_records: Callable[[list[tuple[Any, bytes]]], None],
                 *, from_end: bool, on_reset: Callable[[], None] | None = None, fetch_wait_ms: int = 100,
                 partitions: int = 1) -> None:
        from sealguard.stream import consumer

        self.bootstrap = bootstrap
        self.partitions = partitions  # to create the topic again after a broker restart emptied it

        self.topic = topic
        self.name = name
        self.from_end = from_end
        self.on_records = on_records
        self.on_reset = on_reset
        self.received = 0
        self.resets = 0
        self._down = False
        self._stop = threading.Event()
        self._consumer = consumer(bootstrap, f"{name}-{uuid.uuid4().hex[:8]}",
                                  **{"error_cb": self._on_error, "enable.auto.offset.store": False,
                                     "fetch.wait.max.ms": fetch_wait_ms, "fetch.min.bytes": 1 << 20,
                                     "fetch.error.backoff.ms": 50,
                                     "topic.metadata.refresh.interval.ms": 2000})
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def assign(self, timeout: float = 30.0) -> None:
        """Assign every partition; from the end means the high watermark read now — which on Tansu
        may lag the true end by one producer batch, so a few older records may be read again (the
        node ignores records addressed to another incarnation)."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            try:
                meta = self._consumer.list_topics(self.topic, timeout=2)
                tmeta = meta.topics.get(self.topic)
                if tmeta is not None and tmeta.error is None and tmeta.partitions:
                    break
            except KafkaException as exc:
                log.debug("%s: no metadata yet: %s", self.name, exc)
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {self.topic} has no partitions after {timeout:.0f}s")
            time.sleep(0.2)
        tps = []
        for p in sorted(tmeta.partitions):
            offset = OFFSET_BEGINNING
            if self.from_end:
                _, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=5, cached=False)
                offset = max(high, 0)
            tps.append(TopicPartition(self.topic, p, offset))
        self._consumer.assign(tps)

    def start(self) -> None:
        self._thread.start()

    def _on_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT) and not self._down:
            log.warning("%s: broker unreachable: %s", self.name, err.str())
            self._down = True

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._down:
                try:
                    from sealguard.stream import ensure_topics

                    ensure_topics(self.bootstrap, [self.topic], self.partitions)
                    self.assign(timeout=2)
                except (RuntimeError, KafkaException) as exc:
                    log.debug("%s: broker not back yet: %s", self.name, exc)
                    self._stop.wait(1.0)
                    continue
                self._down = False
                self.resets += 1
                log.info("%s: broker back, partitions re-assigned", self.name)
                if self.on_reset is not None:
                    self.on_reset()
            try:
                # consume(n, t) waits for n records or t: take the first as soon as it comes, then
                # whatever else is already fetched.
                first = self._consumer.poll(0.1)
                if first is None:
                    continue
                msgs = [first, *self._consumer.consume(2000, 0)]
            except KafkaException as exc:
                log.warning("%s: %s", self.name, exc)
                continue
            batch = []
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        log.warning("%s: %s", self.name, err.str())
                    continue
                batch.append((m.key(), m.value()))
            if batch:
                self.received += len(batch)
                self.on_records(batch)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        try:
            self._consumer.close()
        except RuntimeError:
            pass
