"""The global net book of detection/netfeed.py: de-duplication by account, exact windows whatever
the arrival order, retention, and the view's fallback to the partitions held (no broker needed;
the cluster test tests/cluster/test_net_feed.py runs the feed between two worker processes)."""

from __future__ import annotations

import random

from detection.features import WINDOWS, NetBook, NetView
from detection.netfeed import GlobalNetBook, NetFeedView

H = 3_600_000


def _offline(regs: list[tuple[str, str, int]], bucket: str, w: int, ts: int) -> float:
    """The offline reference: one NetBook fed in time order up to `ts` (what the replay counts)."""
    book = NetBook()
    for _, b, t in sorted(regs, key=lambda r: r[2]):
        if t <= ts:
            book.register(b, t)
    return book.count(bucket, w, ts)


def test_a_registration_counts_once_however_often_it_arrives() -> None:
    book = GlobalNetBook()
    t0 = 1_800_000_000_000
    assert book.add("acct-a", "net-1", t0)
    # republished after a crash, read back from the topic, a whole-topic replay: same account
    assert not book.add("acct-a", "net-1", t0)
    assert not book.add("acct-a", "net-1", t0 + 1000)
    assert not book.add("acct-a", "net-2", t0)  # once per account, whatever it says the second time
    assert book.add("acct-b", "net-1", t0 + 2000)
    assert book.duplicates == 3
    assert len(book) == 2
    assert [book.count("net-1", w, t0 + 2000) for w in range(3)] == [2.0, 2.0, 2.0]
    assert book.count("net-2", 2, t0 + 2000) == 0.0
    assert book.count(None, 2, t0) == 0.0


def test_windows_match_the_offline_count_in_any_arrival_order() -> None:
    rng = random.Random(7)
    t0 = 1_800_000_000_000
    regs = [(f"acct-{i}", rng.choice(["net-1", "net-2"]), t0 + rng.randrange(0, 20 * H)) for i in range(400)]
    shuffled = regs + rng.sample(regs, 100)  # the same records again (replays)
    rng.shuffle(shuffled)
    book = GlobalNetBook()
    for account, bucket, ts in shuffled:
        book.add(account, bucket, ts)
    assert len(book) == 400
    for ts in [t0 + rng.randrange(0, 26 * H) for _ in range(40)]:
        for w in range(len(WINDOWS)):
            assert book.count("net-1", w, ts) == _offline(regs, "net-1", w, ts), (w, ts)


def test_retention_forgets_old_accounts_and_times() -> None:
    book = GlobalNetBook(retention_ms=2 * H)
    t0 = 1_800_000_000_000
    book.add("old", "net-1", t0)
    book.add("new", "net-1", t0 + 3 * H)
    book._prune()  # amortised in `add` (every doubling of the memory); forced here
    assert "old" not in book.seen and book.times["net-1"] == [t0 + 3 * H]
    assert not book.add("older", "net-1", t0)  # older than the retention: not counted
    assert book.count("net-1", 2, t0 + 3 * H) == 1.0


def test_the_view_never_counts_less_than_the_partitions_held() -> None:
    t0 = 1_800_000_000_000
    local_a, local_b = NetBook(), NetBook()
    for i in range(3):
        local_a.register("net-1", t0 + i)
        local_b.register("net-1", t0 + 10 + i)
    book = GlobalNetBook()
    view = NetFeedView(book, [local_a, local_b])
    old = NetView([local_a, local_b])
    # the feed has not caught up yet: the partitions held count, as without the feed
    assert view.count("net-1", 0, t0 + 100) == old.count("net-1", 0, t0 + 100) == 6.0
    for i in range(10):  # everyone's registrations arrive through the feed
        book.add(f"acct-{i}", "net-1", t0 + i)
    assert view.count("net-1", 0, t0 + 100) == 10.0
    assert view.count("net-1", 1, t0 + 100) == 10.0
    assert view.count("net-9", 0, t0 + 100) == 0.0
