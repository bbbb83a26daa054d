"""The global net book of detection/netfeed.py: de-duplication by account, exact windows whatever
the arrival order, retention, the view's fallback to the partitions held, and the feed across a
broker reset (tests/cluster/test_net_feed.py runs the feed between two worker processes)."""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from detection.features import WINDOWS, NetBook, NetView
from detection.netfeed import GlobalNetBook, NetFeed, NetFeedView
from sealguard.broker import EmbeddedBroker
from sealguard.contracts import encode, new_account_id
from sealguard.contracts.signals import AccountRegistered
from sealguard.contracts.types import ClientKind
from sealguard.settings import Settings
from sealguard.stream import producer

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


def test_counts_reads_every_window_as_count_does() -> None:
    """`counts` (the fused feature row's one read per row) equals `count` per window, for the feed's
    view, the partitions' view and one book, whichever side is larger and as windows expire."""
    import random

    rng = random.Random(7)
    t0 = 1_800_000_000_000
    local_a, local_b = NetBook(), NetBook()
    book = GlobalNetBook()
    views = [NetFeedView(book, [local_a, local_b]), NetView([local_a, local_b]), local_a]
    ts = t0
    for i in range(400):
        ts += rng.choice([10, 900, 40_000, 700_000])
        bucket = rng.choice(["net-1", "net-2", "net-3"])
        if rng.random() < 0.5:
            rng.choice([local_a, local_b]).register(bucket, ts)
        if rng.random() < 0.6:
            book.add(f"acct-{i}", bucket, ts)
        for view in views:
            for b in ("net-1", "net-2", "net-9", None):
                want = [view.count(b, w, ts) for w in range(3)]
                got = view.counts(b, ts)
                assert got == want and all(type(x) is float for x in got), (view, b, ts)


def test_counts_remembered_per_bucket_are_what_the_books_say() -> None:
    """NetFeedView.counts remembers the held books' sums per bucket (read again at the same window
    indexes with no registration since, they are the same): against a twin view that recomputes
    every read, over registrations into held books, reads several times per time, time moving back
    a little (a partition behind another), single-window reads in between, and a change of books."""
    rng = random.Random(5)
    t0 = 1_800_000_000_000
    twins = []
    for _ in range(2):
        local = [NetBook(), NetBook()]
        twins.append((local, GlobalNetBook(), []))
    (loc_a, glob_a, _), (loc_b, glob_b, _) = twins
    cached, fresh = NetFeedView(glob_a, loc_a), NetFeedView(glob_b, loc_b)
    ts, hits = t0, 0
    for i in range(3000):
        ts += rng.choice([0, 5, 300, 2_000, 6_000, 70_000, 400_000, -3_000])
        bucket = rng.choice(["net-1", "net-2", "net-3"])
        r = rng.random()
        if r < 0.08:
            which = rng.randrange(2)
            loc_a[which].register(bucket, ts)
            loc_b[which].register(bucket, ts)
        elif r < 0.12:
            glob_a.add(f"acct-{i}", bucket, ts)
            glob_b.add(f"acct-{i}", bucket, ts)
        elif r < 0.14:
            w = rng.randrange(3)
            assert cached.count(bucket, w, ts) == fresh.count(bucket, w, ts)
        elif r < 0.145:  # a revocation hands a book over: the worker replaces the list's content
            loc_a.append(loc_a.pop(0))
            loc_b.append(loc_b.pop(0))
            cached.forget_all()
        for b in ("net-1", "net-2", "net-3", "net-9", None):
            before = dict(cached._local)
            got = cached.counts(b, ts)
            fresh.forget_all()
            assert got == fresh.counts(b, ts), (i, b, ts)
            hits += b is not None and cached._local == before and b in before
    assert hits > 1000


def _until(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout}s")


def test_the_feed_counts_others_and_itself_once_and_survives_a_broker_reset(tmp_path: Path) -> None:
    tag = secrets.token_hex(3)
    settings = Settings(state_dir=tmp_path / "state", partitions=2, signals_topic=f"f{tag}.signals",
                        inbound_topic=f"f{tag}.inbound", enforcement_topic=f"f{tag}.enf", scores_topic=f"f{tag}.scores")

    def reg(ts: int) -> AccountRegistered:
        return AccountRegistered(account=new_account_id(), net_bucket="n0000000000aa", client_kind=ClientKind.mobile,
                                 ts=ts)

    with EmbeddedBroker(settings) as broker:
        live = settings.model_copy(update={"kafka": broker.bootstrap})
        p = producer(broker.bootstrap)
        feed = NetFeed.for_worker(live, [], p)
        assert feed is not None and feed.topic == f"f{tag}.signals.net"  # follows its signals topic
        feed.health_interval_s = 0.3
        try:
            t0 = 1_800_000_000_000
            other = reg(t0)  # another worker's registration, read from the topic
            p.produce(feed.topic, key=other.net_bucket, value=encode(other))
            p.flush(10)
            _until(lambda: len(feed.book) == 1, "another worker's registration counted")
            own = reg(t0 + 1000)
            feed.publish(own, encode(own))  # counted at once ...
            assert len(feed.book) == 2
            p.flush(10)
            _until(lambda: feed.book.duplicates == 1, "own registration read back")  # ... and not again
            assert len(feed.book) == 2

            broker.restart()  # Tansu comes back empty: the topic and its log are gone
            later = reg(t0 + 2000)
            _until(lambda: feed.resets >= 1, "reset noticed")
            p.produce(feed.topic, key=later.net_bucket, value=encode(later))
            p.flush(30)
            _until(lambda: len(feed.book) == 3, "a registration on the new log counted")
            assert feed._thread.is_alive()
            assert feed.book.count("n0000000000aa", 2, t0 + 3000) == 3.0  # what it knew before the reset stays
        finally:
            feed.stop()
