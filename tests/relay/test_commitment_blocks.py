"""Report commitments in blocks: packing, splitting and searching digests (numpy, no database),
then the store on both backends — a report verifies once and only for the recipient, an expired
block verifies nothing, a closed hour's fresh blocks are compacted into blocks per two-byte prefix
(late ones at the next pass), expired compacted blocks are purged — and the relay's purge job."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, select

from relay.server import commitment_blocks as blocks
from relay.server.store import COMPACT_DIGESTS, RelayStore, binary_commitment
from relay.testing import harness, run
from sealguard.contracts import now_ms
from sealguard.storage import Base, CommitmentBlockRow, Database, ReportedCommitmentRow

HOUR = blocks.PERIOD_MS
TTL = 30 * 86_400_000

# Digests that share their first 15 bytes, one ending in NUL bytes (numpy's S dtype pads with them),
# and the lowest and highest prefixes.
EDGES = [b"\x05" * 15 + b"\x00", b"\x05" * 14 + b"\x00\x00", b"\x05" * 15 + b"\x01", b"\x05" * 16,
         b"\x00" * 16, b"\x00" * 15 + b"\x01", b"\xff" * 16, b"\xff" * 15 + b"\x00"]


def test_pack_sorts_in_byte_order_splits_by_first_byte_and_stores_each_digest_once() -> None:
    rand = [os.urandom(16) for _ in range(5000)]
    packed = blocks.pack(b"".join(rand + EDGES + EDGES[:3]))
    assert [p for p, _, _ in packed] == sorted({d[0] for d in rand + EDGES})
    for prefix, n, block in packed:
        mine = sorted({d for d in rand + EDGES if d[0] == prefix})
        assert block == b"".join(mine) and n == len(mine)
    assert blocks.pack(b"") == []


def test_gather_groups_by_first_byte_keeping_every_digest() -> None:
    flushes = [[os.urandom(16) for _ in range(300)] + EDGES for _ in range(5)]  # the edges five times
    gathered = blocks.gather([b for f in flushes for _, _, b in blocks.pack(b"".join(f))])
    every = [d for f in flushes for d in f]
    assert [p for p, _, _ in gathered] == sorted({d[0] for d in every})  # one block per first byte, in order
    for prefix, n, digests in gathered:
        held = [digests[i:i + 16] for i in range(0, len(digests), 16)]
        assert sorted(held) == sorted(d for d in every if d[0] == prefix) and n == len(held)  # duplicates kept
    assert blocks.gather([]) == [] and blocks.gather([b""]) == []


def test_locate_and_split_keep_digests_that_end_in_nul_bytes() -> None:
    packed = [b for _, _, b in blocks.pack(b"".join(EDGES))]
    wanted = [b"\x05" * 15 + b"\x00", b"\x05" * 14 + b"\x00\x00", b"\x05" * 15 + b"\x02", b"\xff" * 16, b"\x00" * 16]
    holder = {d: i for i, b in enumerate(packed) for d in (b[j:j + 16] for j in range(0, len(b), 16))}
    assert sorted(blocks.locate(packed, blocks.digests_of(b"".join(wanted)))) == \
        [(0, holder[wanted[0]]), (1, holder[wanted[1]]), (3, holder[wanted[3]]), (4, holder[wanted[4]])]
    assert blocks.locate([b""], blocks.digests_of(wanted[0])) == [] and blocks.locate(packed, blocks.digests_of(b"")) == []
    # any order of blocks and digests; a digest held by several blocks is reported for each; two
    # wanted digests that share their first 8 bytes are told apart
    rand = [os.urandom(16) for _ in range(3000)]
    hay = [b"".join(rand[i:i + 100]) for i in range(0, 3000, 100)] + [rand[5] + EDGES[2]]
    twins = [rand[5][:8] + bytes(8), rand[5], rand[2999], EDGES[2], EDGES[2][:8] + b"\x05" * 8, os.urandom(16)]
    assert sorted(blocks.locate(hay, blocks.digests_of(b"".join(twins)))) == [(1, 0), (1, 30), (2, 29), (3, 30)]
    halves = [b for _, _, b in blocks.pack(b"".join(EDGES[:2]))] + [b for _, _, b in blocks.pack(b"".join(EDGES[1:4]))]
    assert blocks.split(halves) == [(0x0505, 4, b"".join(sorted(EDGES[:4])))]
    assert [(k, n) for k, n, _ in blocks.split([b"".join(sorted(EDGES))])] == \
        [(0x0000, 2), (0x0505, 4), (0xFFFF, 2)]  # the lowest and highest two-byte prefixes
    many = [np.sort(blocks.digests_of(os.urandom(16 * 50))).tobytes() for _ in range(400)]
    runs = blocks.split(many + many[:3])  # digests of several blocks, three of them twice
    every = sorted(b"".join(many)[i:i + 16] for i in range(0, 16 * 20_000, 16))
    assert b"".join(r for _, _, r in runs) == b"".join(every) and sum(n for _, n, _ in runs) == 20_000
    assert [k for k, _, _ in runs] == sorted({d[0] << 8 | d[1] for d in every})  # one run per prefix, in order
    for key, n, digests in runs:
        assert {digests[i:i + 2] for i in range(0, len(digests), 16)} == {key.to_bytes(2, "big")}
        assert len(digests) == 16 * n
    assert blocks.split([]) == [] and blocks.split([b""]) == []
    assert blocks.prefixes(blocks.digests_of(b"".join(EDGES[:1] + EDGES[4:7])), 16).tolist() == \
        [0x0505, 0x0000, 0x0000, 0xFFFF]


def _mid_where(pred: Callable[[bytes], bool], sender: str, recipient: str) -> bytes:
    """A message id whose commitment satisfies `pred` (a few hundred hashes at most)."""
    while True:
        mid = os.urandom(16)
        if pred(binary_commitment(mid, sender, recipient)):
            return mid


def _block_counts(db: Database, *levels: int) -> dict[int, int]:
    """Blocks of some levels (flushed and gathered: not compacted yet) per period."""
    with db.session() as s:
        return {int(p): int(n) for p, n in s.execute(select(CommitmentBlockRow.period, func.count())
                                                      .where(CommitmentBlockRow.level.in_(
                                                          levels or (blocks.FLUSHED, blocks.GATHERED)))
                                                      .group_by(CommitmentBlockRow.period))}


def _compacted(db: Database, period: int) -> list[tuple[int, int, int, bytes]]:
    """The compacted blocks of a period: (prefix, expires_at, count, digests)."""
    with db.session() as s:
        return [(int(p), int(e), int(n), bytes(d)) for p, e, n, d in s.execute(
            select(CommitmentBlockRow.prefix, CommitmentBlockRow.expires_at, CommitmentBlockRow.count,
                   CommitmentBlockRow.digests)
            .where(CommitmentBlockRow.level == blocks.COMPACTED, CommitmentBlockRow.period == period))]


def _compact_all(store: RelayStore, now: int, budget: int = COMPACT_DIGESTS) -> tuple[int, int]:
    """Compact until nothing is left: (blocks merged — flushed and gathered —, calls that merged some)."""
    merged = calls = 0
    while n := store.compact_commitments(now, budget):
        merged, calls = merged + n, calls + 1
    return merged, calls


@pytest.fixture
def store(db_url: str) -> Iterator[RelayStore]:
    """A RelayStore on the test's database (SQLite, and PostgreSQL where marked)."""
    db = Database(db_url)
    try:
        yield RelayStore(db)
    finally:
        db.dispose()


