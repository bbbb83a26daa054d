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
    SENDS,
    STRANGERS,
    VERIFIED_WEIGHT,
    feature_row,
)
from detection.features.windows import WINDOWS, RollingDistinct, RollingVector

INBOUND_MEMORY = 4096  # senders remembered per account for reply detection (oldest forgotten first)


class AccountState:
    """Everything detection remembers about one account: rolling channels and a few totals."""

    __slots__ = (
        "action",
        "blocks_total",
        "cases",
        "dists",
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
        "vecs",
        "verified_reports_total",
    )

    def __init__(self, ts: int) -> None:
        self.registered_ts: int | None = None
        self.first_ts = ts
        self.net_bucket: str | None = None
        self.last_send_ts: int | None = None
        self.n_out = 0  # outbound events that can trigger scoring (sends, group adds)
        self.sends_total = 0
        self.blocks_total = 0
        self.reports_total = 0  # weighted
        self.verified_reports_total = 0
        self.first_report_ts: int | None = None
        self.inbound_from: dict[str, None] = {}  # an ordered set of accounts that messaged this one
        self.vecs = tuple(RollingVector(w, N_CHANNELS) for w in WINDOWS)
        self.dists = tuple(RollingDistinct(v, RECIPIENTS, w) for v, w in zip(self.vecs, WINDOWS))
        # ScoreSchedule bookkeeping: n_out, ts, sends_1m, recipients_1h at the last score.
        self.sched: list[int] = [0, -(10**15), 0, 0]
        self.action: str | None = None  # the policy's standing decision on this account (ban/restrict)
        self.cases: int = 0  # bit set of case queues already opened (see detection.policy)

    def __reduce__(self) -> tuple[Any, ...]:
        # A tuple of builtins pickles in C (checkpoints of 100k accounts must fit between polls).
        return (_restore_account, tuple(getattr(self, k) for k in AccountState.__slots__))


def _restore_account(*values: Any) -> AccountState:
    st = AccountState.__new__(AccountState)
    for k, v in zip(AccountState.__slots__, values):
        setattr(st, k, v)
    return st


class NetBook:
    """Registrations per network bucket, over each window (farms register in bursts from one bucket)."""

    __slots__ = ("buckets",)

    def __init__(self) -> None:
        self.buckets: dict[str, tuple[RollingVector, ...]] = {}

    def register(self, bucket: str, ts: int) -> None:
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


class NetView:
    """The sum of several partitions' NetBooks: registrations are keyed by account, so one bucket's
    registrations spread over partitions; a worker reads them over all partitions it holds."""

    def __init__(self, books: list[NetBook]) -> None:
        self.books = books

    def register(self, bucket: str, ts: int) -> None:  # pragma: no cover - writes go to one partition's book
        raise TypeError("register through a partition's NetBook")

    def count(self, bucket: str | None, w: int, ts: int) -> float:
        if bucket is None:
            return 0.0
        n = 0.0
        for book in self.books:
            vecs = book.buckets.get(bucket)
            if vecs is not None:
                n += vecs[w].totals(ts)[0]
        return n


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

    # -- outbound --------------------------------------------------------------------------
    def _out_message(self, ev: Any) -> str:
        ts, sender = ev.ts, ev.sender
        st = self.accounts.get(sender)
        if st is None:
            st = self.accounts[sender] = AccountState(ts)
        st.n_out += 1
        st.sends_total += 1
        last, st.last_send_ts = st.last_send_ts, ts
        gap = ts - last if last is not None and ts >= last else None
        recipient = ev.recipient
        if recipient is not None:
            first = 1 if ev.first_contact else 0
            reply = 1 if recipient in st.inbound_from else 0
            for vec, dist in zip(st.vecs, st.dists):
                v = vec.vector(ts)
                tot = vec.tot
                v[SENDS] += 1
                tot[SENDS] += 1
                v[DIRECT] += 1
                tot[DIRECT] += 1
                if first:
                    v[FIRST] += 1
                    tot[FIRST] += 1
                if reply:
                    v[REPLY] += 1
                    tot[REPLY] += 1
                if gap is not None:
                    v[GAPS] += 1
                    tot[GAPS] += 1
                    v[GAP_SUM] += gap
                    tot[GAP_SUM] += gap
                    v[GAP_SQ] += gap * gap
                    tot[GAP_SQ] += gap * gap
                dist.see_current(v, recipient)
        else:
            for vec in st.vecs:
                v = vec.vector(ts)
                tot = vec.tot
                v[SENDS] += 1
                tot[SENDS] += 1
                if gap is not None:
                    v[GAPS] += 1
                    tot[GAPS] += 1
                    v[GAP_SUM] += gap
                    tot[GAP_SUM] += gap
                    v[GAP_SQ] += gap * gap
                    tot[GAP_SQ] += gap * gap
        return sender

    def _out_registered(self, ev: Any) -> None:
        st = self.state(ev.account, ev.ts)
        st.registered_ts = ev.ts
        st.net_bucket = ev.net_bucket
        self.book.register(ev.net_bucket, ev.ts)

    def _out_session(self, ev: Any) -> None:
        st = self.state(ev.account, ev.ts)
        if st.net_bucket is None:
            st.net_bucket = ev.net_bucket

    def _out_group_add(self, ev: Any) -> str | None:
        if ev.member is None:
            return None
        st = self.state(ev.actor, ev.ts)
        if ev.member_is_contact:
            return None
        st.n_out += 1
        for vec in st.vecs:
            vec.add(ev.ts, STRANGERS, 1)
        return ev.actor

    # -- inbound ---------------------------------------------------------------------------
    def _in_message(self, ev: Any) -> None:
        recipient = ev.recipient
        if recipient is None:
            return
        st = self.state(recipient, ev.ts)
        seen = st.inbound_from
        if ev.sender not in seen:
            seen[ev.sender] = None
            if len(seen) > INBOUND_MEMORY:
                del seen[next(iter(seen))]
        for vec in st.vecs:
            vec.add(ev.ts, RECEIVED, 1)
        return  # receiving a message is no reason to score the receiver

    def _in_blocked(self, ev: Any) -> str:
        st = self.state(ev.blocked, ev.ts)
        st.blocks_total += 1
        for vec in st.vecs:
            vec.add(ev.ts, BLOCKS, 1)
        return ev.blocked

    def _in_report(self, ev: Any) -> str:
        st = self.state(ev.reported, ev.ts)
        weight = VERIFIED_WEIGHT if ev.messages_verified > 0 else 1
        st.reports_total += weight
        if ev.messages_verified > 0:
            st.verified_reports_total += 1
        if st.first_report_ts is None:
            st.first_report_ts = ev.ts
        for vec in st.vecs:
            vec.add(ev.ts, REPORTS, weight)
        return ev.reported

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
        s1m = st.vecs[0].totals(ts)[SENDS]
        if s1m >= 4 and s1m >= 2 * last_s1m:
            return True
        r1h = st.vecs[1].totals(ts)[RECIPIENTS]
        return r1h >= 4 and r1h >= 2 * last_r1h

    def mark(self, st: AccountState, ts: int) -> None:
        st.sched = [st.n_out, ts, int(st.vecs[0].totals(ts)[SENDS]), int(st.vecs[1].totals(ts)[RECIPIENTS])]
