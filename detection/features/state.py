"""Per-account feature state and the engine that feeds it from signals.

The engine has two doors, matching the two streams the worker reads:

* `apply_outbound(event)` — a signal seen from the account that acted (topic `sg.signals.v1`,
  keyed by that account): sends, group adds, registration;
* `apply_inbound(event)` — the same signal seen from its counterpart (the re-keyed topic
  `sg.signals.inbound.v1`): a message received, a block or a report against the account.

Offline (training, evaluation) one ts-ordered list of events goes through both doors; online,
each partition's worker sends each topic through its own door. Same code either way, which is
the point: training and serving cannot drift apart.

Each door returns the account whose features changed in a way worth scoring (or None); the
`ScoreSchedule` then decides whether it is scored now — the same decision offline and online.
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import add as _add_
from operator import sub as _sub
from typing import Any

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
    SAVED_WINDOWS,
    SENDS,
    STRANGERS,
    VERIFIED_WEIGHT,
    feature_row,
)
from detection.features.windows import (
    WINDOWS,
    AccountWindow,
    RollingVector,
    window_expire,
    window_open,
    window_see,
)

INBOUND_MEMORY = 4096  # senders remembered per account for reply detection (oldest forgotten first)
NET_MEMORY = 32  # networks remembered per account (oldest forgotten first; one seen again counts as new)
# Saved strangers: a contact added at most SAVED_FIRST_MS before the account's first message to it
# counts as a stranger contacted, saved first (the add hides the relay's `first_contact`). At most
# SAVED_MEMORY contact adds wait for their first message (the oldest forgotten first).
SAVED_FIRST_MS = 120_000
SAVED_MEMORY = 64


class AccountState:
    """Everything detection remembers about one account: its channels over each window and a few totals.

    The channels are counted once, in `cum`; `wins` holds one `AccountWindow` per window of WINDOWS
    (bucket snapshots of `cum`, distinct recipients), read as each window's live sums by `totals`."""

    __slots__ = (  # noqa: RUF023 - the order is the checkpoint's (see __reduce__); new slots go last
        "action",
        "blocks_total",
        "cases",
        "cum",
        "first_report_ts",
        "first_ts",
        "inbound_from",
        "last_send_ts",
        "n_out",
        "net_bucket",
        "registered_ts",
        "reports_total",
        "sched",
        "sends_total",
        "wins",
        "verified_reports_total",
        # appended (a checkpoint written before them restores with their defaults, see _restore_account_state)
        "net_now",
        "nets",
        "nets_total",
        "added",
        "saved",
        "peak_ts",
    )

    def __init__(self, ts: int) -> None:
        self.registered_ts: int | None = None
        self.first_ts = ts
        self.net_bucket: str | None = None
        # Networks (net buckets) its registration and sessions came from: the latest one, each one's
        # first time (at most NET_MEMORY, the oldest forgotten first) and how many were ever new.
        self.net_now: str | None = None
        self.nets: dict[str, int] | None = None
        self.nets_total = 0
        # Contacts it added that it has not written to since (contact -> when), and the rolling
        # count of strangers saved seconds before its first message to them (None until the first).
        self.added: dict[str, int] | None = None
        self.saved: tuple[RollingVector, ...] | None = None
        self.last_send_ts: int | None = None
        self.n_out = 0  # outbound events that can trigger scoring (sends, group adds)
        self.sends_total = 0
        self.blocks_total = 0
        self.reports_total = 0  # weighted
        self.verified_reports_total = 0
        self.first_report_ts: int | None = None
        self.inbound_from: dict[str, None] = {}  # an ordered set of accounts that messaged this one
        self.cum: list[int] = [0] * N_CHANNELS  # running sums of every channel but RECIPIENTS
        self.wins = (AccountWindow(), AccountWindow(), AccountWindow())  # WINDOWS order
        # ScoreSchedule bookkeeping: n_out, ts, sends_1m, recipients_1h at the last score.
        self.sched: list[int] = [0, -(10**15), 0, 0]
        self.action: str | None = None  # the policy's standing decision on this account (ban/restrict)
        self.cases: int = 0  # bit set of case queues already opened (see detection.policy)
        self.peak_ts: int | None = None  # when its ban score last reached the ban threshold (Policy.recent_score_s)

    def __reduce__(self) -> tuple[Any, ...]:
        # A tuple of builtins pickles in C (checkpoints of 100k accounts must fit between polls).
        return (_restore_account_state, tuple(getattr(self, k) for k in AccountState.__slots__))

    def totals(self, ts: int) -> tuple[list[int], list[int], list[int]]:
        """Each window's live channel sums as of `ts` (WINDOWS order; RECIPIENTS is the window's distinct
        recipients), after expiring what fell out — what a `RollingVector.totals(ts)` per window returned."""
        self.expire(ts)
        cum = self.cum
        w0, w1, w2 = self.wins
        r = w0.ring
        t0 = list(map(_sub, cum, r[1])) if r else [0] * N_CHANNELS
        t0[RECIPIENTS] = w0.dtot
        r = w1.ring
        t1 = list(map(_sub, cum, r[1])) if r else [0] * N_CHANNELS
        t1[RECIPIENTS] = w1.dtot
        r = w2.ring
        t2 = list(map(_sub, cum, r[1])) if r else [0] * N_CHANNELS
        t2[RECIPIENTS] = w2.dtot
        return t0, t1, t2

    def expire(self, ts: int) -> None:
        """Expire what fell out of each window as of `ts` (shorter windows first, see `channel`)."""
        w0, w1, w2 = self.wins
        # read right after the account's own event, nothing expires: the bucket of `ts` is the newest
        b = ts // _W0
        if b > w0.head:
            window_expire(w0, b, _N0)
        b = ts // _W1
        if b > w1.head:
            window_expire(w1, b, _N1)
        b = ts // _W2
        if b > w2.head:
            window_expire(w2, b, _N2)

    def channel(self, k: int, ts: int, c: int) -> int:
        """One channel of window `k` as of `ts` (the schedule reads two; `totals(ts)[k][c]` without the lists).

        Expires the shorter windows too: what lets an event check a longer window only when it opens
        a bucket in the shorter one (a window is never emptied while a shorter one still holds a bucket)."""
        wins = self.wins
        for j in range(k + 1):
            width, n = _WN[j]
            window_expire(wins[j], ts // width, n)
        w = wins[k]
        if not w.ring:
            return 0
        return w.dtot if c == RECIPIENTS else self.cum[c] - w.ring[1][c]  # type: ignore[no-any-return]

    @property
    def vecs(self) -> tuple[_WindowView, ...]:
        """A read-only view per window with the `totals(ts)` and `tot` of the former `RollingVector`s."""
        return tuple(_WindowView(self, k) for k in range(len(WINDOWS)))


class _WindowView:
    __slots__ = ("k", "st")

    def __init__(self, st: AccountState, k: int) -> None:
        self.st, self.k = st, k

    def totals(self, ts: int) -> list[int]:
        return self.st.totals(ts)[self.k]

    @property
    def tot(self) -> list[int]:
        """The live sums as of the newest bucket."""
        w = self.st.wins[self.k]
        if not w.ring:
            return [0] * N_CHANNELS
        t = list(map(_sub, self.st.cum, w.ring[1]))
        t[RECIPIENTS] = w.dtot
        return t


_WN = tuple((w.width_ms, w.buckets) for w in WINDOWS)
(_W0, _N0), (_W1, _N1), (_W2, _N2) = _WN
_SLOT_DEFAULTS = {"net_now": None, "nets": None, "nets_total": 0, "added": None, "saved": None, "peak_ts": None}


def _restore_account_state(*values: Any) -> AccountState:
    st = AccountState.__new__(AccountState)
    for k, v in zip(AccountState.__slots__, values):
        setattr(st, k, v)
    for k in AccountState.__slots__[len(values):]:  # slots added after the checkpoint was written
        setattr(st, k, _SLOT_DEFAULTS[k])
    return st


# The slots of a checkpoint written before the running sums (3b66d32 and earlier): a RollingVector
# and a RollingDistinct per window in `vecs` and `dists`, the network and saved-stranger slots
# possibly missing (appended later).
_V1_SLOTS = ("action", "blocks_total", "cases", "dists", "first_report_ts", "first_ts", "inbound_from",
             "last_send_ts", "n_out", "net_bucket", "registered_ts", "reports_total", "sched", "sends_total", "vecs",
             "verified_reports_total", "net_now", "nets", "nets_total", "added", "saved", "peak_ts")


def _restore_account(*values: Any) -> AccountState:
    """An account from a checkpoint written before the running sums: each window's bucket ring becomes
    snapshots of one running sum (the newest window's sums as its base) — the same live sums, buckets
    and distinct keys."""
    old = dict(zip(_V1_SLOTS, values))
    vecs, dists = old.pop("vecs"), old.pop("dists")
    cum = list(vecs[-1].tot)
    cum[RECIPIENTS] = 0
    wins = []
    for vec, dist in zip(vecs, dists):
        w = AccountWindow()
        entries: list[tuple[int, tuple[int, ...], int]] = []
        after = [0] * N_CHANNELS  # the sums of the buckets newer than this one, and of this one
        for b, v in reversed(vec._ring):
            after = list(map(_add_, after, v))
            snap = list(map(_sub, cum, after))
            snap[RECIPIENTS] = 0
            entries.append((b, tuple(snap), v[RECIPIENTS]))
        for entry in reversed(entries):
            w.ring.extend(entry)
        w.head = vec._head if entries else -1
        w.dtot = vec.tot[RECIPIENTS] if entries else 0
        w.last = dict(dist._last)
        wins.append(w)
    old["cum"], old["wins"] = cum, tuple(wins)
    return _restore_account_state(*(old[k] for k in AccountState.__slots__ if k in old))


def _see_network(st: AccountState, ts: int, net_bucket: str) -> None:
    """`st` acted from `net_bucket` at `ts` (a registration or a session): a hijacker's sessions come
    from a network the account never used."""
    st.net_now = net_bucket
    nets = st.nets
    if nets is None:
        st.nets = {net_bucket: ts}
        st.nets_total = 1
    elif net_bucket not in nets:
        nets[net_bucket] = ts
        st.nets_total += 1
        if len(nets) > NET_MEMORY:
            del nets[next(iter(nets))]


def _saved_first(st: AccountState, ts: int, recipient: str, first: int, reply: int) -> None:
    """`st` writes to `recipient`: if it added `recipient` at most SAVED_FIRST_MS before and has not
    written to it since, this is a saved stranger's first message — unless the relay flagged it as a
    first contact anyway, or `recipient` wrote to `st` before (an acquaintance). Adds too old to count
    are forgotten on the way (an address-book import leaves nothing behind)."""
    added = st.added
    assert added is not None
    added_ts = added.pop(recipient, None)
    _forget_stale(st, added, ts)
    if added_ts is None or first or reply or not 0 <= ts - added_ts <= SAVED_FIRST_MS:
        return
    if st.saved is None:
        st.saved = tuple(RollingVector(w, 1) for w in SAVED_WINDOWS)
    for vec in st.saved:
        vec.add(ts, 0, 1)


def _forget_stale(st: AccountState, added: dict[str, int], ts: int) -> None:
    """Drop the adds older than SAVED_FIRST_MS before `ts` (oldest first; None once none is left)."""
    oldest = ts - SAVED_FIRST_MS
    while added:
        k = next(iter(added))
        if added[k] >= oldest:
            return
        del added[k]
    st.added = None


# Registrations counted per net bucket by any NetBook of this process: a change stamp for a reader
# that remembers a bucket's sums between reads (`detection.netfeed.NetFeedView`) — the sums of a
# bucket change only when a book registers in it, or as its windows expire.
NET_CHANGES: dict[str, int] = {}


class NetBook:
    """Registrations per network bucket, over each window (farms register in bursts from one bucket)."""

    __slots__ = ("buckets",)

    def __init__(self) -> None:
        self.buckets: dict[str, tuple[RollingVector, ...]] = {}

    def register(self, bucket: str, ts: int) -> None:
        NET_CHANGES[bucket] = NET_CHANGES.get(bucket, 0) + 1
        vecs = self.buckets.get(bucket)
        if vecs is None:
            vecs = self.buckets[bucket] = tuple(RollingVector(w, 1) for w in WINDOWS)
        for v in vecs:
            v.add(ts, 0, 1)

    def count(self, bucket: str | None, w: int, ts: int) -> float:
        if bucket is None:
            return 0.0
        vecs = self.buckets.get(bucket)
        return float(vecs[w].totals(ts)[0]) if vecs is not None else 0.0

    def counts(self, bucket: str | None, ts: int) -> list[float]:
        """`count` of every window at once, in WINDOWS order (the fused feature row reads them together)."""
        return [0.0, 0.0, 0.0] if bucket is None else list(books_counts((self,), bucket, ts))


class NetView:
    """The sum of several partitions' NetBooks: registrations are keyed by account, so one bucket's
    registrations spread over partitions; a worker reads them over all partitions it holds."""

    def __init__(self, books: list[NetBook]) -> None:
        self.books = books

    def register(self, bucket: str, ts: int) -> None:  # pragma: no cover - writes go to one partition's book
        raise TypeError("register through a partition's NetBook")

    def count(self, bucket: str | None, w: int, ts: int) -> float:
        return 0.0 if bucket is None else books_count(self.books, bucket, w, ts)

    def counts(self, bucket: str | None, ts: int) -> list[float]:
        """`count` of every window at once, in WINDOWS order."""
        return [0.0, 0.0, 0.0] if bucket is None else list(books_counts(self.books, bucket, ts))


def books_count(books: Iterable[NetBook], bucket: str, w: int, ts: int) -> float:
    """Registrations in `bucket` over window `w` summed over `books` (each window's vector is its own:
    reading one advances none of the others)."""
    n = 0.0
    for book in books:
        vecs = book.buckets.get(bucket)
        if vecs is not None:
            n += vecs[w].totals(ts)[0]
    return n


def books_counts(books: Iterable[NetBook], bucket: str, ts: int) -> tuple[float, float, float]:
    """Registrations in `bucket` over each window (WINDOWS order) summed over `books`: the fused
    feature row reads all three for every scored row, so the windows are unrolled."""
    n0 = n1 = n2 = 0.0
    for book in books:
        vecs = book.buckets.get(bucket)
        if vecs is not None:
            v0, v1, v2 = vecs
            n0 += v0.totals(ts)[0]
            n1 += v1.totals(ts)[0]
            n2 += v2.totals(ts)[0]
    return n0, n1, n2


class FeatureEngine:
    """Feeds signals into per-account state and reads feature vectors out of it."""

    def __init__(self, net: NetBook | None = None) -> None:
        self.accounts: dict[str, AccountState] = {}
        self.book = net if net is not None else NetBook()  # where this engine's registrations go
        self.net: NetBook | NetView = self.book  # where reads go (a NetView in a multi-partition worker)
        self._out = {
            "message.sent": self._out_message,
            "account.registered": self._out_registered,
            "session.opened": self._out_session,
            "group.member_added": self._out_group_add,
            "group.created": self._out_group_add,
            "contact.added": self._out_contact_added,
        }
        self._in = {
            "message.sent": self._in_message,
            "contact.blocked": self._in_blocked,
            "report.filed": self._in_report,
        }

    def state(self, account: str, ts: int) -> AccountState:
        st = self.accounts.get(account)
        if st is None:
            st = self.accounts[account] = AccountState(ts)
        return st

    # -- the two doors ---------------------------------------------------------------------
    def apply_outbound(self, ev: Any) -> str | None:
        handler = self._out.get(ev.type)
        return handler(ev) if handler is not None else None

    def apply_inbound(self, ev: Any) -> str | None:
        handler = self._in.get(ev.type)
        return handler(ev) if handler is not None else None

    def apply(self, ev: Any) -> tuple[str | None, str | None]:
        """Both doors (offline replay of one ts-ordered stream)."""
        return self.apply_outbound(ev), self.apply_inbound(ev)

    # The same two doors for a decoded record: a dict of the wire fields, optional ones possibly
    # absent (`sealguard.contracts.batch.decode_batch`; the worker builds no event object). One
    # branch per type that touches a feature, the common one first; the parity tests replay a
    # stream through these and through the event doors above and compare every row.
    def outbound_record(self, r: dict[str, Any]) -> str | None:
        t = r["type"]
        if t == "message.sent":
            sender = r["sender"]
            self.send(r["ts"], sender, r.get("recipient"), r["first_contact"])
            return sender
        if t == "session.opened":
            self.session(r["ts"], r["account"], r["net_bucket"])
        elif t == "account.registered":
            self.register(r["ts"], r["account"], r["net_bucket"])
        elif t == "contact.added":
            self.contact_added(r["ts"], r["account"], r["contact"])
        elif ((t == "group.member_added" or t == "group.created") and r.get("member") is not None
              and self.group_add(r["ts"], r["actor"], r.get("member_is_contact")) is not None):
            return r["actor"]  # type: ignore[no-any-return]
        return None

    def inbound_record(self, r: dict[str, Any]) -> str | None:
        t = r["type"]
        if t == "message.sent":
            recipient = r.get("recipient")
            if recipient is not None:
                self.receive(r["ts"], recipient, r["sender"])
            return None  # receiving a message is no reason to score the receiver
        if t == "contact.blocked":
            self.block(r["ts"], r["blocked"])
            return r["blocked"]  # type: ignore[no-any-return]
        if t == "report.filed":
            self.report(r["ts"], r["reported"], r["messages_verified"] > 0)
            return r["reported"]  # type: ignore[no-any-return]
        return None

    def _out_message(self, ev: Any) -> str:
        self.send(ev.ts, ev.sender, ev.recipient, ev.first_contact)
        return ev.sender

    def _out_registered(self, ev: Any) -> None:
        self.register(ev.ts, ev.account, ev.net_bucket)

    def _out_session(self, ev: Any) -> None:
        self.session(ev.ts, ev.account, ev.net_bucket)

    def _out_contact_added(self, ev: Any) -> None:
        self.contact_added(ev.ts, ev.account, ev.contact)

    def _out_group_add(self, ev: Any) -> str | None:
        if ev.member is None:
            return None
        return ev.actor if self.group_add(ev.ts, ev.actor, ev.member_is_contact) is not None else None

    def _in_message(self, ev: Any) -> None:
        if ev.recipient is not None:
            self.receive(ev.ts, ev.recipient, ev.sender)
        # receiving a message is no reason to score the receiver

    def _in_blocked(self, ev: Any) -> str:
        self.block(ev.ts, ev.blocked)
        return ev.blocked

    def _in_report(self, ev: Any) -> str:
        self.report(ev.ts, ev.reported, ev.messages_verified > 0)
        return ev.reported

    # -- what each signal does to an account (the doors above and the columnar replay in
    # table.py both call these, so there is one definition of every update) ------------------
    def send(self, ts: int, sender: str, recipient: str | None, first_contact: bool | None) -> AccountState:
        """`sender` sent a message (to `recipient`, or to a group when None)."""
        st = self.accounts.get(sender)
        if st is None:
            st = self.accounts[sender] = AccountState(ts)
        st.n_out += 1
        st.sends_total += 1
        last, st.last_send_ts = st.last_send_ts, ts
        gap = ts - last if last is not None and ts >= last else -1
        # Open the bucket of `ts` in each window (`_open_buckets`), then count the message once.
        _open_buckets(st, ts)
        cum = st.cum
        cum[SENDS] += 1
        if gap >= 0:
            cum[GAPS] += 1
            cum[GAP_SUM] += gap
            cum[GAP_SQ] += gap * gap
        if recipient is not None:
            cum[DIRECT] += 1
            if first_contact:
                cum[FIRST] += 1
                first = 1
            else:
                first = 0
            if recipient in st.inbound_from:
                cum[REPLY] += 1
                reply = 1
            else:
                reply = 0
            if st.added is not None:
                _saved_first(st, ts, recipient, first, reply)
            w0, w1, w2 = st.wins
            if w0.last.get(recipient) != w0.head:
                window_see(w0, _N0, recipient)
            if w1.last.get(recipient) != w1.head:
                window_see(w1, _N1, recipient)
            if w2.last.get(recipient) != w2.head:
                window_see(w2, _N2, recipient)
        return st

    def register(self, ts: int, account: str, net_bucket: str) -> AccountState:
        """`account` registered from `net_bucket` (counted in this engine's NetBook)."""
        st = self.state(account, ts)
        st.registered_ts = ts
        st.net_bucket = net_bucket
        self.book.register(net_bucket, ts)
        _see_network(st, ts, net_bucket)
        return st

    def contact_added(self, ts: int, account: str, contact: str) -> None:
        """`account` saved `contact` (its next message to `contact` may be a saved stranger's first)."""
        st = self.accounts.get(account)
        if st is None:
            st = self.accounts[account] = AccountState(ts)
        added = st.added
        if added is None:
            added = st.added = {}
        added.pop(contact, None)  # the latest add counts; re-inserted as the newest
        added[contact] = ts
        if len(added) > SAVED_MEMORY:
            del added[next(iter(added))]
        _forget_stale(st, added, ts)

    def session(self, ts: int, account: str, net_bucket: str | None) -> None:
        """`account` opened a session (its first seen network stands in for a registration's)."""
        st = self.accounts.get(account)
        if st is None:
            st = self.accounts[account] = AccountState(ts)
        if st.net_bucket is None:
            st.net_bucket = net_bucket
        if net_bucket is not None:
            _see_network(st, ts, net_bucket)

    def group_add(self, ts: int, actor: str, member_is_contact: bool | None) -> AccountState | None:
        """`actor` added a member to a group; the state when that member was a stranger (worth scoring)."""
        st = self.state(actor, ts)
        if member_is_contact:
            return None
        st.n_out += 1
        self._add(st, ts, STRANGERS, 1)
        return st

    def receive(self, ts: int, recipient: str, sender: str) -> AccountState:
        """`recipient` received a direct message from `sender`."""
        st = self.accounts.get(recipient)
        if st is None:
            st = self.accounts[recipient] = AccountState(ts)
        seen = st.inbound_from
        if sender not in seen:
            seen[sender] = None
            if len(seen) > INBOUND_MEMORY:
                del seen[next(iter(seen))]
        _open_buckets(st, ts)  # _add(st, ts, RECEIVED, 1): one per direct message
        st.cum[RECEIVED] += 1
        return st

    def block(self, ts: int, blocked: str) -> AccountState:
        """Someone blocked `blocked`."""
        st = self.state(blocked, ts)
        st.blocks_total += 1
        self._add(st, ts, BLOCKS, 1)
        return st

    def report(self, ts: int, reported: str, verified: bool) -> AccountState:
        """Someone reported `reported`; a report whose messages the relay verified weighs VERIFIED_WEIGHT."""
        st = self.state(reported, ts)
        weight = VERIFIED_WEIGHT if verified else 1
        st.reports_total += weight
        if verified:
            st.verified_reports_total += 1
        if st.first_report_ts is None:
            st.first_report_ts = ts
        self._add(st, ts, REPORTS, weight)
        return st

    @staticmethod
    def _add(st: AccountState, ts: int, channel: int, x: int) -> None:
        _open_buckets(st, ts)
        st.cum[channel] += x

    # -- reading ---------------------------------------------------------------------------
    def features(self, account: str, ts: int) -> list[float]:
        """The feature vector of `account` as of `ts`, in FEATURE_NAMES order."""
        return feature_row(self.state(account, ts), self, ts)


class ScoreSchedule:
    """When an account is worth (re)scoring — the same rule online (throttling) and offline (snapshots).

    Every one of the first `eager` outbound actions; then whenever its outbound count grows by
    `growth`, its 1-minute sends or 1-hour recipients double, or `idle_ms` passed with new
    activity; and always after it receives a block or a report. That keeps time-to-ban short for
    a fresh account (scored at every early message) and bounds the work for a busy one
    (logarithmic in its volume), while a hijacked account's sudden burst still triggers at once.
    """

    def __init__(self, eager: int = 12, growth: float = 1.25, idle_ms: int = 600_000) -> None:
        self.eager, self.growth, self.idle_ms = eager, growth, idle_ms

    def due(self, st: AccountState, ts: int, *, received: bool = False) -> bool:
        n = st.n_out
        last_n, last_ts, last_s1m, last_r1h = st.sched
        if received or n <= self.eager or n >= last_n * self.growth:
            return True
        if n > last_n and ts - last_ts >= self.idle_ms:
            return True
        s1m = _sends_1m(st, ts)
        if s1m >= 4 and s1m >= 2 * last_s1m:
            return True
        r1h = _recipients_1h(st, ts)
        return r1h >= 4 and r1h >= 2 * last_r1h

    def mark(self, st: AccountState, ts: int) -> None:
        st.sched = [st.n_out, ts, _sends_1m(st, ts), _recipients_1h(st, ts)]


def _open_buckets(st: AccountState, ts: int) -> None:
    """Open the bucket of `ts` in each of `st`'s windows that has not yet (one snapshot of the sums
    before the event, shared by the windows). A longer window opens a bucket only when the 1-minute
    one does: its buckets are multiples of the shorter one's, and no read empties it while a shorter
    one holds a bucket (`AccountState.channel`). Unrolled: every event of an account comes here."""
    w0 = st.wins[0]
    b = ts // _W0
    if b <= w0.head:
        return
    snap = tuple(st.cum)
    window_open(w0, b, _N0, snap)
    w1 = st.wins[1]
    b = ts // _W1
    if b > w1.head:
        window_open(w1, b, _N1, snap)
        w2 = st.wins[2]
        b = ts // _W2
        if b > w2.head:
            window_open(w2, b, _N2, snap)


def _sends_1m(st: AccountState, ts: int) -> int:
    """`st.channel(0, ts, SENDS)`, unrolled (the schedule reads it for most sends)."""
    w0 = st.wins[0]
    b = ts // _W0
    if b > w0.head:
        window_expire(w0, b, _N0)
    ring = w0.ring
    return st.cum[SENDS] - ring[1][SENDS] if ring else 0  # type: ignore[no-any-return]


def _recipients_1h(st: AccountState, ts: int) -> int:
    """`st.channel(1, ts, RECIPIENTS)`, unrolled: its callers have just read `_sends_1m(st, ts)`, which
    expired the 1-minute window at `ts` (see `AccountState.channel`)."""
    w1 = st.wins[1]
    b = ts // _W1
    if b > w1.head:
        window_expire(w1, b, _N1)
    return w1.dtot
