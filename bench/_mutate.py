"""Fuzz frames for the relay protocol: valid frames of every type, then mutated.

Why mutate valid frames rather than send random bytes: random bytes almost never pass the 11-byte
header check (length, version, known type), so they only ever test the first 4 lines of the
reader. Most mutations here keep the header consistent (the length field is fixed up after a
cut or an extension), so the payload decoders and the server's handlers see malformed fields,
wrong counts, bad UTF-8 and frames of one type carrying another's payload. A quarter attack the
header itself (length, version, type, pure noise). Deterministic for a given seed.
"""

from __future__ import annotations

import random
import string
import struct
from collections.abc import Callable

from relay.protocol import HEADER_SIZE, SCHEMAS, VERSION, FrameType, encode
from relay.protocol.frames import HEADER_TAIL, MAX_FRAME, MAX_FRAME_UNAUTHENTICATED

_LEN = struct.Struct(">I")
_INTERESTING = (0, 1, 0x7F, 0x80, 0xFE, 0xFF)
_INTERESTING_LEN = (0, 1, HEADER_TAIL - 1, HEADER_TAIL, MAX_FRAME_UNAUTHENTICATED, MAX_FRAME_UNAUTHENTICATED + 1,
                    MAX_FRAME, MAX_FRAME + 1, 2**31, 2**32 - 1)
_ALL_TYPES = [int(t) for t in FrameType]
_OTHER_VERSIONS = [v for v in range(256) if v != VERSION]


def _acct(rng: random.Random) -> str:
    return "a" + "".join(rng.choice("0123456789abcdef") for _ in range(20))


def _str(rng: random.Random) -> str:
    pick = rng.random()
    if pick < 0.1:
        return ""
    if pick < 0.2:
        return "".join(rng.choice("éß漢字🙂") for _ in range(rng.randint(1, 20)))
    return "".join(rng.choice(string.ascii_letters + string.digits + "-_.") for _ in range(rng.randint(1, 60)))


_VALUES: dict[str, Callable[[random.Random], object]] = {
    "u8": lambda r: r.randint(0, 255),
    "u16": lambda r: r.randint(0, 2**16 - 1),
    "u32": lambda r: r.randint(0, 2**32 - 1),
    "u64": lambda r: r.randint(0, 2**64 - 1),
    "acct": _acct,
    "mid": lambda r: r.randbytes(16),
    "str": _str,
    "accts": lambda r: [_acct(r) for _ in range(r.randint(0, 6))],
    "mids": lambda r: [r.randbytes(16) for _ in range(r.randint(0, 6))],
    "keys": lambda r: [(_str(r), _str(r)) for _ in range(r.randint(0, 4))],
    "blob": lambda r: r.randbytes(r.randint(0, 64)),
    "rest": lambda r: r.randbytes(r.choice((0, 1, 16, 100, 300))),
}


def valid_frame(rng: random.Random, ftype: FrameType | None = None, accounts: list[str] | None = None) -> bytes:
    """A well-formed frame of `ftype` (random when None) with random field values. With
    `accounts`, most account fields name one of them, so frames get past "no such account" into
    the handlers' deeper paths (sends, groups, blocks, reports between real accounts)."""
    ft = ftype if ftype is not None else rng.choice(list(FrameType))
    values = []
    for _, kind in SCHEMAS[ft]:
        if accounts and kind == "acct" and rng.random() < 0.7:
            values.append(rng.choice(accounts))
        elif accounts and kind == "accts" and rng.random() < 0.7:
            values.append(rng.sample(accounts, rng.randint(0, min(4, len(accounts)))))
        else:
            values.append(_VALUES[kind](rng))
    return encode(ft, rng.randint(0, 2**32 - 1), *values, flags=rng.choice((0, 0, 0, 1, rng.randint(0, 255))))


def _fix_length(frame: bytearray) -> bytearray:
    if len(frame) >= 4:
        frame[0:4] = _LEN.pack(len(frame) - 4)
    return frame


