"""Registrations per network bucket over ALL partitions, for every detection worker.

Signals are keyed by account, so one network bucket's registrations spread over every partition
of `sg.signals.v1`: a worker holding 1/W of the partitions would see about 1/W of a farm's burst
(`net_registrations_*`, the `farm_burst` rule). Offline (training, evaluation) counts them
globally; so must serving.

* When a worker consumes an `account.registered` on its signals partition, `NetFeed.publish`
  counts it at once in the worker's `GlobalNetBook` and republishes the raw record, keyed by
  `net_bucket`, to the net topic (`Settings.net_topic`, `sg.net.v1`).
* Every worker runs the feed: a thread that assigns itself every partition of the net topic (no
  consumer group, nothing committed) from the beginning of the log, so after a restart the 24 h
  windows are rebuilt, and counts each registration in the same `GlobalNetBook`.
* A registration happens once per account, so the book de-duplicates by account (a rolling
  memory of `retention_ms`): a worker's own registrations read back from the topic, a signal
  replayed after a crash and republished again, or a replay of the whole topic count once.
* `NetFeedView` is what the engines read (`FeatureEngine.net`): the larger of the global count
  and the sum of the held partitions' own `NetBook`s — both are lower bounds of the truth, so
  while the feed catches up after a start (or after a broker reset emptied the topic) a worker
  counts at least what it did without the feed.
* A broker reset (Tansu restarts with an empty log) does not stop the worker: like the relay's
  enforcement consumer, the feed notices that the log shrank or the broker came back and reads
  the new log from the beginning; what the book already holds stays (de-duplicated).

A worker without the feed (`Settings.net_topic` empty) and offline engines are unchanged: they
read their own `NetBook` or a `NetView` over the partitions held.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left, bisect_right, insort
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaException

from detection.features.state import NET_CHANGES, NetBook, books_count, books_counts
from detection.features.windows import WINDOWS
from sealguard.contracts import ContractError, decode
from sealguard.topic_reader import WholeTopicReader

log = logging.getLogger(__name__)

RETENTION_MS = 26 * 3_600_000  # the 24 h window, plus slack for a worker whose event time lags the others
# Per window: (bucket width, span of the buckets before the current one) — the oldest live time as
# of `ts` is `ts - ts % width - before`.
_SPANS = tuple((w.width_ms, (w.buckets - 1) * w.width_ms) for w in WINDOWS)  # NetFeedView.counts unpacks three


class GlobalNetBook:
    """Registration times per network bucket, de-duplicated by account; thread-safe.

    Counting is exact whatever order registrations arrive in (a feed reads partitions in no
    particular order): the window of `w` as of `ts` holds the registrations at or before `ts` in
    buckets `ts // width - n + 1 … ts // width` — the definition of `detection.features.windows`,
    and what the offline replay counts (it sees events in time order)."""

    def __init__(self, retention_ms: int = RETENTION_MS) -> None:
        self.retention_ms = retention_ms
        self.times: dict[str, list[int]] = {}  # net bucket -> sorted registration times
        self.seen: dict[str, int] = {}  # account -> its registration time (the de-duplication memory)
        self.newest = 0
        self.duplicates = 0
        self._lock = threading.Lock()
        self._prune_at = 1024

    def add(self, account: str, bucket: str, ts: int) -> bool:
        """Count `account`'s registration from `bucket` at `ts`; False if it was already counted
        (or is older than the retention)."""
        with self._lock:
            if account in self.seen:
                self.duplicates += 1
                return False
            if ts < self.newest - self.retention_ms:
                return False
            self.seen[account] = ts
            times = self.times.get(bucket)
            if times is None:
                self.times[bucket] = [ts]
            elif ts >= times[-1]:
                times.append(ts)
            else:
                insort(times, ts)
            self.newest = max(self.newest, ts)
            if len(self.seen) >= self._prune_at:
                self._prune()
            return True

    def _prune(self) -> None:
        """Forget what fell out of the retention (called under the lock, amortised)."""
        oldest = self.newest - self.retention_ms
        self.seen = {a: t for a, t in self.seen.items() if t >= oldest}
        for bucket in list(self.times):
            times = self.times[bucket]
            cut = bisect_left(times, oldest)
            if cut >= len(times):
                del self.times[bucket]
            elif cut:
                del times[:cut]
        self._prune_at = max(1024, 2 * len(self.seen))

    def count(self, bucket: str | None, w: int, ts: int) -> float:
        # No lock: under the GIL a reader sees each list before or after a writer's append/insort/del.
        if bucket is None:
            return 0.0
        times = self.times.get(bucket)
        if not times:
            return 0.0
        width, before = _SPANS[w]
        return float(bisect_right(times, ts) - bisect_left(times, ts - ts % width - before))

    def __len__(self) -> int:
        return len(self.seen)


class NetFeedView:
    """What a worker's engines read: max(global count, sum of the held partitions' NetBooks)."""

    def __init__(self, book: GlobalNetBook, local: Sequence[NetBook]) -> None:
        self.book = book
        self.local = local  # the worker's own list, kept current on (re)assignment (then `forget_all`)
        # net bucket -> (each window's bucket index as of the read, NET_CHANGES of the bucket then, the
        # held books' sums): the last `books_counts` of that bucket. Its sums change only when a book
        # registers in it (NET_CHANGES moves) or as its windows expire — and reading the same window
        # index again expires nothing more (`RollingVector.totals`; each window is its own vector), so
        # a window whose index and stamp are the same has the sum `books_counts` would return. Only the
        # last read per bucket is kept: a window read at another index recomputes, from the books as
        # they are (expired since).
        self._local: dict[str, tuple[int, int, int, int, float, float, float]] = {}

    def forget_all(self) -> None:
        """The list of held books changed (the worker's assignment and revocation call this)."""
        self._local.clear()

    def register(self, bucket: str, ts: int) -> None:  # pragma: no cover - writes go to one partition's book
        raise TypeError("register through a partition's NetBook")

    def count(self, bucket: str | None, w: int, ts: int) -> float:
        # Read for every scored row, three times: GlobalNetBook.count inlined.
        if bucket is None:
            return 0.0
        self._local.pop(bucket, None)  # one window read alone (it may expire): `counts` recomputes
        n = 0
        for b in self.local:
            vecs = b.buckets.get(bucket)
            if vecs is not None:
                n += vecs[w].totals(ts)[0]
        times = self.book.times.get(bucket)
        if times:
            width, before = _SPANS[w]
            g = bisect_right(times, ts) - bisect_left(times, ts - ts % width - before)
            if g > n:
                return float(g)
        return float(n)

    def counts(self, bucket: str | None, ts: int) -> list[float]:
        """`count` of every window at once, in WINDOWS order (the fused feature row reads all of them):
        one call, and the bucket looked up once per book."""
        if bucket is None:
            return [0.0, 0.0, 0.0]
        (w0, b0), (w1, b1), (w2, b2) = _SPANS
        k0, k1, k2, stamp = ts // w0, ts // w1, ts // w2, NET_CHANGES.get(bucket, 0)
        got = self._local.get(bucket)
        if got is None or got[3] != stamp:
            n0, n1, n2 = books_counts(self.local, bucket, ts)
            self._local[bucket] = (k0, k1, k2, stamp, n0, n1, n2)
        elif got[0] == k0 and got[1] == k1 and got[2] == k2:
            n0, n1, n2 = got[4], got[5], got[6]  # 45% of the rows of the bench's stream
        else:  # each window on its own: mostly only the minute's 5 s bucket moved
            n0 = got[4] if got[0] == k0 else books_count(self.local, bucket, 0, ts)
            n1 = got[5] if got[1] == k1 else books_count(self.local, bucket, 1, ts)
            n2 = got[6] if got[2] == k2 else books_count(self.local, bucket, 2, ts)
            self._local[bucket] = (k0, k1, k2, stamp, n0, n1, n2)
        times = self.book.times.get(bucket)
        if times:
            hi = bisect_right(times, ts)
            g = hi - bisect_left(times, ts - ts % w0 - b0)
            n0 = max(n0, g)
            g = hi - bisect_left(times, ts - ts % w1 - b1)
            n1 = max(n1, g)
            g = hi - bisect_left(times, ts - ts % w2 - b2)
            n2 = max(n2, g)
        return [float(n0), float(n1), float(n2)]


class NetFeed(WholeTopicReader):
    """Republishes the registrations this worker consumes; reads everyone's back on a thread."""

    def __init__(self, bootstrap: str, topic: str, local: Sequence[NetBook], producer: Any, *,
                 partitions: int = 4, registry: Any = None, health_interval_s: float = 2.0,
                 retention_ms: int = RETENTION_MS) -> None:
        self._bootstrap, self._npartitions, self._retention_ms = bootstrap, partitions, retention_ms
        self.topic = topic
        self._create()
        super().__init__(bootstrap, topic, name="net-feed", health_interval_s=health_interval_s)
        self.producer = producer
        self.book = GlobalNetBook(retention_ms)
        self.view = NetFeedView(self.book, local)
        self.received = 0  # records read from the net topic
        self.rejected = 0
        self._gauge = self._dups = None
        if registry is not None:
            from prometheus_client import Counter, Gauge

            self._gauge = Gauge("sealguard_detect_net_registrations",
                                "Registrations counted in the global net book (distinct accounts, last 26 h)",
                                registry=registry)
            self._dups = Counter("sealguard_detect_net_duplicates", "Registrations seen again and not counted",
                                 registry=registry)

    @property
    def resets(self) -> int:
        return self.restarts

    @classmethod
    def for_worker(cls, settings: Any, local: Sequence[NetBook], producer: Any, registry: Any = None) -> NetFeed | None:
        """The feed of a worker, started; None when `settings.net_topic` is empty (per-partition counts).

        The net topic mirrors one signals topic: a deployment (or a test, a bench) that names its own
        signals topic but leaves `net_topic` at its default gets `<signals topic>.net`, so two
        streams sharing a broker never count each other's registrations."""
        topic = getattr(settings, "net_topic", "")
        if not topic or not settings.kafka:
            return None
        fields = type(settings).model_fields
        if topic == fields["net_topic"].default and settings.signals_topic != fields["signals_topic"].default:
            topic = f"{settings.signals_topic}.net"
        feed = cls(settings.kafka, topic, local, producer, partitions=settings.partitions, registry=registry)
        feed.start()
        return feed

    # -- the worker's side (main thread) ---------------------------------------------------
    def publish(self, ev: Any, raw: bytes) -> None:
        """An `account.registered` this worker consumed: count it now, and tell the other workers."""
        self._count(ev.account, ev.net_bucket, ev.ts)
        self.producer.produce(self.topic, key=ev.net_bucket, value=raw)

    def _count(self, account: str, bucket: str, ts: int) -> None:
        if self.book.add(account, bucket, ts):
            if self._gauge is not None:
                self._gauge.set(len(self.book))
        elif self._dups is not None:
            self._dups.inc()

    # -- the feed (the reader's thread) ------------------------------------------------------
    def on_missing_topic(self) -> None:
        self._create()

    def _create(self) -> None:
        """Create the topic if it is missing, keeping records for the retention (the feed re-reads
        it whole at every start: a day of registrations, not the broker's default week). Also
        after a broker reset took it (the embedded broker re-creates only `Settings.topics`); the
        worker's republished registrations wait for it."""
        from sealguard.stream import StreamError, ensure_topics

        try:
            ensure_topics(self._bootstrap, [self.topic], self._npartitions,
                          {"retention.ms": str(self._retention_ms)})
        except (KafkaException, StreamError) as exc:
            log.warning("net feed: could not create %s yet (tried again while it is missing): %s", self.topic, exc)

    def on_records(self, msgs: list[Any]) -> None:
        for m in msgs:
            try:
                ev = decode(m.value())
                if ev.type != "account.registered":
                    raise ContractError(f"a {ev.type} record, not account.registered")
            except ContractError as exc:
                self.rejected += 1
                log.error("net feed: skipped a record at %s[%d]@%d: %s", self.topic, m.partition(), m.offset(), exc)
                continue
            self.received += 1
            self._count(ev.account, ev.net_bucket, ev.ts)  # type: ignore[attr-defined]