@pytest.mark.postgres
def test_a_report_verifies_once_and_only_for_the_recipient(store: RelayStore) -> None:
    db = store.db
    a, b, c = "a" + "1" * 20, "a" + "2" * 20, "a" + "3" * 20
    edges = [_mid_where(lambda d: d[-1] == 0, a, b), _mid_where(lambda d: d[0] == 0, a, b),
             _mid_where(lambda d: d[0] == 255, a, b), _mid_where(lambda d: d[-2:] == b"\x00\x00", a, b)]
    mids = [os.urandom(16) for _ in range(300)] + edges
    now = now_ms()
    store.add_commitments([(m, a, b) for m in mids[:150]], now, TTL)
    store.add_commitments([(m, a, b) for m in mids[150:]], now, TTL)  # a second flush: more blocks
    store.add_commitments([(m, a, b) for m in mids[:2]], now, TTL)  # a retried send: stored again
    assert store.file_report(b, a, "spam", edges) == (4, 4)
    with db.session() as s:  # stored whole, trailing NUL bytes included
        assert sorted(s.scalars(select(ReportedCommitmentRow.commitment))) == \
            sorted(binary_commitment(m, a, b) for m in edges)
    assert store.file_report(b, a, "spam", edges + mids[:2]) == (6, 2)  # each message once
    assert store.file_report(b, a, "spam", mids) == (304, 298)
    assert store.file_report(b, a, "spam", mids) == (304, 0)
    fresh = [os.urandom(16) for _ in range(3)]
    store.add_commitments([(m, a, b) for m in fresh], now, TTL)
    assert store.file_report(a, b, "spam", fresh) == (3, 0)  # the sender is not the recipient
    assert store.file_report(c, a, "spam", fresh) == (3, 0)  # nor is a bystander
    assert store.file_report(b, c, "spam", fresh) == (3, 0)  # nor was c the sender
    assert store.file_report(b, a, "spam", fresh + [os.urandom(16)]) == (4, 3)
    assert store.file_report(b, a, "spam", []) == (0, 0)


