"""StallWatch: a blocked event loop and a garbage collection show up in its counters."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from relay.server.stalls import StallWatch


def test_a_blocked_loop_and_a_collection_are_counted() -> None:
    async def main() -> StallWatch:
        watch = StallWatch(tick_s=0.005, stall_s=0.01)
        watch.start(asyncio.get_running_loop())
        try:
            await asyncio.sleep(0.05)
            quiet = watch.stalls
            time.sleep(0.06)  # noqa: ASYNC251 - blocking the loop for 60 ms is the point
            await asyncio.sleep(0.03)
            assert watch.stalls >= quiet + 1  # more when the machine is busy
            assert 0.04 <= watch.lag_max_s < 1.0
            junk = [[i] for i in range(100_000)]
            for item in junk:
                item.append(item)  # cycles, so the collection has work
            del junk
            gc.collect()
            assert watch.gc_pause_s > 0 and watch.gc_pause_max_s > 0
        finally:
            watch.stop()
        return watch

    watch = asyncio.run(main())
    before = watch.gc_pause_s
    gc.collect()
    assert watch.gc_pause_s == before  # stopped: no longer called


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        StallWatch(tick_s=0)
