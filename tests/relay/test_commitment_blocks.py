"""Report commitments in blocks: packing, merging and searching digests (numpy, no database), then
the store on both backends — a report verifies once and only for the recipient, an expired block
verifies nothing, a closed hour's blocks merge into one per prefix — and the relay's purge job."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, select

from relay.server import commitment_blocks as blocks
from relay.server.store import RelayStore, binary_commitment
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


def test_find_and_merge_keep_digests_that_end_in_nul_bytes() -> None:
    block = {p: b for p, _, b in blocks.pack(b"".join(EDGES))}[5]
    wanted = [b"\x05" * 15 + b"\x00", b"\x05" * 14 + b"\x00\x00", b"\x05" * 15 + b"\x02"]
    found = blocks.find(block, blocks.digests_of(b"".join(wanted)))
    assert found.tolist() == [True, True, False]
    assert blocks.find(b"", blocks.digests_of(wanted[0])).tolist() == [False]
    halves = [b for _, _, b in blocks.pack(b"".join(EDGES[:2]))] + [b for _, _, b in blocks.pack(b"".join(EDGES[1:4]))]
    assert blocks.merge(halves) == (4, b"".join(sorted(EDGES[:4])))
    many = [np.sort(blocks.digests_of(os.urandom(16 * 50))).tobytes() for _ in range(40)]
    n, merged = blocks.merge(many)
    assert merged == b"".join(sorted(b"".join(many)[i:i + 16] for i in range(0, 16 * 2000, 16))) and n == 2000


def _mid_where(pred: Callable[[bytes], bool], sender: str, recipient: str) -> bytes:
    """A message id whose commitment satisfies `pred` (a few hundred hashes at most)."""
    while True:
        mid = os.urandom(16)
        if pred(binary_commitment(mid, sender, recipient)):
            return mid


def _block_counts(db: Database) -> dict[int, int]:
    """Blocks per period."""
    with db.session() as s:
        return {int(p): int(n) for p, n in s.execute(select(CommitmentBlockRow.period, func.count())
                                                      .group_by(CommitmentBlockRow.period))}


@pytest.mark.postgres
def test_a_report_verifies_once_and_only_for_the_recipient(db_url: str) -> None:
    db = Database(db_url)
    try:
        store = RelayStore(db)
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
    finally:
        db.dispose()


@pytest.mark.postgres
def test_an_expired_block_verifies_nothing_and_expiry_deletes_it(db_url: str) -> None:
    db = Database(db_url)
    try:
        store = RelayStore(db)
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
    finally:
        db.dispose()


@pytest.mark.postgres
def test_compaction_merges_a_closed_hour_into_one_block_per_prefix(db_url: str) -> None:
    db = Database(db_url)
    try:
        store = RelayStore(db)
        a, b = "a" + "1" * 20, "a" + "2" * 20
        now = now_ms()
        closed, current = blocks.period_of(now) - 2 * HOUR, blocks.period_of(now)
        mids = [os.urandom(16) for _ in range(2000)]
        for i in range(4):  # four flushes of the closed hour (each prefix in each: 500 digests a flush)
            store.add_commitments([(m, a, b) for m in mids[i * 500:(i + 1) * 500]], closed + i * 1000, TTL)
        store.add_commitments([(m, a, b) for m in mids[:10]], closed + 5000, TTL + 1)  # again, a later expiry
        store.add_commitments([(m, a, b) for m in mids[1500:1510]], now, TTL)  # this hour: left alone
        assert store.file_report(b, a, "spam", mids[:3]) == (3, 3)
        before = _block_counts(db)
        todo = store.commitment_periods_to_compact(now)
        assert {t for _, t in todo} == {closed} and len(todo) > 200
        merged = sum(store.compact_commitments(p, t) for p, t in todo)
        prefixes = {binary_commitment(m, a, b)[0] for m in mids}
        after = _block_counts(db)
        assert after == {closed: len(prefixes), current: before[current]}
        assert merged == before[closed] - (len(prefixes) - len(todo))  # every block of a prefix with several
        with db.session() as s:
            rows = s.execute(select(CommitmentBlockRow.prefix, CommitmentBlockRow.expires_at,
                                    CommitmentBlockRow.count, CommitmentBlockRow.digests)
                             .where(CommitmentBlockRow.period == closed)).all()
        assert len({r[0] for r in rows}) == len(rows)  # one block per prefix
        assert sum(r[2] for r in rows) == 2000  # each digest once
        for prefix, expires_at, n, digests in rows:
            expect = sorted(binary_commitment(m, a, b) for m in mids if binary_commitment(m, a, b)[0] == prefix)
            assert digests == b"".join(expect) and n == len(expect)
            expected_expiry = closed + HOUR + TTL + (1 if any(binary_commitment(m, a, b)[0] == prefix
                                                               for m in mids[:10]) else 0)
            assert expires_at == expected_expiry  # the latest of the merged blocks'
        assert store.commitment_periods_to_compact(now) == []
        assert store.compact_commitments(0, current - 10 * HOUR) == 0  # nothing there: nothing written
        assert store.file_report(b, a, "spam", mids) == (2000, 1997)  # the three reported before stay reported
        assert store.file_report(b, a, "spam", mids[:3]) == (3, 0)
    finally:
        db.dispose()


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
            prefixes = {binary_commitment(m, a.account_id, b.account_id)[0] for m in old}
            assert _block_counts(h.db)[closed] > len(prefixes)
            await h.server._purge()
            assert _block_counts(h.db)[closed] == len(prefixes)
            assert await b.report(a.account_id, mids) == 3  # this hour's, flushed by the report
            assert h.server.store.file_report(b.account_id, a.account_id, "spam", old) == (600, 600)

    run(main())