@pytest.mark.postgres
def test_an_expired_block_verifies_nothing_and_expiry_deletes_it(store: RelayStore) -> None:
    db = store.db
    a, b = "a" + "1" * 20, "a" + "2" * 20
    now = now_ms()
    old, live = [os.urandom(16) for _ in range(40)], [os.urandom(16) for _ in range(5)]
    store.add_commitments([(m, a, b) for m in old], now - 3 * HOUR, 0)  # expired at most 2 h ago
    store.add_commitments([(m, a, b) for m in live], now - 3 * HOUR, 3 * HOUR)  # until the end of this hour
    assert store.file_report(b, a, "spam", old) == (40, 0)
    assert store.file_report(b, a, "spam", live[:1]) == (1, 1)
    assert store.purge_expired(now)[1] == 40  # a block counts its digests
    assert store.purge_expired(now + 2 * HOUR)[1] == 5
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(CommitmentBlockRow)) == 0
        assert s.scalar(select(func.count()).select_from(ReportedCommitmentRow)) == 0  # expired with its block


def _check_compacted(db: Database, period: int, expiry: dict[bytes, int]) -> None:
    """The period's compacted blocks hold exactly the digests of `expiry` (digest -> expiry), once
    each, sorted, in one block per two-byte prefix and expiry, each under its own prefix."""
    rows = _compacted(db, period)
    assert sorted((p, e) for p, e, _, _ in rows) == sorted({(d[0] << 8 | d[1], e) for d, e in expiry.items()})
    held: dict[bytes, int] = {}
    for prefix, expires_at, n, digests in rows:
        run = [digests[i:i + 16] for i in range(0, len(digests), 16)]
        assert run == sorted(run) and len(run) == n
        assert {d[:2] for d in run} == {prefix.to_bytes(2, "big")}
        held.update((d, expires_at) for d in run)
    assert held == expiry and sum(n for _, _, n, _ in rows) == len(expiry)


@pytest.mark.postgres
def test_compaction_cuts_a_closed_hour_by_two_byte_prefix(store: RelayStore) -> None:
    db = store.db
    a, b, c = "a" + "1" * 20, "a" + "2" * 20, "a" + "3" * 20
    now = now_ms()
    older, closed, current = (blocks.period_of(now) - k * HOUR for k in (3, 2, 0))
    # digests at both ends of the key space, and ending in NUL bytes (numpy's S pads with them)
    edges = [_mid_where(lambda d: d[:2] == b"\x00\x00", a, b), _mid_where(lambda d: d[:2] == b"\xff\xff", a, b),
             _mid_where(lambda d: d[0] == 0 and d[-1] == 0, a, b), _mid_where(lambda d: d[-2:] == b"\x00\x00", a, b)]
    mids = [os.urandom(16) for _ in range(2000)] + edges
    for i in range(4):  # four flushes of the closed hour (each first byte in each: ~500 digests a flush)
        store.add_commitments([(m, a, b) for m in mids[i * 501:(i + 1) * 501]], closed + i * 1000, TTL)
    store.add_commitments([(m, a, b) for m in mids[:10]], closed + 5000, TTL)  # a retried send: again
    longer = [os.urandom(16) for _ in range(10)]
    store.add_commitments([(m, a, b) for m in longer], closed + 6000, TTL + 1)  # a node with a longer TTL
    store.add_commitments([(m, a, b) for m in mids[1500:1510]], now, TTL)  # this hour: left alone
    old = [os.urandom(16) for _ in range(30)]
    store.add_commitments([(m, a, b) for m in old], older, TTL)  # an older hour, not compacted yet
    assert store.file_report(b, a, "spam", mids[:3]) == (3, 3)  # from fresh blocks
    before = _block_counts(db)
    # the oldest hour first, a step each: its flushed blocks gathered by first byte, then split
    assert store.compact_commitments(now, budget=300) == before[older]
    gathered = len({binary_commitment(m, a, b)[0] for m in old})
    assert _block_counts(db, blocks.GATHERED) == {older: gathered}
    assert store.compact_commitments(now, budget=300) == gathered
    assert older not in _block_counts(db)
    # then the closed hour's first flushed blocks, in id order
    assert store.compact_commitments(now, budget=300) > 0
    mid = {lv: _block_counts(db, lv) for lv in (blocks.FLUSHED, blocks.GATHERED, blocks.COMPACTED)}
    assert 0 < mid[blocks.GATHERED][closed] <= 256 and 0 < mid[blocks.FLUSHED][closed] < before[closed]
    assert closed not in mid[blocks.COMPACTED]
    assert store.file_report(b, a, "spam", mids[3:6] + mids[-6:]) == (9, 9)  # from every level at once
    # 2,024 digests in the closed hour (with the retried ones), ~8 a first byte: with 300 a call,
    # ~7 calls gather them and ~7 split them
    merged, calls = _compact_all(store, now, budget=300)
    assert merged > mid[blocks.FLUSHED][closed] + mid[blocks.GATHERED][closed] and 8 <= calls <= 16
    assert _block_counts(db) == {current: before[current]}  # only this hour's fresh blocks are left
    assert store.compact_commitments(now) == 0
    ours = {binary_commitment(m, a, b): closed + HOUR + TTL for m in mids}
    _check_compacted(db, closed, ours | {binary_commitment(m, a, b): closed + HOUR + TTL + 1 for m in longer})
    _check_compacted(db, older, {binary_commitment(m, a, b): older + HOUR + TTL for m in old})
    assert store.file_report(b, a, "spam", mids) == (2004, 1992)  # the twelve reported before stay reported
    assert store.file_report(b, a, "spam", mids) == (2004, 0)
    assert store.file_report(b, a, "spam", old + longer) == (40, 40)
    assert store.file_report(a, b, "spam", edges) == (4, 0)  # the sender is not the recipient
    assert store.file_report(c, a, "spam", edges) == (4, 0)  # nor is a bystander
    with db.session() as s:  # stored whole, trailing NUL bytes included
        assert {binary_commitment(m, a, b) for m in edges} <= set(s.scalars(select(ReportedCommitmentRow.commitment)))


