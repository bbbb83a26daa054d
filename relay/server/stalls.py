"""How long the event loop could not run: its lag behind a 10 ms ticker, and garbage-collector pauses.

A message is late when the loop is: a long callback, a collection (on any thread: the collector
holds the GIL), another thread holding the GIL, or the machine not giving the process a CPU. The
ticker sees all of them at once (how late it fired); the GC callbacks name one cause. Both are
exported on /metrics (`loop_stalls`, `loop_lag_max_seconds`, `gc_pauses`, ...), so a latency tail
can be matched with the relay's own stalls (the relay benchmark reads them around each phase).

Costs 100 timer callbacks a second and two calls per collection, nothing per message.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

_ns = time.monotonic_ns


class StallWatch:
    __slots__ = ("_due", "_gc_t0", "_handle", "_loop", "_stall_ns", "_tick_ns", "gc_pause_max_s", "gc_pause_s",
                 "gc_pauses", "lag_max_s", "stall_s", "stalls")

    def __init__(self, tick_s: float = 0.01, stall_s: float = 0.005) -> None:
        if tick_s <= 0 or stall_s <= 0:
            raise ValueError(f"tick_s and stall_s must be positive (got {tick_s}, {stall_s})")
        self._tick_ns = int(tick_s * 1e9)
        self._stall_ns = int(stall_s * 1e9)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0
        self._gc_t0 = 0
        self.stalls = 0  # ticks that fired more than stall_s late
        self.stall_s = 0.0  # their lateness, summed
        self.lag_max_s = 0.0
        self.gc_pauses = 0  # collections that took more than stall_s / 5 (1 ms by default)
        self.gc_pause_s = 0.0  # every collection's duration, summed
        self.gc_pause_max_s = 0.0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._due = _ns() + self._tick_ns
        self._handle = loop.call_later(self._tick_ns / 1e9, self._tick)
        gc.callbacks.append(self._on_gc)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _tick(self) -> None:
        now = _ns()
        late = now - self._due
        if late > self._stall_ns:
            self.stalls += 1
            self.stall_s += late / 1e9
            self.lag_max_s = max(self.lag_max_s, late / 1e9)
        self._due = now + self._tick_ns
        assert self._loop is not None
        self._handle = self._loop.call_later(self._tick_ns / 1e9, self._tick)

    def _on_gc(self, phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_t0 = _ns()
            return
        took = (_ns() - self._gc_t0) / 1e9
        self.gc_pause_s += took
        if took * 5e9 > self._stall_ns:
            self.gc_pauses += 1
        self.gc_pause_max_s = max(self.gc_pause_max_s, took)
