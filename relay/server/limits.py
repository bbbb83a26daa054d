"""Rate limits, declared in ONE table: name → (bucket size, refill per second).

Token buckets, per account after login and per net_bucket before it (register, challenge).
A restricted account is checked against the `_restricted` row of a limit when there is one
(tighter first contacts). A breach is reported by the caller as `limit.breached`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
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


class RateLimiter:
    """All buckets of one relay node, in memory (a node restart refills them)."""

    __slots__ = ("_buckets", "_clock", "_restricted", "_table")

    def __init__(self, overrides: Mapping[Limit, Rate] | None = None,
                 restricted: Mapping[Limit, Rate] | None = None) -> None:
        self._table = {**LIMITS, **(overrides or {})}
        self._restricted = {**RESTRICTED, **(restricted or {})}
        self._buckets: dict[tuple[Limit, str, bool], list[float]] = {}
        self._clock = time.monotonic

    def rate(self, limit: Limit, restricted: bool = False) -> Rate:
        if restricted and limit in self._restricted:
            return self._restricted[limit]
        return self._table[limit]

    def take(self, limit: Limit, key: str, restricted: bool = False, cost: float = 1.0) -> bool:
        """Spend `cost` tokens from the bucket of (limit, key); False when it is empty."""
        rate = self.rate(limit, restricted)
        tight = restricted and limit in self._restricted
        now = self._clock()
        bucket = self._buckets.get((limit, key, tight))
        if bucket is None:
            bucket = self._buckets[(limit, key, tight)] = [rate.capacity, now]
        tokens = min(rate.capacity, bucket[0] + (now - bucket[1]) * rate.refill_per_s)
        bucket[1] = now
        if tokens < cost:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - cost
        return True

    def prune(self) -> int:
        """Forget buckets that are full again (they behave exactly like a fresh one)."""
        now = self._clock()
        full = [k for k, (tokens, ts) in self._buckets.items()
                if tokens + (now - ts) * self.rate(k[0], k[2]).refill_per_s >= self.rate(k[0], k[2]).capacity]
        for k in full:
            del self._buckets[k]
        return len(full)

    def __len__(self) -> int:
        return len(self._buckets)
