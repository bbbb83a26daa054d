"""The detection worker: a consumer group over the signals topic and its re-keyed inbound twin.

Per record: decode → feature engine (outbound door for `sg.signals.v1`, inbound door for
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

import gc
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from detection.checkpoint import Shard, load_shard, save_shards
from detection.features import NetView, ScoreSchedule, feature_row
from detection.model import ModelSlots
from detection.policy import Policy
from detection.rules import RuleBook
from detection.sink import ScoreRecord, Sink
from sealguard.contracts import ContractError, counterpart_of, decode, now_ms
from sealguard.settings import Settings
from sealguard.storage import Database

log = logging.getLogger(__name__)


@dataclass
class WorkerConfig:
    group: str = "sg-detect"
    batch: int = 5000  # records per poll
    poll_timeout_s: float = 0.01  # consume() waits this long to fill a batch; short keeps latency low
    checkpoint_interval_s: float = 10.0
    refresh_interval_s: float = 2.0  # rules and model pointers are re-read this often
    store_interval_ms: int = 60_000  # a score is stored per account at most this often ...
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
        self.sink = Sink(self.db, KafkaEnforcementPublisher(settings.kafka, settings.enforcement_topic),
                         self.producer, settings.scores_topic)
        self.consumer = consumer(settings.kafka, self.cfg.group, **{"partition.assignment.strategy": "range"})
        self.shards: dict[int, Shard] = {}
        self._books: list[Any] = []
        self.net = NetView(self._books)
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
        self.n_signals = 0
        self.n_inbound = 0
        self.bad = 0
        self.applied: dict[str, int] = {}  # account -> ts of the relay's latest enforcement.applied
        self.score_latencies_ms: deque[int] = deque(maxlen=500_000)
        self._last_checkpoint = time.monotonic()
        self._last_refresh = time.monotonic()
        self._bad_logged = 0
        self.assigned = threading.Event()

    # -- assignment ------------------------------------------------------------------------
    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            shard = self.shards.get(tp.partition)
            if shard is None:
                shard = self.shards[tp.partition] = load_shard(
                    self.db, self.cfg.group, self.signals_topic, [self.signals_topic, self.inbound_topic], tp.partition)
                shard.engine.net = self.net
                log.info("partition %d: resumed %d accounts, offsets %s", tp.partition, len(shard.engine.accounts),
                         shard.offsets or "from the beginning")
            tp.offset = shard.offsets.get(tp.topic, OFFSET_BEGINNING)
        self._books[:] = [s.engine.book for s in self.shards.values()]
        consumer.assign(partitions)
        self.assigned.set()

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        gone = {tp.partition for tp in partitions}
        if gone:
            self.checkpoint()
        for p in gone:
            self.shards.pop(p, None)
        self._books[:] = [s.engine.book for s in self.shards.values()]

    # -- the loop --------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        # Millions of small long-lived objects (account state) make CPython's default cyclic-GC
        # thresholds rescan them constantly; feature state has no cycles worth collecting often.
        gc.set_threshold(100_000, 50, 1000)
        gc.freeze()
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
        if now - self._last_checkpoint >= self.cfg.checkpoint_interval_s:
            self.checkpoint()
        return n

    def _process(self, msgs: list[Any]) -> int:
        signals, inbound = self.signals_topic, self.inbound_topic
        shards, schedule, produce = self.shards, self.schedule, self.producer.produce
        pending: list[tuple[str, Any, Shard, int, list[float]]] = []
        row = feature_row
        n_sig = n_in = rekeyed = 0
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer: %s", err)
                continue
            topic = m.topic()
            shard = shards.get(m.partition())
            if shard is None:
                continue
            raw = m.value()
            shard.offsets[topic] = m.offset() + 1
            shard.dirty = True
            try:
                ev = decode(raw)
                if topic == signals:
                    n_sig += 1
                    account = shard.engine.apply_outbound(ev)
                    received = False
                    other = counterpart_of(ev)
                    if other is not None:
                        produce(inbound, key=other, value=raw)
                        rekeyed += 1
                    if ev.type == "enforcement.applied":
                        self.applied[ev.account] = ev.ts
                        if ev.action.value == "lift":  # a reviewer lifted it: the account is scored again
                            st0 = shard.engine.accounts.get(ev.account)
                            if st0 is not None:
                                st0.action = None
                else:
                    n_in += 1
                    account = shard.engine.apply_inbound(ev)
                    received = True
            except (ContractError, ValueError, TypeError, AttributeError) as exc:
                self._bad(topic, m, exc)
                continue
            if account is not None:
                st = shard.engine.accounts[account]
                ts = ev.ts
                if st.action != "ban" and schedule.due(st, ts, received=received):
                    schedule.mark(st, ts)
                    pending.append((account, st, shard, ts, row(st, shard.engine, ts)))
        self.producer.poll(0)
        self.consumed += len(msgs)
        self.n_signals += n_sig
        self.n_inbound += n_in
        if n_sig:
            self.metrics.records.labels(signals).inc(n_sig)
        if n_in:
            self.metrics.records.labels(inbound).inc(n_in)
        if rekeyed:
            self.metrics.rekeyed.inc(rekeyed)
        if pending:
            self._score(pending)
        return len(msgs)

    def _bad(self, topic: str, m: Any, exc: Exception) -> None:
        self.bad += 1
        self.metrics.bad.inc()
        if self._bad_logged < 100 or self.bad % 1000 == 0:
            self._bad_logged += 1
            log.error("skipped a malformed record at %s[%d]@%d: %s (%d skipped so far)", topic, m.partition(),
                      m.offset(), exc, self.bad)

    def _score(self, pending: list[tuple[str, Any, Shard, int, list[float]]]) -> None:
        champion, challenger = self.models.champion, self.models.challenger
        matrix = np.asarray([p[4] for p in pending], dtype=np.float64)
        scores = champion.score(matrix) if champion is not None else None
        version = champion.version if champion is not None else None
        now = now_ms()
        records: list[tuple[int, str, int, float, bool]] = []  # (pending index, version, ts, score, shadow)
        for i, (account, st, shard, ts, row) in enumerate(pending):
            score = float(scores[i]) if scores is not None else None
            self.score_latencies_ms.append(now - ts)
            verdicts = self.policy.decide(account, st, row, ts, score, version, self.rules.hits(row))
            if verdicts:
                self.sink.apply(verdicts, st)
                for v in verdicts:
                    if v.action is not None:
                        self.metrics.decisions.labels(v.action.value).inc()
                    else:
                        self.metrics.cases.inc()
            if score is not None:
                last = shard.stored.get(account)
                if (verdicts or last is None or ts - last[0] >= self.cfg.store_interval_ms
                        or abs(score - last[1]) >= self.cfg.store_delta):
                    shard.stored[account] = (ts, score)
                    records.append((i, version or "", ts, score, False))
        if scores is not None:
            self.metrics.scored.labels(version).inc(len(pending))
            self.metrics.score_latency.observe(max(0, now - pending[-1][3]) / 1000.0)
        if challenger is not None:  # shadow: stored and published with shadow=True, never acted on
            shadow = challenger.score(matrix)
            self.metrics.scored.labels(challenger.version).inc(len(pending))
            records += [(r[0], challenger.version, r[2], float(shadow[r[0]]), True) for r in list(records)]
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
    def checkpoint(self) -> None:
        """Flush re-keyed records first (they must not be lost), then save state + offsets together."""
        self._last_checkpoint = time.monotonic()
        shards = [s for s in self.shards.values() if s.dirty]
        if not shards:
            return
        t0 = time.perf_counter()
        left = self.producer.flush(30)
        if left:
            log.error("checkpoint postponed: %d records still unsent to the broker", left)
            return
        nbytes = save_shards(self.db, self.cfg.group, self.signals_topic, shards)
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - t0)
        self.metrics.accounts.set(sum(len(s.engine.accounts) for s in self.shards.values()))
        log.debug("checkpointed %d partitions (%d bytes) in %.3fs", len(shards), nbytes, time.perf_counter() - t0)

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
            self.checkpoint()
        finally:
            try:
                self.consumer.close()
            except Exception:  # noqa: BLE001 - closing twice is fine
                pass
            self.producer.flush(10)
            self.sink.publisher.flush(10)  # type: ignore[union-attr]
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
                self._server = None
