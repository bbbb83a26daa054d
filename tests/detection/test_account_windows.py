"""An account's windows as one running sum with bucket snapshots (`AccountState.cum`/`wins`) against
the ring per window they replaced (`RollingVector` + `RollingDistinct`, kept for net buckets and saved
strangers): the same live sums as of any time, and checkpoints written before the change restore to
the same features."""

from __future__ import annotations

import pickle
import random
import zlib
from pathlib import Path
from typing import Any

import pytest

from detection.features import WINDOWS, FeatureEngine, ScoreSchedule, feature_row
from detection.features.operators import (
    BLOCKS,
    DIRECT,
    FIRST,
    GAP_SQ,
    GAP_SUM,
    GAPS,
    N_CHANNELS,
    RECEIVED,
    RECIPIENTS,
    REPLY,
    REPORTS,
    SENDS,
    STRANGERS,
)
from detection.features.state import _recipients_1h, _sends_1m
from detection.features.windows import RollingDistinct, RollingVector

DATA = Path(__file__).parent / "data"


class RingsPerWindow:
    """The former per-account windows: a RollingVector and a RollingDistinct per window, updated as
    `FeatureEngine.send`/`receive`/`_add` updated them up to 3b66d32."""

    def __init__(self) -> None:
        self.vecs = tuple(RollingVector(w, N_CHANNELS) for w in WINDOWS)
        self.dists = tuple(RollingDistinct(v, RECIPIENTS, w) for v, w in zip(self.vecs, WINDOWS))

    def add(self, ts: int, deltas: dict[int, int], recipient: str | None = None) -> None:
        for vec, dist in zip(self.vecs, self.dists):
            v = vec.vector(ts)
            for c, x in deltas.items():
                v[c] += x
                vec.tot[c] += x
            if recipient is not None and dist._last.get(recipient) != vec._head:
                dist.see_current(v, recipient)

    def totals(self, ts: int) -> tuple[list[float], ...]:
        return tuple(list(v.totals(ts)) for v in self.vecs)


def _drive(rng: random.Random, steps: int) -> None:
    engine = FeatureEngine()
    ref = RingsPerWindow()
    people = [f"p{i}" for i in range(rng.choice((3, 12, 60)))]
    ts = 1_800_000_000_000 + rng.randrange(3_600_000)
    last_send: int | None = None
    for _ in range(steps):
        # mostly forward, by anything from a millisecond to two days; sometimes late (an event older than
        # the account's newest bucket counts in the newest bucket)
        r = rng.random()
        if r < 0.08:
            at = ts - rng.randrange(1, 400_000)
        else:
            ts += rng.choice((1, 700, 4_000, 30_000, 200_000, 1_500_000, 4_000_000, 30_000_000, 100_000_000))
            at = ts
        kind = rng.random()
        if kind < 0.55:
            recipient = rng.choice(people) if rng.random() < 0.85 else None
            first = rng.random() < 0.3
            st = engine.accounts.get("a")
            reply = recipient is not None and st is not None and recipient in st.inbound_from
            engine.send(at, "a", recipient, first)
            d = {SENDS: 1}
            if last_send is not None and at >= last_send:
                gap = at - last_send
                d.update({GAPS: 1, GAP_SUM: gap, GAP_SQ: gap * gap})
            last_send = at
            if recipient is not None:
                d[DIRECT] = 1
                if first:
                    d[FIRST] = 1
                if reply:
                    d[REPLY] = 1
            ref.add(at, d, recipient)
        elif kind < 0.75:
            engine.receive(at, "a", rng.choice(people))
            ref.add(at, {RECEIVED: 1})
        elif kind < 0.82:
            engine.block(at, "a")
            ref.add(at, {BLOCKS: 1})
        elif kind < 0.88:
            verified = rng.random() < 0.5
            engine.report(at, "a", verified)
            ref.add(at, {REPORTS: 3 if verified else 1})
        else:
            engine.group_add(at, "a", False)
            ref.add(at, {STRANGERS: 1})
        st = engine.accounts["a"]
        # reads as the worker makes them: the schedule's (1 minute, then 1 hour), or a whole row; at the
        # event's time, or later (an idle account scored again), or earlier
        r = rng.random()
        read = at + rng.choice((0, 0, 0, 3_000, 70_000, 4_000_000, 90_000_000)) if r < 0.9 else at - 10_000
        if rng.random() < 0.5:
            assert _sends_1m(st, read) == ref.vecs[0].totals(read)[SENDS]
            if rng.random() < 0.7:
                assert _recipients_1h(st, read) == ref.vecs[1].totals(read)[RECIPIENTS]
        else:
            got = st.totals(read)
            assert list(got) == list(ref.totals(read)), (read, got, ref.totals(read))
            assert [v.tot for v in st.vecs] == [list(v.tot) for v in ref.vecs]
    assert list(st.totals(ts)) == list(ref.totals(ts))


