"""The worker against the real broker and a real database: re-keying, scoring, decisions through
do_decide, cases, malformed records, checkpoint/resume without enforcing twice."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import func, select

from detection.model import write_pointer
from detection.worker import Worker, WorkerConfig
from sealguard.contracts import MessageKind, encode, key_of
from sealguard.settings import Settings
from sealguard.storage import CaseRow, Database, DecisionRow, DetectionCheckpointRow, ScoreRow
from sealguard.stream import producer

from .synth import Synth


def _produce(settings: Settings, events: list, extra: list[bytes] = ()) -> None:
    p = producer(settings.kafka)
    for raw in extra:
        p.produce(settings.signals_topic, key=b"junk", value=raw)
    for ev in events:
        p.produce(settings.signals_topic, key=key_of(ev), value=encode(ev))
    assert p.flush(30) == 0


def _run_until(worker: Worker, done, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker.step()
        if done():
            return
    raise AssertionError("worker did not get there in time")


def test_worker_scores_decides_and_resumes(topics: Settings, tiny_model: Path) -> None:
    s = Synth(seed=9).population(normal=40, blasters=2, drips=1, farm=3, minutes=10)
    write_pointer(topics.state_dir, "champion", "lgbm-t1", tiny_model)
    _produce(topics, s.events, extra=[b"not json", b'{"type":"message.sent","v":9}'])
    total = len(s.events)
    cfg = WorkerConfig(group="g-test", checkpoint_interval_s=0.5, metrics_port=0, max_poll_interval_ms=6000)
    db = Database(topics.database_url)
    worker = Worker(topics, cfg, db)
    try:
        # One worker holds every partition, so each counterpart side is applied in-process.
        _run_until(worker, lambda: worker.n_signals >= total and worker.bad == 2)
        assert worker.n_local > 0 and worker.metrics.rekeyed._value.get() == 0
        worker.checkpoint()
        assert worker.bad == 2
        import urllib.request

        body = urllib.request.urlopen(worker.metrics_url, timeout=5).read().decode()
        assert "sealguard_detect_records_total" in body and "sealguard_detect_bad_records_total 2.0" in body
    finally:
        worker.close()
    with db.session() as ses:
        bans = {r.account: r for r in ses.scalars(select(DecisionRow).where(DecisionRow.action == "ban"))}
        n_scores = ses.scalar(select(func.count()).select_from(ScoreRow))
        cases = ses.scalars(select(CaseRow)).all()
        ckpt = ses.scalars(select(DetectionCheckpointRow).where(DetectionCheckpointRow.consumer_group == "g-test")).all()
    blasters = [a for a, k in s.spammers.items() if k == "blaster"]
    assert all(a in bans for a in blasters), "every blaster is banned"
    assert not set(bans) & set(s.normal), "no normal account is banned"
    assert all(b.source == "auto" and b.evidence and b.evidence.get("model_version") for b in bans.values())
    assert n_scores > 0
    assert all(c.queue in {"model_review", "user_reports", "auto_ban_sample"} for c in cases)
    assert topics.signals_topic in {r.topic for r in ckpt}
    assert any(r.state for r in ckpt)

    # A second worker of the same group resumes from the checkpoint: nothing re-consumed, nothing
    # decided twice, and new signals from a banned account do not produce a new decision. A copy
    # re-keyed by another worker (on the inbound topic) is applied through the inbound door.
    extra = [s.book.message_sent(blasters[0], s.normal[i], 100, MessageKind.text, False, ts=s.now + 1000 + i)
             for i in range(5)]
    victim = s.normal[7]
    block = s.book.blocked(s.normal[8], victim, ts=s.now + 2000)
    worker2 = Worker(topics, cfg, db)
    try:
        _produce(topics, extra)
        p = producer(topics.kafka)
        p.produce(topics.inbound_topic, key=victim, value=encode(block))
        assert p.flush(10) == 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < 12 and not worker2.assigned.is_set():
            worker2.step()
        _run_until(worker2, lambda: worker2.consumed >= 6)  # 5 new signals + 1 inbound copy
        for _ in range(10):
            worker2.step()
        assert worker2.consumed == 6, "resumed at the checkpointed offsets, nothing re-consumed"
        holder = next(sh for sh in worker2.shards.values() if victim in sh.engine.accounts)
        assert holder.engine.accounts[victim].blocks_total >= 1
        held = sum(len(sh.engine.accounts) for sh in worker2.shards.values())
        assert held >= len(s.normal), "state came back from the checkpoint"
    finally:
        worker2.close()
    with db.session() as ses:
        assert ses.scalar(select(func.count()).select_from(DecisionRow).where(DecisionRow.action == "ban")) == len(bans)


def test_background_checkpoint_is_written_by_a_forked_child(topics: Settings, tiny_model: Path, monkeypatch) -> None:
    """The periodic checkpoint pickles and writes in a forked child while the worker goes on; its
    partitions count as saved (the re-keying floor) only once the child succeeded, and a failed
    child leaves them dirty for the next checkpoint."""
    s = Synth(seed=4).population(normal=12, blasters=1, drips=0, farm=0, minutes=2)
    write_pointer(topics.state_dir, "champion", "lgbm-t1", tiny_model)
    _produce(topics, s.events)
    cfg = WorkerConfig(group="g-fork", checkpoint_interval_s=3600, metrics_port=None, max_poll_interval_ms=6000)
    db = Database(topics.database_url)
    worker = Worker(topics, cfg, db)
    try:
        _run_until(worker, lambda: worker.n_signals >= len(s.events))
        dirty = [sh for sh in worker.shards.values() if sh.dirty]
        assert dirty

        def boom(*_args: object) -> int:
            raise RuntimeError("database unreachable")

        monkeypatch.setattr("detection.worker.save_shards", boom)  # the child inherits it
        worker.checkpoint(background=True)
        assert worker._saver is not None and not any(sh.dirty for sh in dirty), "handed to the child"
        assert worker._reap(block=True)  # the child failed ...
        monkeypatch.undo()
        assert all(sh.dirty for sh in dirty), "... so a failed child leaves its partitions dirty"
        assert worker.checkpoints == 0

        worker.checkpoint(background=True)
        pid = worker._saver[0] if worker._saver else None
        assert pid is not None
        deadline = time.monotonic() + 30
        while worker._saver is not None and time.monotonic() < deadline:
            worker.step()  # the worker goes on; the child is reaped when it is done
            time.sleep(0.01)
        assert worker._saver is None and worker.checkpoints == 1
        assert all(sh.saved == sh.offsets and not sh.dirty for sh in dirty)
    finally:
        worker.close()
    with db.session() as ses:
        rows = ses.scalars(select(DetectionCheckpointRow).where(DetectionCheckpointRow.consumer_group == "g-fork")).all()
    saved = {(r.topic, r.partition): r.next_offset for r in rows}
    for sh in dirty:
        assert saved[(topics.signals_topic, sh.partition)] == sh.offsets[topics.signals_topic]
    assert any(r.state for r in rows)


def test_counterpart_fields_agree_with_the_contract() -> None:
    """The worker reads a decoded record's counterpart from the field `counterpart_of` names for its type."""
    from detection.worker import _COUNTERPART
    from sealguard.contracts import counterpart_of, decode
    from sealguard.contracts.batch import decode_batch

    s = Synth(seed=3).population(normal=10, blasters=1, drips=1, farm=2, minutes=5)
    raws = [encode(ev) for ev in s.events]
    for raw, rec in zip(raws, decode_batch(raws)):
        assert isinstance(rec, dict)
        field = _COUNTERPART.get(rec["type"])
        assert counterpart_of(decode(raw)) == (rec.get(field) if field else None)


