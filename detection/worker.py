"""The detection worker: a consumer group over the signals topic and its re-keyed inbound twin.

Per batch: decode (`decode_batch`: one JSON parse, columns checked against the contract); then per
record, in event-time order: feature engine (outbound door for `sg.signals.v1`, inbound door for
`sg.signals.inbound.v1`) → re-key (a signal with a counterpart is republished, raw bytes as they
came, to the inbound topic keyed by that counterpart, so the counterpart's partition sees the
replies, blocks and reports it received) → the ScoreSchedule decides whether the account is
scored now. Per batch: one model call for every row due, rules, policy, then the sink.

State is per partition number (a `Shard`): the range assignor gives a worker partition p of both
topics, and both topics key by account, so an account's outbound and inbound signals meet in one
shard. Shards are checkpointed with their offsets in one transaction (detection.checkpoint); on
assignment a shard resumes from its checkpoint; a broker reset (offsets out of range) resumes at
earliest on the new log (`auto.offset.reset`).

A malformed record is counted, logged with its topic/partition/offset and what was wrong, and
skipped; it never stops the worker.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import logging
import os
import pickle
import signal
import threading
import time
import warnings
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain, compress
from operator import itemgetter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from detection.checkpoint import CheckpointFenced, Shard, load_offsets, load_shard, save_shards
from detection.features import NetView, ScoreSchedule, feature_row
from detection.model import ModelSlots
from detection.netfeed import NetFeed
from detection.policy import Policy, ban_scores
from detection.rules import RuleBook, rule_hits
from detection.sink import ScoreRecord, Sink
from sealguard.contracts import ContractError, now_ms
from sealguard.contracts.batch import decode_batch
from sealguard.settings import Settings
from sealguard.storage import Database
from sealguard.topic_reader import OffsetGaps

log = logging.getLogger(__name__)

_TS = itemgetter("ts")
CHECKPOINT_NICE = 10  # a forked checkpoint's niceness: it pickles for seconds while the worker decides
SOURCE_HEADER = "sg-src"  # on inbound copies: b"<signals partition>:<offset>:<its checkpointed floor>"


@dataclass
class WorkerConfig:
    group: str = "sg-detect"
    batch: int = 15_000  # records per poll: per-poll costs (decode columns, LightGBM call, decisions'
    # transaction) spread over more records — 42,300 against 39,200 signals per CPU-second for 5,000
    # (back to back, the 300k backlog); live, a poll holds what 10 ms brought (hundreds)
    poll_timeout_s: float = 0.01  # consume() waits this long to fill a batch; short keeps latency low
    checkpoint_interval_s: float = 10.0  # at least this often ...
    checkpoint_max_share: float = 0.05  # ... unless checkpoints would then take more than this share of the time,
    checkpoint_max_interval_s: float = 300.0  # ... but never less often than this (bounds replay after a crash)
    checkpoint_fork: bool = True  # periodic checkpoints pickle and write in a forked child (POSIX, file/server DB)
    max_poll_interval_ms: int = 15_000
    verify_timeout_s: float = 3.0  # how long a resume waits to read back the last checkpointed record
    align_slack_ms: int = 5_000  # signals partitions may drift this far apart in event time (see _align)
    refresh_interval_s: float = 2.0  # rules and model pointers are re-read this often
    store_interval_ms: int = 600_000  # a score is stored per account at most this often ...
    store_delta: float = 0.1  # ... unless it moved this much (or a verdict was made)
    top_contributions: int = 5
    explain_above: float = 0.2  # stored scores at or above this carry their top contributions (pred_contrib
    # costs ~10x a prediction; low scores explain nothing a reviewer needs)
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 0  # 0 → a free port; None → no /metrics server
    rules_path: Path | None = None  # None → detection/rules/default.yaml
    model_dir: Path | None = None  # a fixed model; None → follow champion/challenger pointers
    policy: Policy = field(default_factory=Policy)
    schedule: ScoreSchedule = field(default_factory=ScoreSchedule)


# The counterpart of each signal type that has one (`sealguard.contracts.counterpart_of` for a
# decoded record; tests/detection/test_worker.py checks they agree).
_COUNTERPART: dict[str, str] = {"message.sent": "recipient", "contact.blocked": "blocked", "report.filed": "reported",
                                "group.created": "member", "group.member_added": "member",
                                "group.member_removed": "member"}


def last_per_account(records: list[tuple[int, str, int, float, bool]], pending: Sequence[tuple[Any, ...]],
                     keep_above: float = 0.5) -> list[tuple[int, str, int, float, bool]]:
    """The scores worth storing of one poll, one per account — its last — plus its highest when that
    is another and at least `keep_above` (the policy's review threshold): `pending[i][0]` is the
    account of record i's row. A backlog poll scores an active account several times within minutes
    of event time; the history keeps its latest, and whether an account's highest stored score
    crosses the review or ban threshold stays what it was (`models.shadow.agreement` counts the
    accounts whose highest score crosses the ban threshold). The throttle (`Shard.stored`) is
    unchanged: it followed every row worth storing, the last of them included."""
    if len(records) < 2:
        return records
    last: dict[Any, int] = {}
    top: dict[Any, int] = {}
    for k, r in enumerate(records):
        account = pending[r[0]][0]
        last[account] = k
        t = top.get(account)
        if t is None or r[3] > records[t][3]:
            top[account] = k
    if len(last) == len(records):
        return records
    keep = set(last.values())
    keep.update(k for k in top.values() if records[k][3] >= keep_above)
    return [records[k] for k in sorted(keep)]


def let_go(shard: Shard) -> None:
    """Free a shard the worker drops for good. Once `Worker.tune_gc` ran, the state is frozen out of
    the collector's sight poll after poll, so anything only the collector can free would stay: the
    engine refers to itself (its dispatch tables hold its own bound methods). Clearing its attributes
    breaks that cycle; the state it held has none (tests/detection/test_worker.py), so reference
    counting frees it."""
    vars(shard.engine).clear()


def _die_with_parent(parent: int) -> None:
    """In a forked child: SIGKILL when the parent dies (Linux), and exit now if it already has."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


class Metrics:
    """Prometheus metrics on the worker's own registry (no module singletons)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.records = Counter("sealguard_detect_records", "Records consumed", ["topic"], registry=r)
        self.bad = Counter("sealguard_detect_bad_records", "Records skipped as malformed", registry=r)
        self.rekeyed = Counter("sealguard_detect_rekeyed", "Signals republished to the inbound topic", registry=r)
        self.scored = Counter("sealguard_detect_scored", "Accounts scored", ["model"], registry=r)
        self.decisions = Counter("sealguard_detect_decisions", "Automatic decisions", ["action"], registry=r)
        self.cases = Counter("sealguard_detect_cases", "Review cases opened", registry=r)
        self.lag = Gauge("sealguard_detect_lag", "Records behind the (approximate) end", ["topic", "partition"],
                         registry=r)
        self.score_latency = Histogram("sealguard_detect_score_latency_seconds", "Signal time to score",
                                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=r)
        self.checkpoint_seconds = Histogram("sealguard_detect_checkpoint_seconds", "Checkpoint duration",
                                            registry=r)
        self.accounts = Gauge("sealguard_detect_accounts", "Accounts held in state", registry=r)


class Worker:
    """One detection worker process. `run(stop)` loops until `stop` is set; `step()` is one batch."""

    def __init__(self, settings: Settings, config: WorkerConfig | None = None, db: Database | None = None) -> None:
        from moderation.decisions import KafkaEnforcementPublisher
        from sealguard.stream import consumer, producer

        if not settings.kafka:
            raise ValueError("the detection worker needs a broker (settings.kafka)")
        self.settings = settings
        self.cfg = config or WorkerConfig()
        self.db = db or Database(settings.database_url)
        self.rules = RuleBook(self.cfg.rules_path)
        self.models = ModelSlots(settings.state_dir, self.cfg.model_dir)
        self.models.refresh()
        self.policy = self.cfg.policy
        self.schedule = self.cfg.schedule
        self.metrics = Metrics()
        self.signals_topic, self.inbound_topic = settings.signals_topic, settings.inbound_topic
        self.producer = producer(settings.kafka)
        self._closed = False
        self.sink = Sink(self.db, KafkaEnforcementPublisher(settings.kafka, settings.enforcement_topic),
                         self.producer, settings.scores_topic)
        # A longer poll interval than the kernel's default: a batch plus a checkpoint of a large
        # shard must fit in it under load (Tansu's group joins then take as long; tests shorten it).
        self.consumer = consumer(settings.kafka, self.cfg.group, **{
            "partition.assignment.strategy": "range", "max.poll.interval.ms": self.cfg.max_poll_interval_ms,
            "session.timeout.ms": min(10_000, self.cfg.max_poll_interval_ms)})
        self.shards: dict[int, Shard] = {}
        self._parked: dict[int, Shard] = {}  # revoked shards kept in case they come back unchanged
        meta = self.consumer.list_topics(self.signals_topic, timeout=10).topics.get(self.signals_topic)
        self._nparts = len(meta.partitions) if meta is not None and meta.partitions else 0
        self._local_ok = self._nparts > 0
        self._check_partitioner = True
        self._checked = 0
        self._part_ts: dict[int, int] = {}
        self._part_seen: dict[int, float] = {}
        self._paused: set[int] = set()
        self.n_local = 0  # counterpart sides applied in-process (no round trip through the inbound topic)
        self._partition_of: dict[str, int] = {}  # account -> its partition (CRC32 of the key), remembered
        self._books: list[Any] = []
        # net_* features count every partition's registrations (detection/netfeed.py); without the
        # feed (Settings.net_topic empty) only the partitions this worker holds.
        self.netfeed = NetFeed.for_worker(settings, self._books, self.producer, self.metrics.registry)
        self.net: Any = self.netfeed.view if self.netfeed is not None else NetView(self._books)
        self.consumer.subscribe([self.signals_topic, self.inbound_topic], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_revoke)
        self.metrics_url: str | None = None
        self._server: Any = None
        if self.cfg.metrics_port is not None:
            from sealguard.net import free_port

            port = self.cfg.metrics_port or free_port(self.cfg.metrics_host)
            self._server, _ = start_http_server(port, self.cfg.metrics_host, registry=self.metrics.registry)
            self.metrics_url = f"http://{self.cfg.metrics_host}:{port}/metrics"
        self.consumed = 0  # records of both topics, malformed ones included
        self.checkpoints = 0  # checkpoints written, and the seconds they took (bench)
        self.checkpoint_s = 0.0
        self.n_signals = 0
        self.n_inbound = 0
        self.bad = 0
        self.applied: dict[str, int] = {}  # account -> ts of the relay's latest enforcement.applied
        self.score_latencies_ms: deque[int] = deque(maxlen=500_000)
        self._last_checkpoint = time.monotonic()
        self._checkpoint_every = self.cfg.checkpoint_interval_s  # grows with the state (checkpoint_max_share)
        self._saver: tuple[int, int, list[Shard], float] | None = None  # a forked checkpoint: pid, pipe, shards, t0
        # Forking needs POSIX, and a database another process can open (not an in-memory SQLite).
        self._can_fork = (self.cfg.checkpoint_fork and hasattr(os, "fork")
                          and not self.db.url.startswith(("sqlite://:memory:", "sqlite:///:memory:"))
                          and self.db.url not in ("sqlite://", "sqlite:///"))
        self._last_refresh = time.monotonic()
        self._bad_logged = 0
        self._freeze_applied = False  # set by tune_gc
        self._gaps = OffsetGaps("detect")  # partitions the broker skipped part of, read again (_skipped_some)
        self.assigned = threading.Event()

    # -- assignment ------------------------------------------------------------------------
    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            shard = self.shards.get(tp.partition)
            if shard is None:
                shard = self._parked.pop(tp.partition, None)
                if shard is not None and not self._still_ours(shard):
                    let_go(shard)
                    shard = None
                if shard is not None:
                    self.shards[tp.partition] = shard
            if shard is None:
                shard = self.shards[tp.partition] = load_shard(
                    self.db, self.cfg.group, self.signals_topic, [self.signals_topic, self.inbound_topic], tp.partition)
                shard.engine.net = self.net
                log.info("partition %d: resumed %d accounts, offsets %s", tp.partition, len(shard.engine.accounts),
                         shard.offsets or "from the beginning")
                self._verify_log(shard)
            tp.offset = shard.offsets.get(tp.topic, OFFSET_BEGINNING)
        self._books[:] = [s.engine.book for s in self.shards.values()]
        self._forget_books()
        self._gaps.forget()
        self._paused.clear()
        self._part_ts.clear()
        consumer.assign(partitions)
        self.assigned.set()
        if self._freeze_applied:
            gc.collect(0)  # the cycles loading left (SQLAlchemy), before the next freeze (see tune_gc)

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Checkpoint what is being taken away; keep it parked in memory, since with eager
        rebalancing most partitions come straight back and reloading them costs seconds."""
        gone = {tp.partition for tp in partitions}
        # librdkafka keeps a partition paused across a rebalance (librdkafka#1849) and _on_assign
        # forgets what _align paused: resume now, while still assigned, or it never reads again.
        stale = [TopicPartition(self.signals_topic, p) for p in sorted(gone & self._paused)]
        if stale:
            try:
                consumer.resume(stale)
            except Exception as exc:  # noqa: BLE001 - a lost assignment cannot be resumed, nor needs it
                log.warning("could not resume %s on revocation: %s", stale, exc)
            self._paused.difference_update(gone)
        if gone:
            self.checkpoint(all_dirty=True)
        for p in gone:
            shard = self.shards.pop(p, None)
            if shard is None:
                continue
            old = self._parked.pop(p, None)
            if old is not None and old is not shard:
                let_go(old)
            if shard.dirty:
                let_go(shard)
            else:
                self._parked[p] = shard
        self._books[:] = [s.engine.book for s in self.shards.values()]
        self._forget_books()
        if self._freeze_applied:
            gc.collect(0)  # the cycles checkpointing left, before the next freeze (see tune_gc)

    def _forget_books(self) -> None:
        """The held NetBooks changed: the feed's view forgets the sums it remembers (NetFeedView)."""
        if self.netfeed is not None:
            self.netfeed.view.forget_all()

    def _verify_log(self, shard: Shard) -> None:
        """After a broker reset the checkpointed offsets point into a log that no longer exists.
        Apache Kafka answers OFFSET_OUT_OF_RANGE (→ `auto.offset.reset` = earliest); Tansu just
        returns nothing. So read back the record before each checkpointed offset and compare its
        fingerprint: absent or different means a new log, consumed from its earliest offset."""
        from confluent_kafka import Consumer

        for topic, offset in list(shard.offsets.items()):
            mark = shard.marks.get(topic)
            if offset <= 0 or mark is None:
                continue
            probe = Consumer({"bootstrap.servers": self.settings.kafka, "group.id": f"{self.cfg.group}-probe",
                              "enable.auto.commit": False, "auto.offset.reset": "error"})
            try:
                probe.assign([TopicPartition(topic, shard.partition, offset - 1)])
                same = False
                deadline = time.monotonic() + self.cfg.verify_timeout_s
                while time.monotonic() < deadline:
                    msgs = probe.consume(num_messages=1, timeout=0.2)
                    if msgs:
                        m = msgs[0]
                        same = m.error() is None and m.offset() == offset - 1 and zlib.crc32(m.value()) == mark
                        break
            finally:
                probe.close()
            if not same:
                log.warning("partition %d of %s: the log before offset %d is gone or different (broker reset); "
                            "resuming at its earliest offset with the checkpointed state", shard.partition, topic,
                            offset)
                del shard.offsets[topic]
                shard.marks.pop(topic, None)
                shard.applied.clear()  # source offsets of the old log mean nothing on the new one

    def _still_ours(self, shard: Shard) -> bool:
        """A parked shard may be reused only if nobody checkpointed the partition since we did."""
        saved = load_offsets(self.db, self.cfg.group, [self.signals_topic, self.inbound_topic], shard.partition)
        return saved == shard.offsets

    # -- the loop --------------------------------------------------------------------------
    def tune_gc(self) -> None:
        """Millions of small long-lived objects (account state) make CPython's default cyclic-GC
        thresholds rescan them constantly (a third of the worker's CPU at 1M signals, measured);
        feature state has no cycles worth collecting often. `run()` calls it; so must anything
        that drives `step()` itself for long.

        From then on each `step` freezes what applying its records left alive (`gc.freeze()` right
        after the record loop): the state they grew is never scanned — scanning it once, in
        generation 0, cost 0.69 s of 18.6 s CPU for the bench's 1M signals (9 collections). It
        collects generation 0 at its end (and after a rebalance), since the cycles a step leaves
        come from scoring and writing (LightGBM's ctypes buffers, SQLAlchemy statements), after the
        freeze: over those 1M signals a full collection afterwards found 9 unreachable objects. A
        shard dropped for good is freed by `let_go`."""
        gc.set_threshold(100_000, 50, 1000)
        gc.freeze()
        self._freeze_applied = True

    def run(self, stop: threading.Event) -> None:
        self.tune_gc()
        try:
            while not stop.is_set():
                self.step()
        finally:
            self.close()

    def step(self) -> int:
        """Consume one batch, score what is due, act; checkpoint and refresh when their time comes."""
        msgs = self.consumer.consume(num_messages=self.cfg.batch, timeout=self.cfg.poll_timeout_s)
        n = self._process(msgs) if msgs else 0
        now = time.monotonic()
        if now - self._last_refresh >= self.cfg.refresh_interval_s:
            self._last_refresh = now
            self.rules.refresh()
            self.models.refresh()
            self._update_lag()
            self.sink.flush_scores()
        if now - self._last_checkpoint >= self._checkpoint_every:
            self.checkpoint(background=True)
        elif self._saver is not None:
            self._reap(block=False)
        if self._freeze_applied:
            gc.collect(0)  # this step's cycles, before the next step's freeze (see tune_gc)
        return n

    def _skipped_some(self, kept: list[Any], tops: list[str], parts: list[int], where: list[Shard]) -> bool:
        """Whether a partition's records in this poll do not run on, offset by offset, from the one after
        the last taken (the shard's next offset): on the embedded Tansu a consumer of a partition that
        several producers write sometimes moves past records the log holds (sealguard/topic_reader.py,
        `OffsetGaps`). Checked per partition, not per record: its first offset and its count. When so,
        `OffsetGaps` gets every partition's next offset, and reads a gap again once."""
        keys = list(zip(tops, parts))
        last = dict(zip(keys, range(len(keys))))
        first = dict(zip(reversed(keys), range(len(keys) - 1, -1, -1)))
        count = collections.Counter(keys)
        expected = {key: where[i].offsets.get(key[0]) for key, i in first.items()}
        for key, i in first.items():
            lo, want = kept[i].offset(), expected[key]
            if (want is not None and lo > want) or kept[last[key]].offset() - lo + 1 != count[key]:
                self._gaps.expect({k: v for k, v in expected.items() if v is not None})
                return True
        return False

    def _process(self, msgs: list[Any]) -> int:
        """Decode the whole batch at once (`decode_batch`: one JSON parse, columns validated against
        the contract), then apply it in event-time order (partitions arrive in chunks; a reply must
        come after the message it answers, as in `build_feature_table`) through the engine's record
        doors — no event object per record."""
        signals = self.signals_topic
        shards = self.shards
        kept: list[Any] = []  # the records of assigned partitions, in batch order
        where: list[Shard] = []
        raws: list[Any] = []
        tops: list[str] = []
        parts: list[int] = []
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer: %s", err)
                continue
            p = m.partition()
            shard = shards.get(p)
            if shard is None:
                continue
            kept.append(m)
            where.append(shard)
            raws.append(m.value())
            tops.append(m.topic())
            parts.append(p)
        if self._skipped_some(kept, tops, parts, where):  # rare: read again what the broker skipped
            kept = self._gaps.keep(self.consumer, kept)
            where = [shards[m.partition()] for m in kept]
            raws = [m.value() for m in kept]
            tops = [m.topic() for m in kept]
            parts = [m.partition() for m in kept]
        # Offsets and the last record of each (topic, partition), malformed ones included (skipped, not lost).
        for (topic, _), i in dict(zip(zip(tops, parts), range(len(kept)))).items():
            shard = where[i]
            shard.offsets[topic] = kept[i].offset() + 1
            shard.last[topic] = raws[i]
            shard.dirty = True
        records = decode_batch(raws)
        if all(type(r) is dict for r in records):  # the common case: every record accepted
            good: Any = range(len(records))
            recs: list[dict[str, Any]] = records  # type: ignore[assignment]
            topics = tops
        else:
            good = []
            for i, r in enumerate(records):
                if type(r) is dict:
                    good.append(i)
                else:
                    m = kept[i]
                    self._bad(m.topic(), m, r if isinstance(r, ContractError) else ContractError(str(r)))
            recs = [records[i] for i in good]  # type: ignore[misc]
            topics = [tops[i] for i in good]
        is_sig = list(map(signals.__eq__, topics))
        n_sig = sum(is_sig)
        n_in = len(recs) - n_sig
        stamps = list(map(_TS, recs))
        # signals partition -> event time of its last record in this batch
        ahead: dict[int, int] = dict(zip(compress([parts[i] for i in good], is_sig), compress(stamps, is_sig)))
        if self._check_partitioner:
            for i, sig in zip(good, is_sig):
                m = kept[i]
                if sig and m.key() is not None:
                    self._verify_partitioner(m)
                    if not self._check_partitioner:
                        break
        order = sorted(range(len(recs)), key=stamps.__getitem__)  # stable: equal times keep their batch order
        pending: list[tuple[str, Any, Shard, int, list[float]]] = []
        due, mark = self.schedule.due, self.schedule.mark
        for k in order:
            i = good[k]
            r = recs[k]
            shard = where[i]
            try:
                if is_sig[k]:
                    account = shard.engine.outbound_record(r)
                    if account is not None:  # Worker._due, inlined: once per send
                        st = shard.engine.accounts[account]
                        if st.action != "ban" and due(st, stamps[k], received=False):
                            mark(st, stamps[k])
                            pending.append((account, st, shard, stamps[k], feature_row(st, shard.engine, stamps[k])))
                    t = r["type"]
                    field_ = _COUNTERPART.get(t)
                    if field_ is not None:
                        other = r.get(field_)
                        if other is not None:
                            self._rekey(other, r, raws[i], pending, shard, kept[i].offset())
                    elif t == "enforcement.applied":
                        self._on_applied(shard, r)
                    elif t == "account.registered" and self.netfeed is not None:
                        self.netfeed.publish(SimpleNamespace(**r), raws[i])
                elif self._first_time(shard, kept[i]):
                    account = shard.engine.inbound_record(r)
                    if account is not None:
                        self._due(shard, account, r["ts"], True, pending)
            except (ValueError, TypeError, AttributeError, KeyError) as exc:
                m = kept[i]
                self._bad(m.topic(), m, exc)
        if self._freeze_applied:
            gc.freeze()  # the state the records grew: never scanned (see tune_gc)
        if ahead:
            self._align(ahead)
        self.producer.poll(0)
        self.consumed += len(msgs)
        self.n_signals += n_sig
        self.n_inbound += n_in
        if n_sig:
            self.metrics.records.labels(signals).inc(n_sig)
        if n_in:
            self.metrics.records.labels(self.inbound_topic).inc(n_in)
        if pending:
            self._score(pending)
        return len(msgs)

    def _align(self, ahead: dict[int, int]) -> None:
        """Keep the signals partitions close in event time while a backlog is caught up.

        A reply only counts as one if the message it answers (often on another partition) was
        seen first; live, partitions are milliseconds apart, but catching up a backlog they can
        drift by hours. A partition more than `align_slack_ms` ahead of the slowest partition that
        still delivers records is paused until that one catches up (idle partitions do not hold
        anyone back)."""
        now = time.monotonic()
        for p, ts in ahead.items():
            self._part_ts[p] = ts
            self._part_seen[p] = now
        active = {p: ts for p, ts in self._part_ts.items() if now - self._part_seen[p] < 0.5 and p in self.shards}
        if len(active) < 2 and not self._paused:
            return
        floor = min(active.values()) if active else 0
        pause, resume = [], []
        for p in list(self.shards):
            ts = self._part_ts.get(p)
            far = ts is not None and len(active) >= 2 and ts > floor + self.cfg.align_slack_ms
            if far and p not in self._paused:
                self._paused.add(p)
                pause.append(TopicPartition(self.signals_topic, p))
            elif not far and p in self._paused:
                self._paused.discard(p)
                resume.append(TopicPartition(self.signals_topic, p))
        if pause:
            self.consumer.pause(pause)
        if resume:
            self.consumer.resume(resume)
        # A paused partition's own records stop arriving: keep it "active" so it is not forgotten.
        for p in self._paused:
            self._part_seen[p] = now

    def _due(self, shard: Shard, account: str, ts: int, received: bool,
             pending: list[tuple[str, Any, Shard, int, list[float]]]) -> None:
        st = shard.engine.accounts[account]
        if st.action != "ban" and self.schedule.due(st, ts, received=received):
            self.schedule.mark(st, ts)
            pending.append((account, st, shard, ts, feature_row(st, shard.engine, ts)))

    def _rekey(self, other: str, r: dict[str, Any], raw: bytes,
               pending: list[tuple[str, Any, Shard, int, list[float]]], src: Shard, offset: int) -> None:
        """The counterpart's side of a signal. When this worker holds the counterpart's partition it
        applies it at once — the same order `build_feature_table` sees (a reply is recognised even
        while a backlog of signals is being caught up); otherwise it republishes the raw record to
        the inbound topic for the worker that does. Either way it carries its source position, so
        a side re-keyed again after a crash is applied once (`Shard.first_time`)."""
        q = self._partition_of.get(other)
        if q is None:
            q = zlib.crc32(other.encode()) % self._nparts if self._nparts else -1
            if len(self._partition_of) >= 1_000_000:
                self._partition_of.clear()
            self._partition_of[other] = q
        local = self.shards.get(q) if self._local_ok else None
        floor = src.saved.get(self.signals_topic, 0)
        if local is not None:
            if local.first_time(src.partition, offset, floor):
                local.dirty = True
                account = local.engine.inbound_record(r)
                if account is not None:
                    self._due(local, account, r["ts"], True, pending)
            self.n_local += 1
            return
        headers = [(SOURCE_HEADER, b"%d:%d:%d" % (src.partition, offset, floor))]
        if self._local_ok and q >= 0:
            self.producer.produce(self.inbound_topic, key=other, value=raw, partition=q, headers=headers)
        else:
            self.producer.produce(self.inbound_topic, key=other, value=raw, headers=headers)
        self.metrics.rekeyed.inc()

    @staticmethod
    def _first_time(shard: Shard, m: Any) -> bool:
        """An inbound copy is applied unless its source position says this shard has applied it."""
        headers = m.headers()
        if headers:
            for name, value in headers:
                if name == SOURCE_HEADER:
                    source, offset, floor = value.split(b":")
                    return shard.first_time(int(source), int(offset), int(floor))
        return True

    def _verify_partitioner(self, m: Any) -> None:
        """Local application relies on librdkafka's default partitioner (CRC32 of the key mod the
        partition count, what the relay's producer uses); a signal placed otherwise turns it off."""
        self._checked += 1
        if zlib.crc32(m.key()) % self._nparts != m.partition():
            self._local_ok = False
            self._check_partitioner = False
            log.warning("signals are not partitioned by CRC32(key): re-keyed signals go through %s only",
                        self.inbound_topic)
        elif self._checked >= 1000:
            self._check_partitioner = False

    def _on_applied(self, shard: Shard, r: dict[str, Any]) -> None:
        self.applied[r["account"]] = r["ts"]
        if r["action"] == "lift":  # a reviewer lifted it: the account is scored again
            st = shard.engine.accounts.get(r["account"])
            if st is not None:
                st.action = None

    def _bad(self, topic: str, m: Any, exc: Exception) -> None:
        self.bad += 1
        self.metrics.bad.inc()
        if self._bad_logged < 100 or self.bad % 1000 == 0:
            self._bad_logged += 1
            log.error("skipped a malformed record at %s[%d]@%d: %s (%d skipped so far)", topic, m.partition(),
                      m.offset(), exc, self.bad)

    def _score(self, pending: list[tuple[str, Any, Shard, int, list[float]]]) -> None:
        champion, challenger = self.models.champion, self.models.challenger
        width = len(pending[0][4])
        matrix = np.fromiter(chain.from_iterable([p[4] for p in pending]), np.float64,
                             count=len(pending) * width).reshape(len(pending), width)
        scores = champion.score(matrix) if champion is not None else None
        version = champion.version if champion is not None else None
        bans = ban_scores(champion, matrix, scores, self.policy.ban_threshold) if scores is not None else None
        now = now_ms()
        records: list[tuple[int, str, int, float, bool]] = []  # (pending index, version, ts, score, shadow)
        n = len(pending)
        score_list: list[Any] = scores.tolist() if scores is not None else [None] * n
        ban_list: list[Any] = bans.tolist() if bans is not None else [None] * n
        self.score_latencies_ms.extend([now - p[3] for p in pending])
        decide = self.policy.decide
        hit_list = rule_hits(self.rules.rules, matrix)
        # `decide` only where it may say something (Policy.may_act: most scoring moments decide nothing)
        acted: set[int] = set()
        for i in np.flatnonzero(self.policy.may_act(matrix, scores, bans, hit_list)).tolist():
            account, st, _, ts, row = pending[i]
            verdicts = decide(account, st, row, ts, score_list[i], version, hit_list[i], ban_score=ban_list[i])
            if verdicts:
                acted.add(i)
                self.sink.apply(verdicts, st)
                for v in verdicts:
                    if v.action is not None:
                        self.metrics.decisions.labels(v.action.value).inc()
                    else:
                        self.metrics.cases.inc()
        store_interval, store_delta = self.cfg.store_interval_ms, self.cfg.store_delta
        if scores is not None:
            for i, (account, _, shard, ts, _) in enumerate(pending):
                score = score_list[i]
                last = shard.stored.get(account)
                if (last is None or ts - last[0] >= store_interval or abs(score - last[1]) >= store_delta
                        or i in acted):
                    shard.stored[account] = (ts, score)
                    records.append((i, version or "", ts, score, False))
        records = last_per_account(records, pending, self.policy.review_threshold)
        if scores is not None:
            self.metrics.scored.labels(version).inc(len(pending))
            self.metrics.score_latency.observe(max(0, now - pending[-1][3]) / 1000.0)
        if challenger is not None:  # shadow: stored and published with shadow=True, never acted on
            shadow = challenger.score(matrix)
            self.metrics.scored.labels(challenger.version).inc(len(pending))
            records += [(r[0], challenger.version, r[2], float(shadow[r[0]]), True) for r in list(records)]
        self.sink.flush_cases()
        self.sink.flush_decisions()  # after the cases: a ban closes the cases it answers
        if records:
            self._store(pending, matrix, records)

    def _store(self, pending: list[Any], matrix: np.ndarray, records: list[tuple[int, str, int, float, bool]]) -> None:
        out: list[ScoreRecord] = []
        for shadow in (False, True):
            model = self.models.challenger if shadow else self.models.champion
            sel = [r for r in records if r[4] is shadow]
            if not sel or model is None:
                continue
            worth = [r for r in sel if r[3] >= self.cfg.explain_above]
            explained = dict(zip((r[0] for r in worth),
                                 model.explain(matrix[[r[0] for r in worth]], top=self.cfg.top_contributions)))
            out += [ScoreRecord(pending[r[0]][0], r[2], r[1], r[3], explained.get(r[0], []), shadow) for r in sel]
        try:
            self.sink.scores(out)
        except Exception as exc:  # noqa: BLE001 - a lost score row is not worth stopping detection
            log.error("could not store %d scores: %s", len(out), type(exc).__name__)

    # -- durability ------------------------------------------------------------------------
    def checkpoint(self, all_dirty: bool = False, *, background: bool = False) -> None:
        """Flush re-keyed records first (they must not be lost), then save state + offsets together.

        Every dirty shard goes in the same transaction: a signal applied in-process to two shards
        (its sender's and its counterpart's) is then saved in both or in neither.

        `background` (the periodic checkpoints of `step`): pickling a large state takes seconds,
        and every decision due meanwhile would wait for it. So a forked child — a copy-on-write
        snapshot of this very moment — pickles and writes it while this process goes on; its
        partitions count as saved (`Shard.saved`) only once the child succeeded, and as dirty again
        if it failed. Revocation, close and explicit calls save in-process, after any running child."""
        del all_dirty
        self._last_checkpoint = time.monotonic()
        if self._saver is not None and not self._reap(block=not background):
            return  # the previous background checkpoint is still writing
        self.sink.flush()  # scores the state marks as stored go to the database first
        shards = [s for _, s in sorted(self.shards.items()) if s.dirty]
        if not shards:
            return
        t0 = time.perf_counter()
        left = self.producer.flush(30)
        if left:
            log.error("checkpoint postponed: %d records still unsent to the broker", left)
            return
        if background and self._can_fork:
            self._fork_save(shards, t0)
            return
        nbytes = save_shards(self.db, self.cfg.group, self.signals_topic, shards)
        self._checkpointed(time.perf_counter() - t0)
        log.debug("checkpointed %d partitions (%d bytes) in %.3fs", len(shards), nbytes, time.perf_counter() - t0)

    def _checkpointed(self, took: float) -> None:
        self.metrics.checkpoint_seconds.observe(took)
        # A checkpoint pickles whole shards: its cost grows with the state. Keep it under
        # `checkpoint_max_share` of the time (a longer interval only means more replay after a crash).
        self._checkpoint_every = min(max(self.cfg.checkpoint_interval_s, took / self.cfg.checkpoint_max_share),
                                     max(self.cfg.checkpoint_interval_s, self.cfg.checkpoint_max_interval_s))
        self.checkpoints += 1
        self.checkpoint_s += took
        self.metrics.accounts.set(sum(len(s.engine.accounts) for s in self.shards.values()))

    def _fork_save(self, shards: list[Shard], t0: float) -> None:
        parent = os.getpid()
        rfd, wfd = os.pipe()  # the child's outcome: what save_shards recorded, or the fenced partitions
        with warnings.catch_warnings():  # 3.12+ warns about fork with threads: the child touches none of them
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: write the snapshot, touch nothing else (no Kafka client), never return
            code, outcome = 1, b""
            try:
                os.close(rfd)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                _die_with_parent(parent)  # an orphan must not write an old snapshot over a new owner's
                os.nice(CHECKPOINT_NICE)  # background work: the worker's polls (time-to-enforcement) come first
                save_shards(Database(self.db.url, migrate=False), self.cfg.group, self.signals_topic, shards)
                code, outcome = 0, pickle.dumps({sh.partition: sh.saved for sh in shards})
            except CheckpointFenced as exc:
                code, outcome = 2, pickle.dumps(exc.partitions)
            except BaseException:  # reported through the exit code
                log.exception("background checkpoint failed")
            finally:
                try:
                    os.write(wfd, outcome)  # a few hundred bytes: fits the pipe, never blocks
                finally:
                    os._exit(code)
        os.close(wfd)
        for s in shards:
            s.dirty = False
        self._saver = (pid, rfd, shards, t0)

    def _reap(self, block: bool) -> bool:
        """Collect the background checkpoint's outcome; False while it is still running. A fenced
        one raises CheckpointFenced here, as an in-process checkpoint would."""
        assert self._saver is not None
        pid, rfd, shards, t0 = self._saver
        got, status = os.waitpid(pid, 0 if block else os.WNOHANG)
        if got == 0:
            return False
        self._saver = None
        chunks = []
        while chunk := os.read(rfd, 65536):
            chunks.append(chunk)
        os.close(rfd)
        code = os.waitstatus_to_exitcode(status)
        if code == 0:
            saved = pickle.loads(b"".join(chunks))
            for s in shards:  # exactly what save_shards recorded in the child
                s.saved = saved[s.partition]
            self._checkpointed(time.perf_counter() - t0)
            return True
        for s in shards:
            s.dirty = True
        if code == 2:
            raise CheckpointFenced(self.cfg.group, pickle.loads(b"".join(chunks)))
        log.error("background checkpoint of partitions %s failed (exit %s); they are saved again next time",
                  [s.partition for s in shards], code)
        return True

    def _update_lag(self) -> None:
        try:
            assignment = self.consumer.assignment()
            positions = self.consumer.position(assignment)
        except Exception:  # noqa: BLE001 - metrics only
            return
        for tp in positions:
            try:
                _, high = self.consumer.get_watermark_offsets(tp, cached=True)
            except Exception:  # noqa: BLE001
                continue
            if high >= 0 and tp.offset >= 0:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - tp.offset))

    def close(self) -> None:
        try:
            self.checkpoint(all_dirty=True)
        finally:
            try:
                self.consumer.close()
            except Exception:  # noqa: BLE001 - closing twice is fine
                pass
            if self.netfeed is not None:
                self.netfeed.stop()
            if not self._closed:  # flush, then let the producers go: they stop retrying a broker that has gone
                self._closed = True
                self.producer.flush(10)
                self.producer.close()
                self.sink.publisher.close(10)  # type: ignore[union-attr]
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
                self._server = None