@pytest.mark.postgres
def test_the_current_hour_is_gathered_a_full_chunk_at_a_time(store: RelayStore) -> None:
    db = store.db
    a, b = "a" + "1" * 20, "a" + "2" * 20
    now = now_ms()
    current = blocks.period_of(now)
    mids = [os.urandom(16) for _ in range(1000)]
    for i in range(10):  # ten flushes of 100 this hour
        store.add_commitments([(m, a, b) for m in mids[i * 100:(i + 1) * 100]], current + i, TTL)
    flushed = _block_counts(db, blocks.FLUSHED)[current]
    assert _compact_all(store, now, budget=2000) == (0, 0)  # not a full chunk yet: left as flushed
    merged, calls = _compact_all(store, now, budget=350)  # four flushes a chunk: two chunks, two left
    assert calls == 2 and 0 < _block_counts(db, blocks.FLUSHED)[current] < flushed - merged + 256
    assert _block_counts(db, blocks.GATHERED)[current] <= 2 * 256
    assert _block_counts(db, blocks.COMPACTED) == {}  # the hour is open: nothing split
    assert store.file_report(b, a, "spam", mids[::7]) == (143, 143)  # gathered and flushed blocks alike
    assert store.file_report(b, a, "spam", mids[::7]) == (143, 0)
    # once the hour has closed: the rest gathered, then all of it split
    later = now + HOUR
    _compact_all(store, later)
    assert _block_counts(db) == {}
    _check_compacted(db, current, {binary_commitment(m, a, b): current + HOUR + TTL for m in mids})
    assert store.file_report(b, a, "spam", mids) == (1000, 1000 - 143)