def test_one_stored_score_per_account_and_poll_its_last() -> None:
    from detection.worker import last_per_account

    pending = [("a",), ("b",), ("a",), ("c",), ("a",), ("b",)]
    records = [(0, "m", 10, 0.1, False), (1, "m", 11, 0.2, False), (2, "m", 12, 0.3, False),
               (4, "m", 14, 0.5, False), (5, "m", 15, 0.6, False)]
    assert last_per_account(records, pending) == [(4, "m", 14, 0.5, False), (5, "m", 15, 0.6, False)]
    # the highest stays too when it is not the last and at least the review threshold (an account's
    # highest stored score is on the same side of the policy's thresholds)
    high = [(0, "m", 10, 0.97, False), (2, "m", 12, 0.3, False), (4, "m", 14, 0.5, False), (1, "m", 11, 0.2, False)]
    assert last_per_account(high, pending) == [(0, "m", 10, 0.97, False), (4, "m", 14, 0.5, False),
                                               (1, "m", 11, 0.2, False)]
    low = [(0, "m", 10, 0.45, False), (2, "m", 12, 0.3, False), (4, "m", 14, 0.2, False)]
    assert last_per_account(low, pending) == [(4, "m", 14, 0.2, False)]
    assert last_per_account(low, pending, keep_above=0.4) == [(0, "m", 10, 0.45, False), (4, "m", 14, 0.2, False)]
    assert last_per_account(records[:1], pending) == records[:1]
    assert last_per_account([], pending) == []
    distinct = [(0, "m", 10, 0.1, False), (1, "m", 11, 0.2, False), (3, "m", 13, 0.2, False)]
    assert last_per_account(distinct, pending) == distinct