class Mutator:
    """`next()` returns one fuzz frame. `corpus_size` valid frames are drawn up front, then each
    call mutates one (or splices two)."""

    def __init__(self, seed: int = 0, corpus_size: int = 2000, accounts: list[str] | None = None) -> None:
        self.rng = random.Random(seed)
        self.corpus = [valid_frame(self.rng, accounts=accounts) for _ in range(corpus_size)]
        # (operator, weight): header-preserving operators carry about three quarters of the weight.
        ops: list[tuple[Callable[[bytearray], bytearray], int]] = [
            (self._flip_bits, 16), (self._set_bytes, 16), (self._truncate, 12), (self._extend, 10),
            (self._retype, 12), (self._splice, 6), (self._valid, 12),
            (self._length, 8), (self._version, 5), (self._unknown_type, 5), (self._noise, 7),
        ]
        self._ops = [op for op, _ in ops]
        self._weights = [w for _, w in ops]
        self._deep_ops = self._ops[:7]  # the header-preserving ones
        self._deep_weights = self._weights[:7]

    def next(self, deep: bool = False) -> bytes:
        """One fuzz frame; `deep` keeps the header valid (for all but the last frame of a batch
        on a live connection, which a broken header would close before the rest is read)."""
        rng = self.rng
        frame = bytearray(rng.choice(self.corpus))
        ops, weights = (self._deep_ops, self._deep_weights) if deep else (self._ops, self._weights)
        for op in rng.choices(ops, weights, k=1 if rng.random() < 0.7 else 2):
            frame = op(frame)
        return bytes(frame)

    # -- header-preserving ------------------------------------------------------------------
    def _payload_index(self, frame: bytearray) -> int | None:
        return self.rng.randrange(HEADER_SIZE, len(frame)) if len(frame) > HEADER_SIZE else None

    def _flip_bits(self, frame: bytearray) -> bytearray:
        for _ in range(self.rng.randint(1, 4)):
            i = self._payload_index(frame)
            if i is None:
                if not frame:
                    return frame
                i = self.rng.randrange(min(7, len(frame) - 1), len(frame))  # the request id
            frame[i] ^= 1 << self.rng.randrange(8)
        return frame

    def _set_bytes(self, frame: bytearray) -> bytearray:
        for _ in range(self.rng.randint(1, 4)):
            i = self._payload_index(frame)
            if i is None:
                return frame
            frame[i] = self.rng.choice(_INTERESTING) if self.rng.random() < 0.5 else self.rng.randrange(256)
        return frame

    def _truncate(self, frame: bytearray) -> bytearray:
        if len(frame) > HEADER_SIZE:
            del frame[self.rng.randint(HEADER_SIZE, len(frame) - 1):]
        return _fix_length(frame)

    def _extend(self, frame: bytearray) -> bytearray:
        frame += self.rng.randbytes(self.rng.choice((1, 2, 4, 16, 64)))
        return _fix_length(frame)

    def _retype(self, frame: bytearray) -> bytearray:
        if len(frame) > 5:
            frame[5] = self.rng.choice(_ALL_TYPES)
        return frame

    def _splice(self, frame: bytearray) -> bytearray:
        other = self.rng.choice(self.corpus)
        return _fix_length(bytearray(frame[:HEADER_SIZE]) + other[HEADER_SIZE:])

    def _valid(self, frame: bytearray) -> bytearray:
        return frame

    # -- header-breaking -------------------------------------------------------------------
    def _length(self, frame: bytearray) -> bytearray:
        rng = self.rng
        value = rng.choice(_INTERESTING_LEN) if rng.random() < 0.6 else len(frame) - 4 + rng.randint(-8, 8)
        frame[0:4] = _LEN.pack(max(0, min(value, 2**32 - 1)))
        return frame

    def _version(self, frame: bytearray) -> bytearray:
        if len(frame) > 4:
            frame[4] = self.rng.choice(_OTHER_VERSIONS)
        return frame

    def _unknown_type(self, frame: bytearray) -> bytearray:
        if len(frame) > 5:
            frame[5] = self.rng.randrange(256)
        return frame

    def _noise(self, frame: bytearray) -> bytearray:
        return bytearray(self.rng.randbytes(self.rng.randint(0, 64)))
