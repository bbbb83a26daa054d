"""Rate limits, declared in ONE table: name → (bucket size, refill per second).

Token buckets, per account after login and per net_bucket before it (register, challenge).
A restricted account is checked against the `_restricted` row of a limit when there is one
(tighter first contacts). A breach is reported by the caller as `limit.breached`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sealguard.contracts import Limit


@dataclass(frozen=True, slots=True)
class Rate:
    capacity: float  # bucket size: how many at once
    refill_per_s: float  # how fast the bucket refills


# The table. Per net_bucket: register, challenge. Per account: everything else.
LIMITS: dict[Limit, Rate] = {
    Limit.register: Rate(50, 1.0),
    Limit.challenge: Rate(200, 20.0),
    Limit.send: Rate(600, 200.0),
    Limit.first_contact: Rate(60, 0.1),
    Limit.prekey_claim: Rate(100, 2.0),
    Limit.report: Rate(20, 0.05),
    Limit.media_upload: Rate(30, 0.5),
    Limit.group_add: Rate(100, 1.0),
    Limit.handle_lookup: Rate(60, 1.0),
}
# Tighter rows for restricted accounts.
RESTRICTED: dict[Limit, Rate] = {
    Limit.first_contact: Rate(3, 1 / 600),
    Limit.send: Rate(60, 5.0),
    Limit.group_add: Rate(3, 1 / 600),
}
PER_NET_BUCKET = frozenset({Limit.register, Limit.challenge})


def parse_overrides(specs: list[str]) -> dict[Limit, Rate]:
    """`name=capacity:refill_per_s` → table rows (for `sealguard relay --limit` and benchmarks)."""
    out: dict[Limit, Rate] = {}
    for spec in specs:
        try:
            name, value = spec.split("=", 1)
            cap, rate = value.split(":", 1)
            out[Limit(name.strip())] = Rate(float(cap), float(rate))
        except ValueError:
            raise ValueError(f"limit {spec!r} is not name=capacity:refill_per_s with a name from "
                             f"{', '.join(x.value for x in Limit)}") from None
    return out


class Pool:
    """The token buckets of one limit row: key (an account or a net_bucket) → [tokens, last time].
    The hot path holds its pools (`RateLimiter.pool`), so a take is one dict lookup and a little
    float math — no enum hashing or comparison per message."""

    __slots__ = ("buckets", "capacity", "clock", "refill")

    def __init__(self, rate: Rate, clock: Callable[[], float]) -> None:
        self.capacity = rate.capacity
        self.refill = rate.refill_per_s
        self.clock = clock
        self.buckets: dict[str, list[float]] = {}

    def take(self, key: str, cost: float = 1.0) -> bool:
        """Spend `cost` tokens from `key`'s bucket; False when it is empty."""
        now = self.clock()
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = [self.capacity, now]
        tokens = bucket[0] + (now - bucket[1]) * self.refill
        if tokens > self.capacity:  # noqa: PLR1730 - a comparison is cheaper than a call to min()
            tokens = self.capacity
        bucket[1] = now
        if tokens < cost:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - cost
        return True

    def bucket(self, key: str) -> tuple[float, float, float, float]:
        """(capacity, refill per second, tokens, last time) of `key`'s bucket, for the native plane."""
        b = self.buckets.get(key)
        return (self.capacity, self.refill, *(b if b is not None else (self.capacity, self.clock())))  # type: ignore[return-value]

    def prune(self, now: float, keys: list[str] | None = None) -> int:
        """Forget buckets that are full again (they behave exactly like a fresh one): all of them,
        or those of `keys` (a slice of a snapshot of the keys, see `RateLimiter.prune_step`)."""
        cap, refill, buckets = self.capacity, self.refill, self.buckets
        if keys is None:
            keys = list(buckets)
        n = 0
        for k in keys:
            b = buckets.get(k)
            if b is not None and b[0] + (now - b[1]) * refill >= cap:
                del buckets[k]
                n += 1
        return n


class RateLimiter:
    """All buckets of one relay node, in memory (a node restart refills them)."""

    __slots__ = ("_clock_fn", "_pools", "_prune_at", "_prune_keys", "_restricted", "_table")

    def __init__(self, overrides: Mapping[Limit, Rate] | None = None,
                 restricted: Mapping[Limit, Rate] | None = None) -> None:
        self._table = {**LIMITS, **(overrides or {})}
        self._restricted = {**RESTRICTED, **(restricted or {})}
        self._pools: dict[tuple[Limit, bool], Pool] = {}
        self._clock_fn: Callable[[], float] = time.monotonic
        self._prune_keys: list[tuple[Pool, list[str]]] = []  # the pass in progress: (pool, its keys)
        self._prune_at = 0

    @property
    def _clock(self) -> Callable[[], float]:
        return self._clock_fn

    @_clock.setter
    def _clock(self, clock: Callable[[], float]) -> None:  # tests drive time by hand
        self._clock_fn = clock
        for pool in self._pools.values():
            pool.clock = clock

    def rate(self, limit: Limit, restricted: bool = False) -> Rate:
        if restricted and limit in self._restricted:
            return self._restricted[limit]
        return self._table[limit]

    def pool(self, limit: Limit, restricted: bool = False) -> Pool:
        """The buckets of `limit` (its tighter row for a restricted account, when it has one)."""
        key = (limit, restricted and limit in self._restricted)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = Pool(self.rate(limit, restricted), self._clock_fn)
        return pool

    def take(self, limit: Limit, key: str, restricted: bool = False, cost: float = 1.0) -> bool:
        """Spend `cost` tokens from the bucket of (limit, key); False when it is empty."""
        return self.pool(limit, restricted).take(key, cost)

    def prune(self) -> int:
        """Forget buckets that are full again (they behave exactly like a fresh one)."""
        now = self._clock_fn()
        return sum(pool.prune(now) for pool in self._pools.values())

    def prune_step(self, budget: int = 2000) -> int:
        """`prune` a little at a time: look at up to `budget` buckets, going on from where the last
        step stopped, and start a new pass once one is done. At 10,000 users there are ~40,000
        buckets, and pruning them all at once held the event loop ~15 ms."""
        if not self._prune_keys:
            self._prune_keys = [(pool, list(pool.buckets)) for pool in self._pools.values() if pool.buckets]
            self._prune_at = 0
        now = self._clock_fn()
        n = 0
        while self._prune_keys and budget > 0:
            pool, keys = self._prune_keys[-1]
            part = keys[self._prune_at:self._prune_at + budget]
            n += pool.prune(now, part)
            budget -= len(part)
            self._prune_at += len(part)
            if self._prune_at >= len(keys):
                self._prune_keys.pop()
                self._prune_at = 0
        return n

    def __len__(self) -> int:
        return sum(len(pool.buckets) for pool in self._pools.values())