@pytest.mark.postgres
def test_a_late_block_of_a_compacted_hour_is_compacted_at_the_next_pass(store: RelayStore) -> None:
    db = store.db
    a, b = "a" + "1" * 20, "a" + "2" * 20
    now = now_ms()
    closed = blocks.period_of(now) - HOUR
    mids = [os.urandom(16) for _ in range(500)]
    store.add_commitments([(m, a, b) for m in mids], closed + 10, TTL)
    fresh = _block_counts(db)[closed]
    assert _compact_all(store, now) == (fresh + len({binary_commitment(m, a, b)[0] for m in mids}), 2)
    assert _block_counts(db) == {} and len(_compacted(db, closed)) > 400
    # flushed late (another node's clock, a flush that crossed the hour): a digest under a two-byte
    # prefix the hour's compacted blocks hold already, and one that ends in NUL bytes
    taken = {binary_commitment(m, a, b)[:2] for m in mids}
    late = [_mid_where(lambda d: d[:2] in taken, a, b), _mid_where(lambda d: d[-1] == 0, a, b), os.urandom(16)]
    store.add_commitments([(m, a, b) for m in late + mids[:5]], closed + HOUR - 1, TTL)  # some again
    assert _block_counts(db) == {closed: len({binary_commitment(m, a, b)[0] for m in late + mids[:5]})}
    assert store.file_report(b, a, "spam", late[:1]) == (1, 1)  # found among the fresh blocks
    merged, calls = _compact_all(store, now_ms())  # gathered (one block each), then split
    assert calls == 2 and merged == 2 * len({binary_commitment(m, a, b)[0] for m in late + mids[:5]})
    assert _block_counts(db) == {}
    rows = _compacted(db, closed)
    assert len([p for p, _, _, _ in rows if p == int.from_bytes(binary_commitment(late[0], a, b)[:2], "big")]) == 2
    assert sum(n for _, _, n, _ in rows) == 500 + 3 + 5  # the retried five are kept twice, in two rows
    assert store.file_report(b, a, "spam", late + mids) == (503, 502)
    assert store.file_report(b, a, "spam", late + mids) == (503, 0)


@pytest.mark.postgres
def test_expired_compacted_blocks_are_purged(store: RelayStore) -> None:
    db = store.db
    a, b = "a" + "1" * 20, "a" + "2" * 20
    now = now_ms()
    closed = blocks.period_of(now) - 2 * HOUR
    short, long = [os.urandom(16) for _ in range(200)], [os.urandom(16) for _ in range(100)]
    store.add_commitments([(m, a, b) for m in short], closed, 0)  # expired at the end of its hour
    store.add_commitments([(m, a, b) for m in long], closed, 4 * HOUR)
    assert _compact_all(store, now)[0] > 0 and _block_counts(db) == {}
    assert store.file_report(b, a, "spam", short + long[:1]) == (201, 1)  # the expired ones verify nothing
    assert store.purge_expired(now)[1] == 200  # a compacted block counts its digests too
    assert {e for _, e, _, _ in _compacted(db, closed)} == {closed + HOUR + 4 * HOUR}
    assert store.purge_expired(now + 4 * HOUR)[1] == 100
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(CommitmentBlockRow)) == 0
        assert s.scalar(select(func.count()).select_from(ReportedCommitmentRow)) == 0  # expired with its block
    assert store.file_report(b, a, "spam", long) == (100, 0)


@pytest.mark.postgres
def test_the_migration_creates_the_tables_as_declared(db_url: str) -> None:
    db = Database(db_url)
    try:
        ours = {"commitment_blocks", "reported_commitments"}
        with db.engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert [d for d in diffs if ours & {getattr(x, "name", None) for x in _objects(d)}] == []
    finally:
        db.dispose()


def _objects(diff: object) -> list[object]:
    """The schema objects an autogenerate diff names (tables, indexes, their tables)."""
    items = diff if isinstance(diff, list) else [diff]
    out: list[object] = []
    for item in items:
        for x in item if isinstance(item, tuple) else (item,):
            out.append(x)
            if hasattr(x, "table"):
                out.append(x.table)
    return out


def test_the_relay_purge_job_compacts_closed_hours(tmp: Path) -> None:
    async def main() -> None:
        async with harness(tmp) as h:
            a, b = await h.user(), await h.user()
            assert a.account_id and b.account_id
            mids = [await a.send(b.account_id, f"m{i}".encode()) for i in range(3)]
            for _ in mids:
                await asyncio.wait_for(b.inbox.get(), 5)
            now = now_ms()
            closed = blocks.period_of(now) - HOUR
            old = [os.urandom(16) for _ in range(600)]
            for i in range(3):  # flushes of the last hour, as another node (or this one) wrote them
                h.server.store.add_commitments([(m, a.account_id, b.account_id) for m in old[i * 200:(i + 1) * 200]],
                                               closed + i, TTL)
            firsts = {binary_commitment(m, a.account_id, b.account_id)[0] for m in old}
            assert _block_counts(h.db)[closed] > len(firsts)
            await h.server._purge()
            assert closed not in _block_counts(h.db)
            assert len(_compacted(h.db, closed)) == len({binary_commitment(m, a.account_id, b.account_id)[:2]
                                                         for m in old})
            assert await b.report(a.account_id, mids) == 3  # this hour's, flushed by the report
            assert h.server.store.file_report(b.account_id, a.account_id, "spam", old) == (600, 600)

    run(main())
