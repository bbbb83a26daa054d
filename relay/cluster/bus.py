"""The cluster's Kafka side, on threads of its own, feeding the event loop in batches.

* `Outbox` — one producer, drained on the event loop. The loop appends (topic, key, value) for the
  routes topic and (topic, to_incarnation, token, status) for an ACK to deques, and a frame for a
  node's inbox to that inbox's list; every `drain_s` (ClusterConfig.batch_ms) a timer packs each
  destination's frames (its ACKs as one ACKS frame) into as few records as fit
  (`wire.frame_records`) and hands them to librdkafka (`linger.ms` 1), whose threads send them.
  Tansu's CPU goes by records and requests, not bytes: one record per destination per drain keeps
  both low.
* `Reader` — one consumer and one thread, by assignment (no consumer group, nothing committed):
  the node's inbox from its end, the routes topic and the enforcement topic from the beginning, in
  one fetch request. Each poll's records of a topic reach their source's `on_records` at once. A jump
  in a partition's offsets is read again once (`sealguard.topic_reader.OffsetGaps`: on Tansu a
  partition several producers write can be skipped in part).

When the broker was unreachable and answers again, a fetch is out of range, or a watched source's
high watermark went down (a new, shorter log: Tansu restarts empty and answers a fetch past it with
nothing), a reader re-assigns its partitions and calls `on_reset`, so the node reloads what it knows
from the database.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from relay.cluster import wire
from sealguard.topic_reader import OffsetGaps, watermark_went_down

log = logging.getLogger(__name__)


def inbox_config(retention_ms: int) -> dict[str, str]:
    """Topic settings of a node inbox: it carries ciphertext only for the handover, so it is kept
    `retention_ms` (minutes), not Kafka's default week. `segment.ms` lets Apache Kafka roll a quiet
    inbox's segment so retention can drop it (it deletes whole closed segments only)."""
    return {"retention.ms": str(retention_ms), "segment.ms": str(min(retention_ms, 60_000)),
            "cleanup.policy": "delete"}


