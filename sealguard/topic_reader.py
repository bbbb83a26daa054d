"""Read one whole topic, every partition from the beginning, on a thread of its own.

For state every process must hold in full rather than split by a consumer group: the relay's
enforcement decisions (every node applies every ban) and detection's registrations per network
bucket (every worker counts every bucket). No group, nothing committed: the reader *assigns*
itself all partitions at `OFFSET_BEGINNING`, so a restart rebuilds the state from the log.

The embedded broker keeps its log in memory, so the log can be replaced under a reader. The reader
starts over from the beginning whenever the log is not the one it was reading — the broker came
back after being unreachable, a fetch is out of range, the partitions changed, or a partition's
high watermark went down (Tansu answers a fetch past a new, shorter log with nothing rather than
OFFSET_OUT_OF_RANGE, so the reader looks every `health_interval_s`) — and tells its owner through
`on_restart(why)`. Replays must therefore be harmless to the owner: both owners are idempotent.

Gaps (`OffsetGaps`): on the embedded Tansu, a reader of a partition that several producers write at
once sometimes receives a later batch before an earlier one is readable, and moves past the earlier
one — the log holds those records at the offsets skipped (docs/cluster.md, "Readers and the embedded
broker's gaps"). So when a partition's next record is not at the offset after the last one, the
reader seeks back once and reads from there again; a gap that is still there after that one re-read
is accepted (on Apache Kafka a compacted topic, or a transaction's marker, leaves real gaps).

Subclasses implement `on_records` (a batch of messages without errors, on the reader's thread) and
may implement `on_restart` and `on_missing_topic`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

log = logging.getLogger(__name__)


def watermark_went_down(consumer: Any, partitions: list[TopicPartition], seen: dict[tuple[str, int], int],
                        name: str) -> bool:
    """True when a partition's high watermark is below the highest `seen` for it (updated as it goes):
    watermarks never decrease on one log, so a lower one is a new log. (Not "ends before our
    position": Tansu's reported watermark lags the true end by up to a producer batch, and stays
    behind while nothing more is produced — that test restarted a reader every check.) False when
    the broker cannot answer now."""
    try:
        for tp in partitions:
            _, high = consumer.get_watermark_offsets(tp, timeout=2, cached=False)
            key = (tp.topic, tp.partition)
            before = seen.get(key, -1)
            if high < before:
                log.warning("%s: %s[%d] now ends at %d, below the %d seen before: a new log", name, tp.topic,
                            tp.partition, high, before)
                return True
            seen[key] = high
    except KafkaException as exc:
        log.debug("%s: could not check the log: %s", name, exc)
    return False


class OffsetGaps:
    """Finds a jump in the offsets a consumer receives for a partition and seeks back over it once
    (see the module's docstring). `keep(consumer, msgs)` returns the messages to hand on: those of a
    partition after a gap are dropped, the consumer having been told to read them again. Offsets are
    followed from a partition's first record received, so the start of a log (above 0 where
    retention dropped records) is never taken for a gap. Call `forget()` after a (re-)assignment."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seeks = 0  # gaps read again
        self.accepted = 0  # gaps still there after the re-read, taken as real
        self._next: dict[tuple[str, int], int] = {}  # (topic, partition) -> the offset expected next
        self._retried: dict[tuple[str, int], int] = {}  # (topic, partition) -> the offset last sought back to

    def forget(self) -> None:
        self._next.clear()
        self._retried.clear()

    def expect(self, next_offsets: dict[tuple[str, int], int]) -> None:
        """For a reader that keeps its own offsets (e.g. checkpointed) and calls `keep` only now and then:
        the offsets each (topic, partition) must go on from, in place of those `keep` last saw."""
        self._next = dict(next_offsets)

    def keep(self, consumer: Any, msgs: list[Any]) -> list[Any]:
        out: list[Any] = []
        sought: set[tuple[str, int]] = set()
        nxt = self._next
        for m in msgs:
            if m.error() is not None:
                out.append(m)
                continue
            key = (m.topic(), m.partition())
            if key in sought:
                continue  # to be read again after the seek
            offset = m.offset()
            expected = nxt.get(key)
            if expected is not None and offset > expected:
                if self._retried.get(key) == expected:
                    self.accepted += 1
                    log.info("%s: %s[%d] has no records %d..%d after a re-read: taken as a real gap", self.name,
                             key[0], key[1], expected, offset - 1)
                else:
                    try:
                        consumer.seek(TopicPartition(key[0], key[1], expected))
                    except KafkaException as exc:  # not assigned any more, or the broker gone: accept it
                        log.warning("%s: could not read %s[%d] again from %d: %s", self.name, key[0], key[1],
                                    expected, exc)
                    else:
                        self.seeks += 1
                        self._retried[key] = expected
                        sought.add(key)
                        log.warning("%s: %s[%d] jumped from offset %d to %d: reading from %d again", self.name,
                                    key[0], key[1], expected, offset, expected)
                        continue
            nxt[key] = offset + 1
            out.append(m)
        return out