def test_a_dropped_shards_state_is_freed_without_the_cycle_collector() -> None:
    """`Worker.tune_gc` freezes what each poll's records left alive, so the collector never scans
    it: that is only sound while a shard the worker drops (`let_go`) needs no collector to be freed —
    the feature state must hold no reference cycles (frozen cycles would never be freed)."""
    import gc

    from detection.checkpoint import Shard
    from detection.features import FeatureEngine, feature_row
    from detection.worker import let_go

    s = Synth(seed=11)
    s.population()
    engine = FeatureEngine()
    for ev in s.events:
        for account in engine.apply(ev):
            if account is not None:
                feature_row(engine.accounts[account], engine, ev.ts)
    assert len(engine.accounts) > 40
    shard = Shard(partition=0, engine=engine)
    del engine
    gc.collect()
    gc.disable()
    try:
        let_go(shard)
        del shard
        assert gc.collect() == 0
    finally:
        gc.enable()



def test_a_partition_the_broker_skipped_part_of_is_read_again_once() -> None:
    """Tansu sometimes moves a consumer past records it holds (sealguard/topic_reader.py): the worker
    checks each partition's run of offsets against its shard's next offset, reads a gap again once,
    and takes a gap still there after that re-read as real."""
    from types import SimpleNamespace

    from sealguard.topic_reader import OffsetGaps

    from ..sealguard.test_topic_reader import Msg, Seeks

    w = Worker.__new__(Worker)
    w._gaps = OffsetGaps("detect")
    a, b = SimpleNamespace(offsets={"sig": 10, "in": 3}), SimpleNamespace(offsets={"sig": 7})

    def check(msgs: list[Msg], shards: list[object]) -> bool:
        return w._skipped_some(msgs, [m.topic() for m in msgs], [m.partition() for m in msgs], shards)  # type: ignore[arg-type]

    # runs on from each shard's next offset, partitions and topics interleaved: nothing to do
    ok = [Msg(0, 10, "sig"), Msg(1, 7, "sig"), Msg(0, 3, "in"), Msg(0, 11, "sig"), Msg(1, 8, "sig")]
    assert not check(ok, [a, b, a, a, b])
    # partition 0 jumps 11 -> 14 inside the poll: its records from 14 on are dropped and read again from 12
    polled = [Msg(0, 10, "sig"), Msg(1, 7, "sig"), Msg(0, 11, "sig"), Msg(0, 14, "sig"), Msg(1, 8, "sig"),
              Msg(0, 15, "sig")]
    assert check(polled, [a, b, a, a, b, a])
    consumer = Seeks()
    kept = w._gaps.keep(consumer, polled)
    assert [(m.partition(), m.offset()) for m in kept] == [(0, 10), (1, 7), (0, 11), (1, 8)]
    assert consumer.sought == [("sig", 0, 12)]
    # a poll that starts past the shard's next offset (12) is read again too...
    a.offsets["sig"] = 12
    assert check([Msg(0, 14, "sig")], [a])
    # ...and once was enough: the re-read still starts at 14, so those offsets hold nothing
    assert w._gaps.keep(consumer, [Msg(0, 14, "sig")])[0].offset() == 14
    assert consumer.sought == [("sig", 0, 12)] and w._gaps.accepted == 1
