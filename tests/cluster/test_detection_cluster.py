"""Two detection workers (`python -m sealguard detect`, separate processes) in one consumer group,
against the real broker and PostgreSQL (issue 8, detection cluster).

One deterministic signal stream is produced in three phases: worker 1 alone; worker 2 joins
mid-stream (a rebalance: partitions move with their checkpointed state); worker 1 is killed with
SIGKILL mid-stream (its partitions move again, and whatever it consumed after its last checkpoint
is consumed again by the survivor). Then:

* every decision is enforced exactly once: one row per decision in `decisions`, one record per
  decision on the enforcement topic, and every spammer the stream bans is banned once;
* features are continuous: the per-account state checkpointed at the end equals what a single
  feature engine computes over the same stream (`FeatureEngine.apply`, the offline reference that
  training uses), for every account — every partition moved at least once.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import re
import secrets
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition
from sqlalchemy import select as sql_select

from bench.detect_cluster import checkpointed_offsets
from detection.checkpoint import CheckpointFenced, Shard, load_offsets, load_shard, save_shards
from detection.features import FeatureEngine
from detection.features.operators import REPLY
from detection.quick_model import labelled_table, train_quick_model
from sealguard.contracts import encode, key_of, new_account_id, new_event_id
from sealguard.settings import Settings
from sealguard.storage import Database, DecisionRow
from sealguard.stream import ensure_topics, producer

pytestmark = pytest.mark.postgres

PARTITIONS = 4
MAX_POLL_MS = 3000  # Tansu completes a group join only after this (DESIGN.md); short keeps the test short
CHECKPOINT_S = 3.0  # long enough that the SIGKILL lands between checkpoints (the survivor consumes again)


def _synth_module() -> Any:
    """tests/detection/synth.py: the seeded little population detection's own tests use."""
    path = Path(__file__).resolve().parents[1] / "detection" / "synth.py"
    spec = importlib.util.spec_from_file_location("sealguard_tests_synth", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def stream_and_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    synth = _synth_module()
    train = synth.Synth(seed=5).population(normal=50, blasters=4, drips=4, farm=4, minutes=12)
    table, y = labelled_table(train.events, synth.truth_of(train))
    model = train_quick_model(table, y, tmp_path_factory.mktemp("model") / "lgbm-c1", version="lgbm-c1", rounds=30)
    live = synth.Synth(seed=11).population(normal=40, blasters=2, drips=1, farm=3, minutes=10)
    return live, model


class Feeder:
    """Produces the stream in order, counting records per partition (the end offsets to wait for)."""

    def __init__(self, settings: Settings, events: list[Any]) -> None:
        assert settings.kafka
        self.p = producer(settings.kafka)
        self.topic = settings.signals_topic
        self.events = events
        self.sent = 0
        self.ends: collections.Counter[int] = collections.Counter()

    def _delivered(self, err: Any, msg: Any) -> None:
        assert err is None, f"produce failed: {err}"
        self.ends[msg.partition()] = max(self.ends[msg.partition()], msg.offset() + 1)

    def extra(self, events: list[Any]) -> None:
        for ev in events:
            self.p.produce(self.topic, key=key_of(ev), value=encode(ev), on_delivery=self._delivered)
        assert self.p.flush(30) == 0

    def feed(self, upto: int, chunks: int = 1, pause_s: float = 0.0) -> None:
        todo = self.events[self.sent:upto]
        size = max(1, -(-len(todo) // chunks))
        for i in range(0, len(todo), size):
            for ev in todo[i:i + size]:
                self.p.produce(self.topic, key=key_of(ev), value=encode(ev), on_delivery=self._delivered)
            assert self.p.flush(30) == 0
            time.sleep(pause_s)
        self.sent = upto


def _consumed(w: Any, topic: str) -> float:
    """Records a worker process consumed from `topic` (its /metrics)."""
    return w.metric("sealguard_detect_records_total", f'topic="{topic}"')


def _partitions_loaded(w: Any) -> set[int]:
    """The partitions a worker process loaded from checkpoints (its log says so on assignment)."""
    return {int(m) for m in re.findall(r"partition (\d+): resumed", w.log_path.read_text())}


def _late_spammer(template: str, events: list[Any], partition: int, after_ts: int) -> tuple[str, list[Any]]:
    """A fresh account on `partition` that repeats a banned blaster's first signals (and what its
    victims did back) from `after_ts` on, so its ban is decided at a moment of the test's choosing."""
    while True:
        account = new_account_id()
        if zlib.crc32(account.encode()) % PARTITIONS == partition:
            break
    fields = ("account", "sender", "blocked", "reported", "actor")
    mine = [e for e in events if any(getattr(e, f, None) == template for f in fields)][:60]
    shift = after_ts - mine[0].ts
    out = [e.model_copy(update={"id": new_event_id(), "ts": e.ts + shift,
                                **{f: account for f in fields if getattr(e, f, None) == template}}) for e in mine]
    return account, out


def _wait_decided(db: Database, account: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.session() as s:
            if s.scalars(sql_select(DecisionRow.id).where(DecisionRow.account == account)).first():
                return
        time.sleep(0.02)
    raise AssertionError(f"no decision on {account} in {timeout}s")


def _consumed_more(w: Any, topic: str, before: float, timeout: float = 20.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = _consumed(w, topic)
        if now > before:
            return now
        time.sleep(0.02)
    raise AssertionError(f"{w.name} consumed nothing new in {timeout}s")


def _wait_checkpointed(db: Database, group: str, topic: str, ends: dict[int, int], timeout: float,
                       procs: list[Any]) -> None:
    deadline = time.monotonic() + timeout
    got: dict[int, int] = {}
    while time.monotonic() < deadline:
        got = checkpointed_offsets(db, group, topic)
        if all(got.get(p, 0) >= end for p, end in ends.items()):
            return
        for w in procs:
            assert w.proc.poll() is None, f"{w.name} died: {w.log_path.read_text()[-3000:]}"
        time.sleep(0.3)
    raise AssertionError(f"checkpoints of {topic} reached {got}, not {dict(ends)}")


class TopicCounter:
    """Reads a topic's partitions from the beginning without a group (no join to wait for)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"count-{secrets.token_hex(4)}",
                           "enable.auto.commit": False, "enable.partition.eof": False})
        self.c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        self.ends: collections.Counter[int] = collections.Counter()
        self.values: list[bytes] = []

    def drain(self, idle_s: float = 1.5, timeout: float = 30.0) -> None:
        deadline, last = time.monotonic() + timeout, time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - last < idle_s:
            for m in self.c.consume(num_messages=1000, timeout=0.2):
                if m.error() is not None:
                    assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                    continue
                self.ends[m.partition()] = max(self.ends[m.partition()], m.offset() + 1)
                self.values.append(m.value())
                last = time.monotonic()

    def close(self) -> None:
        self.c.close()


def _reference(events: list[Any]) -> FeatureEngine:
    """What one engine computes over the whole stream in order (training's reference)."""
    engine = FeatureEngine()
    for ev in sorted(events, key=lambda e: e.ts):
        engine.apply(ev)
    return engine


def _summary(st: Any) -> dict[str, Any]:
    """The state that must survive moves exactly. The REPLY channel is left out: a reply counts only
    if the message it answers reached the replier's partition first, and across two workers the
    answered message may still be on its way through the inbound topic (docs/detection.md)."""
    tot = [x for i, x in enumerate(st.vecs[2].tot) if i != REPLY]  # the 24 h window holds the whole stream
    return {"sends": st.sends_total, "n_out": st.n_out, "blocks": st.blocks_total, "reports": st.reports_total,
            "verified": st.verified_reports_total, "registered": st.registered_ts, "net": st.net_bucket,
            "inbound_from": sorted(st.inbound_from), "tot_24h": tot}


def test_two_workers_rebalance_and_kill_keep_state_and_enforce_once(
        tmp_path: Path, broker_bootstrap: str, pg_url: str, stream_and_model: tuple[Any, Path],
        detect_process: Any) -> None:
    live, model = stream_and_model

    def worker(name: str) -> Any:
        return detect_process(name, env, group, tmp_path, "--model", str(model), "--max-poll-interval-ms",
                              str(MAX_POLL_MS), "--checkpoint-interval", str(CHECKPOINT_S))

    tag = secrets.token_hex(3)
    settings = Settings(state_dir=tmp_path / "state", kafka=broker_bootstrap, db_url=pg_url, partitions=PARTITIONS,
                        signals_topic=f"c{tag}.signals", inbound_topic=f"c{tag}.inbound",
                        enforcement_topic=f"c{tag}.enforcement", scores_topic=f"c{tag}.scores")
    ensure_topics(broker_bootstrap, settings.topics, PARTITIONS)
    db = Database(pg_url)  # runs `upgrade heads` on PostgreSQL before the workers start
    group = f"g-cluster-{tag}"
    env = {**os.environ, "SEALGUARD_KAFKA": broker_bootstrap, "SEALGUARD_DB_URL": pg_url,
           "SEALGUARD_STATE_DIR": str(settings.state_dir), "SEALGUARD_PARTITIONS": str(PARTITIONS),
           "SEALGUARD_SIGNALS_TOPIC": settings.signals_topic, "SEALGUARD_INBOUND_TOPIC": settings.inbound_topic,
           "SEALGUARD_ENFORCEMENT_TOPIC": settings.enforcement_topic, "SEALGUARD_SCORES_TOPIC": settings.scores_topic}
    events = live.events
    n = len(events)
    blasters = [a for a, kind in live.spammers.items() if kind == "blaster"]
    feeder = Feeder(settings, events)
    workers: list[Any] = []
    try:
        # Phase 1: worker 1 alone holds every partition.
        w1 = worker("worker1")
        workers.append(w1)
        feeder.feed(n // 3)
        _wait_checkpointed(db, group, settings.signals_topic, feeder.ends, 60, workers)

        # Phase 2: worker 2 joins mid-stream; the stream keeps flowing through the rebalance.
        w2 = worker("worker2")
        workers.append(w2)
        feeder.feed(2 * n // 3, chunks=12, pause_s=0.5)
        _wait_checkpointed(db, group, settings.signals_topic, feeder.ends, 60, workers)
        assert _consumed(w2, settings.signals_topic) > 0, "worker 2 got partitions in the rebalance"
        assert _consumed(w1, settings.signals_topic) > 0

        # Phase 3: worker 1 is killed (SIGKILL: no checkpoint on the way out) while the stream flows,
        # right after it banned a spammer on one of its partitions: the ban is committed, the state
        # that records it is not, so worker 2 consumes the spammer's signals again.
        feeder.feed(5 * n // 6, chunks=6, pause_s=0.3)
        w1_parts = set(range(PARTITIONS)) - _partitions_loaded(w2)
        late, spam = _late_spammer(blasters[0], events, min(w1_parts or {0}), events[5 * n // 6].ts)
        before = _consumed(w1, settings.signals_topic)
        feeder.extra(spam)
        feeder.feed(5 * n // 6 + 40)
        _wait_decided(db, late)
        consumed_by_w1 = _consumed_more(w1, settings.signals_topic, before)
        w1.kill()
        workers.remove(w1)
        feeder.feed(n, chunks=6, pause_s=0.3)
        _wait_checkpointed(db, group, settings.signals_topic, feeder.ends, 90, workers)

        # The inbound topic (counterpart sides re-keyed between the workers) must be consumed too.
        inbound = TopicCounter(broker_bootstrap, settings.inbound_topic, PARTITIONS)
        try:
            inbound.drain()
            _wait_checkpointed(db, group, settings.inbound_topic, inbound.ends, 60, workers)
        finally:
            inbound.close()
        # Registrations of every partition, counted once (worker 1's republished ones, the signals
        # replayed after the kill and republished again): the survivor's global net book holds them all.
        registered = {ev.account for ev in [*events, *spam] if ev.type == "account.registered"}
        deadline = time.monotonic() + 30
        while w2.metric("sealguard_detect_net_registrations") != len(registered) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert w2.metric("sealguard_detect_net_registrations") == len(registered)
        consumed_by_w2 = _consumed(w2, settings.signals_topic)
        assert w2.stop() == 0, w2.log_path.read_text()[-3000:]
        workers.remove(w2)
    finally:
        for w in workers:
            w.proc.kill()
            w.proc.wait(10)
    events = events + spam  # what the stream held, for the reference below
    replayed = consumed_by_w1 + consumed_by_w2 - len(events)
    print(f"cluster: signals={len(events)} worker1={consumed_by_w1:.0f} worker2={consumed_by_w2:.0f} replayed={replayed:.0f} "
          f"inbound={sum(inbound.ends.values())}")

    # Exactly once: one decision row per decision, one enforcement record per decision, a spammer banned once.
    with db.session() as s:
        decisions = s.scalars(sql_select(DecisionRow)).all()
    per_account = collections.Counter((d.account, d.action) for d in decisions)
    assert all(c == 1 for c in per_account.values()), f"decided twice: {per_account.most_common(3)}"
    banned = {d.account for d in decisions if d.action == "ban"}
    assert set(blasters) | {late} <= banned, "every blaster is banned, the late one too"
    assert not banned & set(live.normal), "no normal account is banned"
    enforcement = TopicCounter(broker_bootstrap, settings.enforcement_topic, PARTITIONS)
    try:
        enforcement.drain()
    finally:
        enforcement.close()
    published = collections.Counter(json.loads(v)["decision_id"] for v in enforcement.values)
    assert all(c == 1 for c in published.values()), f"published twice: {published.most_common(3)}"
    assert set(published) == {d.id for d in decisions}, "every decision published, nothing else"

    # Continuity: every account's checkpointed state equals the single-engine reference.
    reference = _reference(events)
    held: dict[str, Any] = {}
    for p in range(PARTITIONS):
        shard = load_shard(db, group, settings.signals_topic, [settings.signals_topic, settings.inbound_topic], p)
        assert not set(shard.engine.accounts) & set(held), "an account is held by two partitions"
        held.update(shard.engine.accounts)
    assert set(held) == set(reference.accounts)
    wrong = {a: (_summary(held[a]), _summary(st)) for a, st in reference.accounts.items()
             if _summary(held[a]) != _summary(st)}
    assert not wrong, f"{len(wrong)} accounts differ from the reference, e.g. {next(iter(wrong.items()))}"
    for a in [*blasters, late]:
        assert held[a].action == "ban", "the ban is part of the checkpointed state"
    db.dispose()


def test_a_counterpart_side_re_keyed_again_is_applied_once() -> None:
    """The rule the cluster test relies on, case by case (detection.checkpoint.Shard.first_time)."""
    shard = Shard(0)
    assert shard.first_time(1, 100, 90)
    assert not shard.first_time(1, 100, 90), "the same side, re-keyed again after a crash"
    assert shard.first_time(1, 101, 90)
    assert shard.first_time(2, 100, 0), "another source partition, same offset: a different signal"
    back = Shard.load(0, shard.dump())  # what is remembered is checkpointed with the state
    assert not back.first_time(1, 101, 90)
    assert back.first_time(1, 150, 120)
    assert not back.first_time(1, 100, 90), "a late copy carrying the older floor is still caught"
    assert back.first_time(1, 200, 160)
    assert back.applied[1][2] == {150, 200}, "offsets under the floor before last are forgotten"


def test_a_zombie_worker_cannot_overwrite_a_newer_checkpoint(db_url: str) -> None:
    """A worker whose session expired still holds its shards; once the partition's new owner has
    checkpointed, the zombie's checkpoint is refused whole (compare and set on the offsets)."""
    db = Database(db_url)
    try:
        zombie = Shard(2)
        zombie.offsets = {"sig": 10}
        save_shards(db, "g", "sig", [zombie])
        owner = load_shard(db, "g", "sig", ["sig", "inb"], 2)
        owner.offsets = {"sig": 15, "inb": 3}
        save_shards(db, "g", "sig", [owner])
        zombie.offsets = {"sig": 12}
        bystander = Shard(3)
        bystander.offsets = {"sig": 1}
        with pytest.raises(CheckpointFenced, match=r"partitions \[2\] were checkpointed by another worker") as err:
            save_shards(db, "g", "sig", [bystander, zombie])
        assert err.value.partitions == [2]
        assert load_offsets(db, "g", ["sig", "inb"], 3) == {}, "nothing of the refused transaction was written"
        assert load_shard(db, "g", "sig", ["sig", "inb"], 2).offsets == {"sig": 15, "inb": 3}
        owner.offsets = {"sig": 20, "inb": 4}
        save_shards(db, "g", "sig", [owner])  # the owner goes on
        inbound_only = Shard(4)  # consumed only inbound copies: its state row says BEGINNING
        inbound_only.offsets = {"inb": 2}
        save_shards(db, "g", "sig", [inbound_only])
        inbound_only.saved = {"inb": 2}  # as a worker records a checkpoint a forked child wrote
        inbound_only.offsets = {"sig": 1, "inb": 3}
        save_shards(db, "g", "sig", [inbound_only])
        assert load_offsets(db, "g", ["sig", "inb"], 4) == {"sig": 1, "inb": 3}
        sides_only = Shard(6)  # dirty from counterpart sides applied in-process, nothing consumed itself
        save_shards(db, "g", "sig", [sides_only])
        sides_only.saved = {}  # as a worker records a forked checkpoint of no offsets
        sides_only.offsets = {"sig": 5}
        save_shards(db, "g", "sig", [sides_only])
        assert load_offsets(db, "g", ["sig"], 6) == {"sig": 5}
        first, second = Shard(5), Shard(5)  # two workers racing to write a partition's first checkpoint
        first.offsets = second.offsets = {"sig": 1}
        save_shards(db, "g", "sig", [first])
        with pytest.raises(CheckpointFenced):
            save_shards(db, "g", "sig", [second])
    finally:
        db.dispose()