@pytest.mark.parametrize("seed", range(40))
def test_running_sums_equal_a_ring_per_window(seed: int) -> None:
    _drive(random.Random(seed), 600)


def _fixture() -> dict[str, Any]:
    return pickle.loads(zlib.decompress((DATA / "checkpoint_3b66d32.bin").read_bytes()))


def _replay(engine: FeatureEngine, records: list[dict[str, Any]], rows: list[Any] | None = None) -> None:
    sched = ScoreSchedule()
    for r in records:
        for account, received in ((engine.outbound_record(r), False), (engine.inbound_record(r), True)):
            if account is not None:
                st = engine.accounts[account]
                if sched.due(st, r["ts"], received=received):
                    sched.mark(st, r["ts"])
                    if rows is not None:
                        rows.append((account, r["ts"], feature_row(st, engine, r["ts"])))


def test_a_checkpoint_written_before_the_running_sums_restores_to_the_same_features() -> None:
    """Accounts pickled by 3b66d32 (a RollingVector and RollingDistinct per window; see the fixture's
    `written_by`) after the first half of a stream of the bench's signals: restored, they give the same
    features as the same half replayed now, and after the second half, the same scored rows."""
    fx = _fixture()
    records, half = fx["records"], fx["checkpoint_after"]
    fresh = FeatureEngine()
    _replay(fresh, records[:half])
    restored = FeatureEngine(pickle.loads(fx["book"]))
    restored.accounts = pickle.loads(fx["accounts"])
    assert restored.accounts.keys() == fresh.accounts.keys() and len(fresh.accounts) > 500
    t = records[half - 1]["ts"]
    for dt in (0, 30_000, 3_000_000, 50_000_000):
        for a, st in fresh.accounts.items():
            assert feature_row(restored.accounts[a], restored, t + dt) == feature_row(st, fresh, t + dt), a
    # again, without the reads above expiring anything
    fresh, restored = FeatureEngine(), FeatureEngine(pickle.loads(fx["book"]))
    _replay(fresh, records[:half])
    restored.accounts = pickle.loads(fx["accounts"])
    for a, st in restored.accounts.items():  # the schedule's bookkeeping came with the checkpoint
        assert st.sched == fresh.accounts[a].sched
    rows_fresh: list[Any] = []
    rows_restored: list[Any] = []
    _replay(fresh, records[half:], rows_fresh)
    _replay(restored, records[half:], rows_restored)
    assert rows_restored == rows_fresh and len(rows_fresh) > 300


def test_the_running_sums_pickle_and_go_on_counting() -> None:
    fx = _fixture()
    records, half = fx["records"], fx["checkpoint_after"]
    engine = FeatureEngine()
    _replay(engine, records[:half])
    again = FeatureEngine(pickle.loads(pickle.dumps(engine.book, protocol=5)))
    again.accounts = pickle.loads(pickle.dumps(engine.accounts, protocol=5))
    rows_a: list[Any] = []
    rows_b: list[Any] = []
    _replay(engine, records[half:], rows_a)
    _replay(again, records[half:], rows_b)
    assert rows_a == rows_b and len(rows_a) > 300
