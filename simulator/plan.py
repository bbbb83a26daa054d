"""The plan: every action of a simulated population as numpy columns, before any signal exists.

Behaviours (normal users, hard cases, spam strategies, reactions) are generated vectorised into
one `Plan`; the replay in `simulator.offline` sorts it by time and walks it once through the
relay's `SignalBook`. Keeping the plan columnar is what makes a million signals a minute
possible in Python; keeping the signal-building in one walk is what makes first-contact,
report verification and presence come out exactly as the relay computes them.

Columns (all int64): ts (ms), kind (an `Act`), a (the acting account), b (the other account
or group), x and y (per-kind payload, see `Act`), spam (1 when a spammer's message to a victim).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import numpy as np

from simulator.scenario import Dist, Diurnal, Range

# Report reasons by index (plan column y of REPORT), in the scenario schema's spelling.
REASONS = ("spam", "scam", "harassment", "impersonation", "other_policy")

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MIN_MS = 60_000


class Act(enum.IntEnum):
    """Action kinds. Their order breaks ties at equal timestamps (causes before effects)."""

    REGISTER = 0        # a; x = bucket; y = client kind index
    SESSION_OPEN = 1    # a; x = bucket
    CONTACT = 2         # a adds b
    GROUP_CREATE = 3    # a creates group b
    GROUP_ADD = 4       # a adds x to group b
    MEDIA_UP = 5        # a uploads blob x of y bytes
    MSG = 6             # a → b; x = bytes; y = 1 media / 0 text; blob id in `blob`
    GMSG = 7            # a → group b; x = bytes; y = media flag
    MEDIA_FETCH = 8     # a fetches blob x
    BLOCK = 9           # a blocks b
    REPORT = 10         # a reports b; x = messages named; y = reason index; group in `blob` (or -1)
    GROUP_REMOVE = 11   # a removes x from group b (a == x: leaves)
    SESSION_CLOSE = 12  # a; x = bucket


@dataclass
class Plan:
    """Append-only columnar buffer of actions."""

    _parts: list[dict[str, np.ndarray]] = field(default_factory=list)

    def add(self, kind: Act, ts: np.ndarray, a: np.ndarray, b: np.ndarray | int = -1, x: np.ndarray | int = 0,
            y: np.ndarray | int = 0, spam: np.ndarray | int = 0, blob: np.ndarray | int = -1) -> None:
        ts = np.asarray(ts, dtype=np.int64).ravel()
        n = ts.size
        if n == 0:
            return

        def col(v: np.ndarray | int) -> np.ndarray:
            arr = np.asarray(v, dtype=np.int64).ravel()
            return np.full(n, int(arr[0]) if arr.size else 0, dtype=np.int64) if arr.size <= 1 and n != 1 else arr

        part = {"ts": ts, "kind": np.full(n, int(kind), dtype=np.int64), "a": col(a), "b": col(b), "x": col(x),
                "y": col(y), "spam": col(spam), "blob": col(blob)}
        for name, arr in part.items():
            if arr.size != n:
                raise ValueError(f"plan column {name} has {arr.size} values for {n} actions")
        self._parts.append(part)

    def raw(self) -> dict[str, np.ndarray]:
        """All actions, unsorted (cheaper when order does not matter)."""
        names = ("ts", "kind", "a", "b", "x", "y", "spam", "blob")
        if not self._parts:
            return {n: np.zeros(0, dtype=np.int64) for n in names}
        return {n: np.concatenate([p[n] for p in self._parts]) for n in names}

    def columns(self) -> dict[str, np.ndarray]:
        """All actions sorted by (ts, kind), stable within equal keys."""
        names = ("ts", "kind", "a", "b", "x", "y", "spam", "blob")
        if not self._parts:
            return {n: np.zeros(0, dtype=np.int64) for n in names}
        cols = {n: np.concatenate([p[n] for p in self._parts]) for n in names}
        order = np.lexsort((cols["kind"], cols["ts"]))
        return {n: c[order] for n, c in cols.items()}

    def __len__(self) -> int:
        return sum(p["ts"].size for p in self._parts)


# -- sampling helpers ----------------------------------------------------------------------
def lognormal(rng: np.random.Generator, d: Dist, n: int | tuple[int, ...]) -> np.ndarray:
    """Log-normal draws with the given median and sigma, clipped at `max` when set."""
    out = d.median * np.exp(rng.normal(0.0, d.sigma, n)) if d.sigma > 0 else np.full(n, d.median, dtype=float)
    if d.max is not None:
        np.minimum(out, d.max, out=out)
    return out


def uniform(rng: np.random.Generator, r: Range, n: int) -> np.ndarray:
    return rng.uniform(r.min, r.max, n) if r.max > r.min else np.full(n, r.min, dtype=float)


def dist_mean(d: Dist) -> float:
    return d.median * math.exp(d.sigma ** 2 / 2)


def diurnal_times(rng: np.random.Generator, start_ms: int, duration_ms: int, n: int, diurnal: Diurnal,
                  tz_shift_h: np.ndarray | None = None) -> np.ndarray:
    """`n` timestamps in [start, start+duration) with density following the time of day.

    Rejection sampling against 1 + strength·cos(...): cheap, exact, vectorised.
    """
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    out = np.empty(n, dtype=np.int64)
    filled = 0
    shift = np.zeros(n) if tz_shift_h is None else np.asarray(tz_shift_h, dtype=float)
    while filled < n:
        need = n - filled
        m = int(need * 2.2) + 16
        t = rng.uniform(0, duration_ms, m)
        idx = np.arange(filled, filled + m) % n if tz_shift_h is not None else None
        hour = ((start_ms + t) / HOUR_MS + (shift[idx] if idx is not None else 0.0)) % 24.0
        dens = 1.0 + diurnal.strength * np.cos(2 * np.pi * (hour - diurnal.peak_hour) / 24.0)
        keep = t[rng.uniform(0, 1.0 + diurnal.strength, m) < dens][:need]
        out[filled:filled + keep.size] = start_ms + keep.astype(np.int64)
        filled += keep.size
    return out


def weighted_choice(rng: np.random.Generator, weights: dict[str, float], keys: tuple[str, ...], n: int) -> np.ndarray:
    """Indices into `keys` drawn with the given weights (missing keys weigh 0)."""
    w = np.array([weights.get(k, 0.0) for k in keys], dtype=float)
    return rng.choice(len(keys), size=n, p=w / w.sum())


def segment_ids(counts: np.ndarray) -> np.ndarray:
    """[2, 0, 3] -> [0, 0, 2, 2, 2]: the owner of each element of a ragged array."""
    return np.repeat(np.arange(counts.size), counts)


def segment_positions(counts: np.ndarray) -> np.ndarray:
    """[2, 0, 3] -> [0, 1, 0, 1, 2]: each element's position inside its segment."""
    total = int(counts.sum())
    starts = np.cumsum(counts) - counts
    return np.arange(total) - np.repeat(starts, counts)
