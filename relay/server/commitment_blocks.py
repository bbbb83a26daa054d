"""Report commitments kept in blocks: runs of 16-byte digests, one database row per run.

A commitment is written for every message sent and read only when someone reports, so the relay
stores them the way a log-structured index would, in `commitment_blocks` rows of three levels that
share one index, (level, prefix, period):

- `FLUSHED`: a flush's digests, sorted and cut by their first byte (`pack`): at most 256 rows a
  flush, cheap to write — but an hour holds up to 3,600 of them per first byte;
- `GATHERED`: flushed blocks taken in id order — consecutive flushes, so the rows deleted sit
  together in the table — and regrouped by first byte (`gather`): one row per first byte per ~1 MiB
  of digests, the current hour's as soon as a chunk is full; kept until their hour has closed;
- `COMPACTED`: a closed hour's gathered blocks of one first byte merged, sorted and cut by their
  first *two* bytes (`split`): up to 65,536 rows per hour, each 1/65,536 of the hour's digests.

A report reads, per named message, the flushed and gathered blocks of its first byte (the current
hour, and hours not compacted yet) plus the compacted blocks of its two-byte prefix (one per hour of
TTL; ~10 KB each at 12,000 messages a second), and scans them for the digests it names (`locate`).
Compacting straight from flushed blocks, one first byte at a time, deleted rows spread over the
whole hour's pages (16 µs a row on SQLite, against 6 in id order).

Everything here is numpy over whole buffers — no Python per digest. Digests are compared as numpy
`S16`, whose order is the bytes' (memcmp) order. `S` treats trailing NUL bytes as padding, which
is harmless between two 16-byte arrays (equal arrays stay equal, order stays memcmp order), but an
element taken out of an array as Python `bytes` loses its trailing NULs: take bytes from a slice's
`tobytes()` or from the caller's own digests, never by indexing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

DIGEST = np.dtype("S16")  # one binary_commitment
PERIOD_MS = 3_600_000  # blocks flushed within one period are compacted once it closes
FLUSHED, GATHERED, COMPACTED = 0, 1, 2  # `level` of a block: see above


def prefix_bits(level: int) -> int:
    """How many leading bits of its digests a block's `prefix` holds: 16 compacted, else 8."""
    return 16 if level == COMPACTED else 8


def period_of(ts: int) -> int:
    """The start (ms) of the period holding `ts`."""
    return ts - ts % PERIOD_MS


def digests_of(buf: bytes) -> npt.NDArray[np.bytes_]:
    """A view of concatenated 16-byte digests as an array (no copy)."""
    return np.frombuffer(buf, dtype=DIGEST)


def prefixes(digests: npt.NDArray[np.bytes_], bits: int) -> npt.NDArray[np.int64]:
    """Each digest's `bits`-bit prefix (8: its first byte; 16: its first two, big-endian)."""
    b = digests.view(np.uint8).reshape(-1, 16)
    out = b[:, 0].astype(np.int64)
    if bits == 16:
        out = (out << 8) | b[:, 1]
    return out


def _sorted_unique(digests: npt.NDArray[np.bytes_]) -> npt.NDArray[np.bytes_]:
    """Sorted, each digest once: a message flushed twice (a retried send) is stored once."""
    out = np.sort(digests)  # releases the GIL (measured: a 2 M-digest sort left the main thread running)
    if len(out) > 1:
        keep = np.empty(len(out), dtype=bool)
        keep[0] = True
        np.not_equal(out[1:], out[:-1], out=keep[1:])
        if not keep.all():
            out = out[keep]
    return out


def _runs(recs: npt.NDArray[np.bytes_], keys: npt.NDArray[np.int64]) -> list[tuple[int, int, bytes]]:
    """Digests grouped by key (`keys` non-decreasing) cut where the key changes: (key, count,
    digests) for each key that occurs, in order. Python per run, never per digest."""
    if not len(recs):
        return []
    starts = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    bounds = [0, *starts.tolist(), len(recs)]
    firsts = keys[bounds[:-1]].tolist()
    return [(k, hi - lo, recs[lo:hi].tobytes()) for k, lo, hi in zip(firsts, bounds[:-1], bounds[1:])]


def pack(buf: bytes) -> list[tuple[int, int, bytes]]:
    """Split a flush's concatenated digests into flushed blocks: (first byte, count, sorted
    digests) for each first byte that occurs. At most 256, whatever the batch size."""
    recs = _sorted_unique(digests_of(buf))
    return _runs(recs, prefixes(recs, 8))


def gather(blocks: Sequence[bytes]) -> list[tuple[int, int, bytes]]:
    """Regroup blocks (any first bytes) by first byte: (first byte, count, digests) for each first
    byte that occurs, at most 256. The digests are only grouped — a stable radix sort on one byte,
    O(n) —, not sorted or deduplicated: `split` does both, once, when it compacts them."""
    recs = digests_of(b"".join(blocks))
    keys = prefixes(recs, 8)
    order = np.argsort(keys, kind="stable")
    return _runs(recs[order], keys[order])


def split(blocks: Sequence[bytes]) -> list[tuple[int, int, bytes]]:
    """Merge blocks (any order, any prefixes) and cut the result by two-byte prefix: (prefix, count,
    sorted digests, each once) for each two-byte prefix that occurs, in order. One sort of the
    concatenation; at most 65,536 runs, whatever the number of digests."""
    recs = _sorted_unique(digests_of(b"".join(blocks)))
    return _runs(recs, prefixes(recs, 16))


def locate(blocks: Sequence[bytes], wanted: npt.NDArray[np.bytes_]) -> list[tuple[int, int]]:
    """Where `wanted` digests (distinct, any order) occur in `blocks` (any order, sorted or not):
    (index in `wanted`, index in `blocks`) for each occurrence.

    One vectorized pass over all the blocks' digests, whatever their number: each digest's first 8
    bytes (as a uint64: only equality matters) binary-searched among the wanted ones' (at most a
    report's 100), then the few whose 8 bytes match compared whole. Python per block (to join
    them) and per candidate — a wanted digest found, or one sharing its first 64 bits — never per
    digest. (Binary-searching block by block cost ~15 µs a block in numpy calls alone.)"""
    hay = digests_of(b"".join(blocks))
    if not len(hay) or not len(wanted):
        return []
    halves = hay.view(np.uint64)
    firsts, seconds = halves[0::2], halves[1::2]
    want = wanted.view(np.uint64)
    keys = np.sort(want[0::2])
    at = np.minimum(np.searchsorted(keys, firsts), len(keys) - 1)
    cand = np.flatnonzero(keys[at] == firsts)
    if not len(cand):
        return []
    which = {(a, b): i for i, (a, b) in enumerate(zip(want[0::2].tolist(), want[1::2].tolist()))}
    ends = np.cumsum(np.fromiter((len(b) // 16 for b in blocks), dtype=np.int64, count=len(blocks)))
    owner = np.searchsorted(ends, cand, side="right").tolist()
    out = []
    for a, b, blk in zip(firsts[cand].tolist(), seconds[cand].tolist(), owner):
        i = which.get((a, b))
        if i is not None:
            out.append((i, blk))
    return out