def ensure_inbox(bootstrap: str, topic: str, retention_ms: int) -> None:
    """Create a node's inbox (one partition) with `inbox_config`, or set that config on an inbox an
    earlier version created without it."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    from sealguard.stream import StreamError, admin, ensure_topics

    config = inbox_config(retention_ms)
    if ensure_topics(bootstrap, [topic], 1, config):
        return
    client = admin(bootstrap)
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in config.items()])
    for fut in client.incremental_alter_configs([resource]).values():
        try:
            fut.result()
        except KafkaException as exc:
            raise StreamError(f"could not set the retention of {topic}: {exc}") from None


class Outbox:
    """A node's producer, drained on the relay's event loop every `drain_s` (`start(loop)`): no
    thread of its own, so nothing takes the GIL from the loop 25-50 times a second (a drain is a few
    `produce` calls that only hand records to librdkafka's threads)."""

    MAX_BACKLOG = 10_000  # records librdkafka refused (its queue full: the broker long gone)

    def __init__(self, bootstrap: str, node: str, incarnation: int, *, drain_s: float = 0.02,
                 linger_ms: int = 1) -> None:
        from sealguard.stream import producer

        self.node, self.incarnation = node, incarnation
        self.drain_s = drain_s
        self.records = 0
        self.failed = 0
        self._q: deque[tuple[str, str, bytes]] = deque()  # routes-topic records (topic, key, value)
        self._acks: deque[tuple[str, int, int, int]] = deque()  # (topic, to_incarnation, token, status)
        self.ack_append = self._acks.append  # `ack` without the call, for the node's ack ports
        # (topic, to_incarnation) → frames for that inbox, in order; packed into records at the drain
        self._frames: dict[tuple[str, int], list[bytes]] = {}
        self._backlog: deque[tuple[str, str | None, bytes]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._producer = producer(bootstrap, **{"linger.ms": linger_ms, "message.timeout.ms": 10_000,
                                                "delivery.report.only.error": True,
                                                "on_delivery": self._on_delivery})

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._timer = loop.call_later(self._until_next(), self._tick)

    def _until_next(self) -> float:
        """Seconds until the next multiple of `drain_s` on the wall clock: every node drains at the
        same instants, so a node's inbox gets its peers' records of one period together and its
        reader needs fewer fetches for them (docs/cluster.md "Round five": the broker's requests a
        second fell, within the runs' spread; the loops' syscalls per message did not change)."""
        d = self.drain_s
        wait = d - time.time() % d
        return wait if wait > d / 2 else wait + d  # a timer that fired a little early: not twice

    def to_inbox(self, topic: str, to_incarnation: int, frame: bytes) -> None:
        frames = self._frames.get((topic, to_incarnation))
        if frames is None:
            self._frames[(topic, to_incarnation)] = [frame]
        else:
            frames.append(frame)

    def to_topic(self, topic: str, key: str, value: bytes) -> None:
        self._q.append((topic, key, value))

    def ack(self, topic: str, to_incarnation: int, token: int, status: int) -> None:
        """A handover's ACK: packed with the others of its batch into one ACKS frame at the drain."""
        self._acks.append((topic, to_incarnation, token, status))

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:  # a lost handover is re-queued by its sender's deadline; count it
            self.failed += 1
            log.warning("cluster record not delivered: %s", err.str())

    def _tick(self) -> None:
        try:
            self.drain()
        except Exception:  # never stop draining
            log.exception("cluster outbox drain failed")
        if self._loop is not None:
            self._timer = self._loop.call_later(self._until_next(), self._tick)

    def drain(self) -> None:
        """Pack each destination's frames (and its ACKs, as one ACKS frame) into records and hand them
        to librdkafka; on the loop, never blocking: what it cannot take now waits for the next drain."""
        q, acks, backlog = self._q, self._acks, self._backlog
        self._producer.poll(0)
        if not (q or acks or backlog or self._frames):
            return
        out = backlog
        inboxes, self._frames = self._frames, {}
        for _ in range(len(q)):
            out.append(q.popleft())
        pairs: dict[tuple[str, int], list[tuple[int, int]]] = {}
        for _ in range(len(acks)):
            topic, to_inc, token, status = acks.popleft()
            pairs.setdefault((topic, to_inc), []).append((token, status))
        for dest, tokens in pairs.items():
            inboxes.setdefault(dest, []).append(wire.acks(tokens))
        for (topic, to_inc), frames in inboxes.items():
            head = wire.record_head(self.node, self.incarnation, to_inc)
            for value in wire.frame_records(head, frames):
                out.append((topic, None, value))
        produce = self._producer.produce
        while out:
            topic, key, value = out[0]
            try:
                produce(topic, value, key)
            except BufferError:  # librdkafka's queue is full (the broker is slow or gone): next drain
                break
            except KafkaException as exc:
                self.failed += 1
                log.error("could not produce to %s: %s", topic, exc)
            else:
                self.records += 1
            out.popleft()
        while len(out) > self.MAX_BACKLOG:
            self.failed += 1
            topic = out.popleft()[0]
            log.error("dropped a cluster record for %s: the producer queue stayed full", topic)
        self._producer.poll(0)

    def stop(self) -> None:
        """On the loop: no more drains after this last one."""
        if self._timer is not None:
            self._timer.cancel()
        self._loop = None
        self.drain()

    def flush(self, timeout: float = 5.0) -> None:
        """Off the loop (it blocks): until librdkafka delivered what it holds, or `timeout`."""
        self._producer.flush(timeout)


@dataclass
class Source:
    """One topic a `Reader` reads: every partition, from its end (the inbox) or its beginning (the
    routes topic); `create` makes it again after a broker restart emptied the log."""

    topic: str
    from_end: bool
    on_records: Callable[[list[tuple[Any, bytes]]], None]
    create: Callable[[], None]
    # Check this topic's high watermarks every `Reader.health_interval_s`: one going down is a new log
    # (the enforcement topic: what `sealguard.topic_reader.WholeTopicReader` does for a single node).
    watch: bool = False


class Reader:
    """Consume several topics by assignment with one consumer on one thread (a node's inbox, the
    routes topic and the enforcement topic: one fetch request for all three); each poll's records of a
    topic go to its `on_records(list[(key, value)])`.

    Fetches ask for 1 byte and wait up to `fetch_wait_ms`. Tansu 0.6 (measured here, docs/cluster.md)
    charges ~0.4 ms of CPU per fetch request, empty or not, so the request rate is what costs: with
    `fetch.min.bytes` 1 and a wait W it answers a busy partition about every W/2 and an idle one
    soon after a record arrives (W = 200: ~30 ms p50), at 0.4–0.9% of a core when idle instead of
    2.2–3.8% at W = 20 (with `fetch.min.bytes` 1 MB it holds every fetch for the whole wait)."""

    def __init__(self, bootstrap: str, sources: list[Source], name: str, *, on_reset: Callable[[], None] | None = None,
                 fetch_wait_ms: int = 100, health_interval_s: float = 2.0) -> None:
        from sealguard.stream import consumer

        self.sources = {src.topic: src for src in sources}
        self.name = name
        self.on_reset = on_reset
        self.received = 0
        self.resets = 0
        self._down = False
        self.health_interval_s = health_interval_s
        self._watched: list[TopicPartition] = []  # the partitions of `watch` sources
        self._high: dict[tuple[str, int], int] = {}  # their highest watermark seen on this log
        # every source: on Tansu a partition several producers write can be skipped in part (routes:
        # every node; an inbox: its peers) — read again from the offset after the last one received
        self.gaps = OffsetGaps(name)
        self._stop = threading.Event()
        self._consumer = consumer(bootstrap, f"{name}-{uuid.uuid4().hex[:8]}",
                                  **{"error_cb": self._on_error, "enable.auto.offset.store": False,
                                     "fetch.wait.max.ms": fetch_wait_ms, "fetch.min.bytes": 1,
                                     "fetch.error.backoff.ms": 50,
                                     "topic.metadata.refresh.interval.ms": 2000})
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def assign(self, timeout: float = 30.0) -> None:
        """Assign every partition of every source; from the end means the high watermark read now —
        which on Tansu may lag the true end by one producer batch, so a few older records may be read
        again (the node ignores records addressed to another incarnation)."""
        deadline = time.monotonic() + timeout
        tps = []
        for topic, src in self.sources.items():
            while True:
                try:
                    tmeta = self._consumer.list_topics(topic, timeout=2).topics.get(topic)
                    if tmeta is not None and tmeta.error is None and tmeta.partitions:
                        break
                except KafkaException as exc:
                    log.debug("%s: no metadata yet: %s", self.name, exc)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"topic {topic} has no partitions after {timeout:.0f}s")
                time.sleep(0.2)
            for p in sorted(tmeta.partitions):
                offset = OFFSET_BEGINNING
                if src.from_end:
                    _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5, cached=False)
                    offset = max(high, 0)
                tps.append(TopicPartition(topic, p, offset))
        self._consumer.assign(tps)
        self._watched = [TopicPartition(tp.topic, tp.partition) for tp in tps if self.sources[tp.topic].watch]
        self._high = {}
        self.gaps.forget()

    def _log_reset(self) -> bool:
        """True when a watched partition's high watermark went down: a new log."""
        return watermark_went_down(self._consumer, self._watched, self._high, self.name)

    def start(self) -> None:
        self._thread.start()

    def _on_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT) and not self._down:
            log.warning("%s: broker unreachable: %s", self.name, err.str())
            self._down = True

    def _run(self) -> None:
        next_check = time.monotonic() + self.health_interval_s
        while not self._stop.is_set():
            if self._down:
                try:
                    for src in self.sources.values():
                        src.create()
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
            if self._watched and time.monotonic() >= next_check:
                next_check = time.monotonic() + self.health_interval_s
                if self._log_reset():
                    self._down = True
                    continue
            try:
                # consume(n, t) waits for n records or t: take the first as soon as it comes, then
                # whatever else is already fetched.
                first = self._consumer.poll(0.1)
                if first is None:
                    continue
                msgs = self.gaps.keep(self._consumer, [first, *self._consumer.consume(2000, 0)])
            except KafkaException as exc:
                log.warning("%s: %s", self.name, exc)
                continue
            batches: dict[str, list[tuple[Any, bytes]]] = {}
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError.OFFSET_OUT_OF_RANGE:
                        log.warning("%s: %s: the log is new; reading it again", self.name, err.str())
                        self._down = True
                    elif err.code() != KafkaError._PARTITION_EOF:
                        log.warning("%s: %s", self.name, err.str())
                    continue
                batches.setdefault(m.topic(), []).append((m.key(), m.value()))
            for topic, batch in batches.items():
                self.received += len(batch)
                self.sources[topic].on_records(batch)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        try:
            self._consumer.close()
        except RuntimeError:
            pass
