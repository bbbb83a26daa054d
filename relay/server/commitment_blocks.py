"""Report commitments kept in blocks: sorted runs of 16-byte digests, one database row per run.

A commitment is written for every message sent and read only when someone reports, so the relay
stores them the way a log would: a flush's digests are sorted and cut by their first byte into at
most 256 blocks (`pack`), which are rows of `commitment_blocks`; a report reads the blocks of the
prefixes it needs and binary-searches them (`find`); once an hour has passed, its blocks of a
prefix are merged into one (`merge`), so a report reads about one block per prefix per hour of TTL.
One row per message cost the DB thread 2–6 µs per message (SQLite's per-row work and a growing
key index); a block costs that once per flush and prefix.

Everything here is numpy over whole buffers — no Python per digest. Digests are compared as numpy
`S16`, whose order is the bytes' (memcmp) order. `S` treats trailing NUL bytes as padding, which
is harmless between two 16-byte arrays (equal arrays stay equal, order stays memcmp order), but an
element taken out of an array as Python `bytes` loses its trailing NULs: take bytes from a slice's
`tobytes()` or from the caller's own digests, never by indexing.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

DIGEST = np.dtype("S16")  # one binary_commitment
PERIOD_MS = 3_600_000  # blocks flushed within one period are merged once it closes


def period_of(ts: int) -> int:
    """The start (ms) of the period holding `ts`."""
    return ts - ts % PERIOD_MS


def digests_of(buf: bytes) -> npt.NDArray[np.bytes_]:
    """A view of concatenated 16-byte digests as an array (no copy)."""
    return np.frombuffer(buf, dtype=DIGEST)


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


def pack(buf: bytes) -> list[tuple[int, int, bytes]]:
    """Split concatenated digests into blocks: (prefix, count, sorted digests) for each first byte
    that occurs. At most 256, whatever the batch size."""
    recs = _sorted_unique(digests_of(buf))
    if not len(recs):
        return []
    first = recs.view(np.uint8)[::16]  # sorted, so each prefix is one run
    bounds = np.searchsorted(first, np.arange(257)).tolist()
    return [(p, bounds[p + 1] - bounds[p], recs[bounds[p]:bounds[p + 1]].tobytes())
            for p in range(256) if bounds[p + 1] > bounds[p]]


def merge(blocks: list[bytes]) -> tuple[int, bytes]:
    """One block from several of the same prefix: (count, sorted digests, each once)."""
    recs = _sorted_unique(digests_of(b"".join(blocks)))
    return len(recs), recs.tobytes()


def find(block: bytes, wanted: npt.NDArray[np.bytes_]) -> npt.NDArray[np.bool_]:
    """Which of `wanted` (any order) the sorted `block` holds."""
    hay = digests_of(block)
    if not len(hay) or not len(wanted):
        return np.zeros(len(wanted), dtype=bool)
    at = np.minimum(np.searchsorted(hay, wanted), len(hay) - 1)
    found: npt.NDArray[np.bool_] = hay[at] == wanted
    return found