class WholeTopicReader:
    def __init__(self, bootstrap: str, topic: str, *, name: str, health_interval_s: float = 2.0,
                 fetch_wait_ms: int = 20) -> None:
        from sealguard.stream import consumer

        self.topic = topic
        self.name = name  # for log lines and the thread
        self.health_interval_s = health_interval_s
        self.restarts = 0  # times the reader started over on a new log
        self._down = False
        self._assigned: list[int] = []
        self._high: dict[tuple[str, int], int] = {}  # (topic, partition) -> its highest watermark seen on this log
        self.gaps = OffsetGaps(name)
        self._stop = threading.Event()
        # assign(), never subscribe(): the group id is required by librdkafka and never joined.
        self._consumer = consumer(bootstrap, f"{name}-unjoined", **{
            "error_cb": self._on_error, "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
            "topic.metadata.refresh.interval.ms": 2000, "fetch.wait.max.ms": fetch_wait_ms})
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # -- the owner's hooks ----------------------------------------------------------------------
    def on_records(self, msgs: list[Any]) -> None:
        raise NotImplementedError

    def on_restart(self, why: str) -> None:
        """Called after the reader re-assigned every partition from the beginning of a new log."""

    def on_missing_topic(self) -> None:
        """Called while the topic does not exist (the reader retries)."""

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        try:
            self._consumer.close()
        except RuntimeError:
            pass

    # -- the reader's thread ---------------------------------------------------------------------------
    def _on_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT) and not self._down:
            log.warning("%s: broker unreachable: %s", self.name, err.str())
            self._down = True

    def _partitions(self) -> list[int] | None:
        try:
            meta = self._consumer.list_topics(self.topic, timeout=2)
        except KafkaException as exc:
            log.debug("%s: no metadata yet: %s", self.name, exc)
            return None
        tmeta = meta.topics.get(self.topic)
        if tmeta is None or tmeta.error is not None or not tmeta.partitions:
            self.on_missing_topic()
            return None
        return sorted(tmeta.partitions)

    def _assign(self) -> bool:
        """(Re)assign every partition from the beginning of the log."""
        partitions = self._partitions()
        if partitions is None:
            return False
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
        self._assigned = partitions
        self._high = {}
        self.gaps.forget()
        log.info("%s: reading %d partitions of %s from the beginning", self.name, len(partitions), self.topic)
        return True

    def _log_reset(self) -> bool:
        """True when the log is not the one we were reading: the partitions changed, or a partition's
        high watermark went down (`watermark_went_down`)."""
        partitions = self._partitions()
        if partitions is None:
            return False
        if partitions != self._assigned:
            log.warning("%s: %s now has partitions %s (was %s)", self.name, self.topic, partitions, self._assigned)
            return True
        return watermark_went_down(self._consumer, [TopicPartition(self.topic, p) for p in partitions], self._high,
                                   self.name)

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:
            log.exception("%s stopped", self.name)

    def _loop(self) -> None:
        assigned = False
        restart_why: str | None = None
        next_check = time.monotonic() + self.health_interval_s
        while not self._stop.is_set():
            if self._down and assigned:
                assigned, restart_why = False, "broker back"  # when it answers again the log may be new
            if not assigned:
                if not self._assign():
                    self._stop.wait(0.5)
                    continue
                assigned, self._down = True, False
                if restart_why is not None:
                    self.restarts += 1
                    log.info("%s: %s: read %s again from the beginning", self.name, restart_why, self.topic)
                    self.on_restart(restart_why)
                    restart_why = None
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + self.health_interval_s
                if self._log_reset():
                    assigned, restart_why = False, "log reset"
                    continue
            good = []
            for m in self.gaps.keep(self._consumer, self._consumer.consume(num_messages=1000, timeout=0.2)):
                err = m.error()
                if err is None:
                    good.append(m)
                elif err.code() == KafkaError.OFFSET_OUT_OF_RANGE:
                    assigned, restart_why = False, "offsets out of range"
                elif err.code() != KafkaError._PARTITION_EOF:
                    log.warning("%s: %s", self.name, err.str())
            if good:
                self.on_records(good)
