"""Time windows with explicit expiry: the wrappers every windowed feature is built on.

A window is a ring of `n` buckets of `width_ms` each. An event at time `ts` falls in bucket
`ts // width_ms`; the window "as of" `ts` holds the current bucket and the `n - 1` before it.
That definition is exact and cheap to maintain online (add to the newest bucket, subtract a
bucket when it falls out), and the batch computation in the parity tests uses the very same
definition, so training and serving agree to the last count.

Buckets are stored sparsely (only buckets that saw something), so an account that sends three
messages a day costs three small lists, not a full ring. Several additive channels (sends,
first contacts, replies, ...) share one ring — one expiry check per event and window instead of
one per statistic; that batching is what lets plain Python keep up with the stream.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from operator import sub as _sub
from typing import Any


@dataclass(frozen=True, slots=True)
class Window:
    """A window spec; its `name` ("1m", "1h", "24h") becomes the suffix of feature names."""

    name: str
    width_ms: int
    buckets: int

    @property
    def span_ms(self) -> int:
        return self.width_ms * self.buckets

    def bucket(self, ts: int) -> int:
        return ts // self.width_ms


W1M = Window("1m", 5_000, 12)
W1H = Window("1h", 300_000, 12)
W24H = Window("24h", 3_600_000, 24)
WINDOWS: tuple[Window, ...] = (W1M, W1H, W24H)


class RollingVector:
    """Rolling sums of `channels` additive quantities over one window (a sparse bucket ring).

    `add(ts, channel, x)` adds to the bucket of `ts`; `totals(ts)` expires what fell out of the
    window as of `ts` and returns the live sums. Time only moves forward per instance: an event
    older than the newest bucket is counted in the newest bucket (late by at most one bucket in
    practice, and never lost).
    """

    __slots__ = ("_channels", "_head", "_n", "_ring", "_width", "tot")

    def __init__(self, window: Window, channels: int) -> None:
        self._ring: deque[tuple[int, list[float]]] = deque()
        self._head = -1  # bucket index of the newest bucket, -1 when empty
        self._n = window.buckets
        self._width = window.width_ms
        self._channels = channels
        self.tot: list[float] = [0] * channels

    def _advance(self, b: int) -> list[float]:
        """The vector of bucket `b` (created if needed), after expiring buckets older than the window."""
        ring = self._ring
        head = self._head
        if b <= head:
            return ring[-1][1]
        if head <= b - self._n or not ring:  # empty, or the whole ring fell out (idle for a window)
            if ring:
                ring.clear()
                self.tot = [0] * self._channels
            vec: list[float] = [0] * self._channels
            ring.append((b, vec))
            self._head = b
            return vec
        if ring[0][0] <= b - self._n:  # the oldest bucket falls out (the ring is not empty: head > -1)
            self._expire(b)
        vec = [0] * self._channels
        ring.append((b, vec))
        self._head = b
        return vec

    def _expire(self, b: int) -> None:
        ring, tot, oldest_live = self._ring, self.tot, b - self._n + 1
        while ring and ring[0][0] < oldest_live:
            tot[:] = map(_sub, tot, ring.popleft()[1])  # in place: callers may hold `tot`

    def add(self, ts: int, channel: int, x: float = 1) -> None:
        vec = self._advance(ts // self._width)
        vec[channel] += x
        self.tot[channel] += x

    def add2(self, ts: int, c1: int, x1: float, c2: int, x2: float) -> None:
        """Two channels at once (one expiry check): the common case for a message."""
        vec = self._advance(ts // self._width)
        vec[c1] += x1
        vec[c2] += x2
        tot = self.tot
        tot[c1] += x1
        tot[c2] += x2

    def vector(self, ts: int) -> list[float]:
        """The bucket vector for `ts`, for callers that add to several channels themselves (and to `tot`)."""
        return self._advance(ts // self._width)

    def totals(self, ts: int) -> list[float]:
        """Live sums as of `ts` (expires without creating a bucket)."""
        b = ts // self._width
        if b > self._head and self._ring:
            if self._head <= b - self._n:  # everything fell out: the sums are zero (they are integers)
                self._ring.clear()
                self._head = -1
                self.tot = [0] * self._channels
            else:
                self._expire(b)
        return self.tot

    def move(self, from_bucket: int, channel: int, ts: int) -> None:
        """Move one unit of `channel` from an older live bucket to the bucket of `ts` (distinct counts)."""
        vec = self._advance(ts // self._width)
        for b, old in reversed(self._ring):
            if b == from_bucket:
                old[channel] -= 1
                vec[channel] += 1
                return
        vec[channel] += 1  # the old bucket already expired: a fresh unit
        self.tot[channel] += 1

    def live(self, bucket: int, ts: int) -> bool:
        """Whether `bucket` is inside the window as of `ts`."""
        return bucket > ts // self._width - self._n

    def __reduce__(self) -> tuple[Any, ...]:
        # Plain builtins pickle in C; the default slots protocol costs ~10x more in Python.
        return (_restore_vector, (self._n, self._width, self._channels, self._ring, self._head, self.tot))

    def state(self) -> tuple[list[tuple[int, list[float]]], int, list[float]]:
        return (list(self._ring), self._head, list(self.tot))

    def restore(self, st: tuple[list[tuple[int, list[float]]], int, list[float]]) -> None:
        ring, head, tot = st
        self._ring = deque((b, list(v)) for b, v in ring)
        self._head = head
        self.tot = list(tot)


class RollingDistinct:
    """Distinct keys seen in a window, kept as a channel of a `RollingVector`.

    Each key remembers the bucket it was last seen in; that bucket holds its one unit. Seeing it
    again moves the unit to the newest bucket, so the window's sum is the number of distinct keys
    whose last sighting is still inside the window. Keys that fell out are purged lazily.
    """

    __slots__ = ("_channel", "_last", "_vec", "_width")

    def __init__(self, vec: RollingVector, channel: int, window: Window) -> None:
        self._last: dict[str, int] = {}
        self._vec = vec
        self._channel = channel
        self._width = window.width_ms

    def see(self, ts: int, key: str) -> bool:
        """Count `key` at `ts`; True when it is new in the window."""
        vec = self._vec
        b = max(ts // self._width, vec._head)  # a late event lands in the newest bucket
        last = self._last.get(key)
        if last is None or not vec.live(last, ts):
            vec.add(ts, self._channel, 1)
            self._last[key] = b
            if len(self._last) > 2 * vec.tot[self._channel] + 64:
                self._purge(ts)
            return True
        if last != b:
            vec.move(last, self._channel, ts)
            self._last[key] = b
        return False

    def see_current(self, v: list[float], key: str) -> None:
        """`see` for the newest bucket, whose vector `v` the caller already holds (the hot path:
        `RollingVector.vector(ts)` was just called for the same event)."""
        vec = self._vec
        b = vec._head
        last = self._last.get(key)
        if last == b:
            return
        ch = self._channel
        if last is None or last <= b - vec._n:
            v[ch] += 1
            vec.tot[ch] += 1
            self._last[key] = b
            if len(self._last) > 2 * vec.tot[ch] + 64:
                self._purge_bucket(b)
            return
        for ob, old in reversed(vec._ring):
            if ob == last:
                old[ch] -= 1
                break
        else:  # pragma: no cover - live bucket is always in the ring
            vec.tot[ch] += 1
        v[ch] += 1
        self._last[key] = b

    def _purge_bucket(self, b: int) -> None:
        oldest = b - self._vec._n
        self._last = {k: x for k, x in self._last.items() if x > oldest}

    def _purge(self, ts: int) -> None:
        live = self._vec.live
        self._last = {k: b for k, b in self._last.items() if live(b, ts)}

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore_distinct, (self._last, self._vec, self._channel, self._width))

    def state(self) -> dict[str, int]:
        return dict(self._last)

    def restore(self, st: dict[str, int]) -> None:
        self._last = dict(st)


def _restore_vector(n: int, width: int, channels: int, ring: deque[tuple[int, list[float]]], head: int,
                    tot: list[float]) -> RollingVector:
    v = RollingVector.__new__(RollingVector)
    v._n, v._width, v._channels, v._ring, v._head, v.tot = n, width, channels, ring, head, tot
    return v


def _restore_distinct(last: dict[str, int], vec: RollingVector, channel: int, width: int) -> RollingDistinct:
    d = RollingDistinct.__new__(RollingDistinct)
    d._last, d._vec, d._channel, d._width = last, vec, channel, width
    return d


# -- an account's windows: one running sum, snapshots at bucket starts ----------------------------
# An account's channels are counted once, in `cum` (running sums since the account was first seen),
# not once per window: each window remembers, for every live bucket, `cum` as it was just before
# the bucket's first event. The window's sums are then `cum` minus the snapshot of its oldest live
# bucket — the same buckets, the same expiry and the same integers as a `RollingVector` per window
# (an event older than the newest bucket counts in the newest bucket, as there), for a third of the
# additions per event; a bucket's snapshot is one tuple shared by every window that opens a bucket at
# that event. Distinct counts cannot be differences of running sums (seeing a key again moves its
# unit to the newest bucket), so each window keeps its distinct units per bucket beside the snapshot,
# as `RollingDistinct` does. A window's buckets are one flat list, three items a bucket (bucket index,
# snapshot, distinct units; oldest first): an account's state is read at random, and fewer objects
# mean fewer cache misses.

class AccountWindow:
    """One window of an account: its live buckets (`ring`: `[b, snapshot, units, b, snapshot, units, …]`),
    the newest bucket (`head`, -1 when empty), the live distinct units (`dtot`) and each distinct key's
    bucket (`last`)."""

    __slots__ = ("dtot", "head", "last", "ring")

    def __init__(self) -> None:
        self.head = -1
        self.ring: list[Any] = []  # a list: a deque allocates a 64-slot block (~0.5 kB) per window
        self.dtot = 0
        self.last: dict[str, int] = {}

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore_account_window, (self.head, self.ring, self.dtot, self.last))


def _restore_account_window(head: int, ring: list[Any], dtot: int, last: dict[str, int]) -> AccountWindow:
    w = AccountWindow.__new__(AccountWindow)
    w.head, w.ring, w.dtot, w.last = head, ring, dtot, last
    return w


def window_open(w: AccountWindow, b: int, n: int, snap: tuple[int, ...]) -> None:
    """Open bucket `b` (newer than `w.head`) with `snap`, expiring the buckets it pushes out of the window."""
    ring = w.ring
    if ring:
        lim = b - n
        if w.head <= lim:  # the whole ring fell out (idle for a window)
            ring.clear()
            w.dtot = 0
        elif ring[0] <= lim:
            _drop(w, ring, lim)
    ring += (b, snap, 0)
    w.head = b


def window_expire(w: AccountWindow, b: int, n: int) -> bool:
    """Expire what fell out of the window as of bucket `b` (without opening one); True when something is live."""
    ring = w.ring
    if b > w.head and ring:
        lim = b - n
        if w.head <= lim:  # everything fell out
            ring.clear()
            w.head = -1
            w.dtot = 0
            return False
        if ring[0] <= lim:
            _drop(w, ring, lim)
    return bool(ring)


def _drop(w: AccountWindow, ring: list[Any], lim: int) -> None:
    """Drop the buckets up to `lim` from the front of the ring (at least one, not the newest)."""
    i = 3
    dtot = w.dtot - ring[2]
    while ring[i] <= lim:
        dtot -= ring[i + 2]
        i += 3
    del ring[:i]
    w.dtot = dtot


def window_see(w: AccountWindow, n: int, key: str) -> None:
    """Count `key` as seen in the newest bucket (which the caller just opened or found): a unit in that
    bucket, moved there from the bucket it was last seen in while that one is live."""
    last = w.last
    head = w.head
    lb = last.get(key)
    if lb == head:
        return
    ring = w.ring
    if lb is None or lb <= head - n:
        ring[-1] += 1
        w.dtot += 1
        last[key] = head
        if len(last) > 2 * w.dtot + 64:
            w.last = {k: x for k, x in last.items() if x > head - n}
        return
    i = len(ring) - 6  # the newest bucket is not `lb`: scan the older ones, newest first
    while i >= 0:
        if ring[i] == lb:
            ring[i + 2] -= 1
            break
        i -= 3
    else:  # pragma: no cover - a live bucket is always in the ring
        w.dtot += 1
    ring[-1] += 1
    last[key] = head
