"""The relay's database work on both backends (SQLite and PostgreSQL)."""

from __future__ import annotations

import os

import pytest

from relay.server.store import (
    AlreadyRegistered,
    HandleTaken,
    QueuedOut,
    RelayStore,
    binary_commitment,
    commitment,
    legacy_commitment,
)
from sealguard.contracts import now_ms
from sealguard.storage import Database, MessageCommitmentRow


@pytest.mark.postgres
def test_relay_store_on_both_backends(db_url: str) -> None:
    db = Database(db_url)
    try:
        store = RelayStore(db)
        a = store.create_account("idkey-a", "curve-a", "n000000000001", "sdk")
        b = store.create_account("idkey-b", "curve-b", "n000000000002", "sdk")
        with pytest.raises(AlreadyRegistered):
            store.create_account("idkey-a", "curve-x", "n000000000001", "sdk")
        assert store.all_account_ids() == {a, b}
        store.claim_handle(a, "ann")
        with pytest.raises(HandleTaken):
            store.claim_handle(b, "ann")
        assert store.lookup_handle("ann") == a
        # prekeys: one-time keys once each, then the fallback
        assert store.upload_prekeys(b, [("k1", "p1"), ("k2", "p2")], ("f1", "pf")) == 2
        assert [store.claim_prekey(b) for _ in range(3)] == [("k1", "p1", False), ("k2", "p2", False),
                                                             ("f1", "pf", True)]
        # offline queue with a quota, withholding, deletion
        now = now_ms()
        items = [QueuedOut(os.urandom(16), b, a, None, 0, b"ct", now, now + 60_000) for _ in range(3)]
        assert store.enqueue(items, quota=2) == [True, True, False]
        assert store.enqueue(items[:1], quota=2) == [False]  # quota counts what is already queued
        assert store.enqueue(items[:1], quota=3) == [True]  # already queued (a retry, another node): kept once
        assert store.count_queue(b) == 2
        assert len(store.load_queue(b)) == 2
        assert store.set_withheld(a, True) == 2
        assert store.load_queue(b) == [] and store.queue_depth() == (0, 2)
        assert store.set_withheld(a, False) == 2
        # messages queued FOR a banned account are withheld too; a release keeps those whose
        # other party is still banned
        assert store.set_withheld(b, True) == 2 and store.queue_depth() == (0, 2)
        assert store.set_withheld(a, True) == 0
        assert store.set_withheld(b, False, banned={a}) == 0
        assert store.set_withheld(a, False, banned=set()) == 2
        assert store.delete_queued([(items[0].message_id, b)]) == 1
        assert store.queue_depth() == (1, 0)
        # acks deleted in chunks: 1,100 at once, plus one the queue never held
        many = [QueuedOut(os.urandom(16), a, b, None, 0, b"ct", now, now + 60_000) for _ in range(1100)]
        assert all(store.enqueue(many, quota=2000))
        assert store.delete_queued([(m.message_id, a) for m in many] + [(os.urandom(16), a)]) == 1100
        assert store.queue_depth() == (1, 0)
        # commitments and report verification
        mids = [os.urandom(16) for _ in range(3)]
        store.add_commitments([(m, a, b) for m in mids], now, 60_000)
        store.add_commitments([(mids[0], a, b)], now, 60_000)  # a duplicate is ignored
        assert store.file_report(b, a, "spam", mids + [os.urandom(16)]) == (4, 3)
        assert store.file_report(b, a, "spam", mids) == (3, 0)
        assert store.file_report(a, b, "spam", mids) == (3, 0)
        assert commitment(mids[0], a, b) != commitment(mids[0], b, a)
        # a commitment stored in the earlier 256-bit form still verifies (until its TTL)
        old = os.urandom(16)
        with db.session() as s, s.begin():
            s.add(MessageCommitmentRow(commitment=legacy_commitment(old, a, b), expires_at=now + 60_000,
                                       reported=False))
        assert store.file_report(b, a, "spam", [old]) == (1, 1)
        # and so does the 128-bit hex form (what SQLite stored before it stored 16-byte BLOBs)
        hexed = os.urandom(16)
        with db.session() as s, s.begin():
            s.add(MessageCommitmentRow(commitment=commitment(hexed, a, b), expires_at=now + 60_000, reported=False))
        assert store.file_report(b, a, "spam", [hexed]) == (1, 1)
        if db.engine.dialect.name == "sqlite":  # and the 16-byte BLOBs SQLite stored before blocks
            blob = os.urandom(16)
            with db.session() as s, s.begin():
                s.add(MessageCommitmentRow(commitment=binary_commitment(blob, a, b),  # type: ignore[arg-type]
                                           expires_at=now + 60_000, reported=False))
            assert store.file_report(b, a, "spam", [blob]) == (1, 1)
            assert store.file_report(b, a, "spam", [blob]) == (1, 0)
        # expiry keeps withheld rows
        store.enqueue([QueuedOut(os.urandom(16), b, a, None, 0, b"x", now, now - 1)], quota=10)
        store.set_withheld(a, True)
        q, _, blobs = store.purge_expired(now)
        assert (q, blobs) == (0, []) and store.queue_depth()[1] == 2
        # notices and applications
        store.add_notice(a, "warned", "d" + "1" * 32, "spam")
        assert not store.ensure_notice(a, "warned", "d" + "1" * 32, "spam")
        assert store.ensure_notice(a, "restricted", "d" + "2" * 32, "spam")
        pending = store.pending_notices(a)
        assert [p[2] for p in pending] == ["warned", "restricted"]
        store.mark_notices_delivered([p[0] for p in pending])
        assert store.pending_notices(a) == []
        assert store.record_application("d" + "1" * 32, "relay-1")
        assert not store.record_application("d" + "1" * 32, "relay-1")
        assert store.applied_decisions("relay-1") == {"d" + "1" * 32}
    finally:
        db.dispose()
