"""`sealguard bench soak --minutes M`: steady load for M minutes; does the relay's memory or latency creep?

The platform runs as real processes (`bench/_harness.Platform`: embedded broker, `sealguard relay`,
`sealguard detect`) and real E2E clients send an open loop of `--rate` messages/s between partners
(`bench/_harness_load.Load`). Every few seconds the relay's RSS is read from /proc. The first 20%
of the run is warm-up (allocator arenas, caches, the SQLite page cache and librdkafka buffers grow
to their working size); growth is measured from the end of it:

    rss_growth_pct = (median RSS over the last 5% − median RSS over the 5% right after warm-up)
                     / the latter × 100
    p99_first_ms / p99_last_ms = p99 of send → SEND_ACK over those same two windows

Ends stdout with `soak: minutes=M rss_growth_pct=.. p99_first_ms=.. p99_last_ms=..`; the RSS series,
the detector's RSS and the load's counters go to stderr (and `--json PATH`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._harness import HarnessError, Platform, run_on_platform
from bench._harness_load import Load
from bench._proc import rss_bytes
from sealguard.cli.app import print_figures

log = logging.getLogger("bench.soak")
WARMUP = 0.20
WINDOW = 0.05


@dataclass
class SoakConfig:
    minutes: float = 30.0
    rate: float = 200.0
    users: int = 100
    sample_s: float = 5.0
    seed: int = 11
    db_url: str | None = None
    state_dir: Path | None = None
    series: list[tuple[float, int, int]] = field(default_factory=list)  # (t, relay RSS, detector RSS)


def _median_between(series: list[tuple[float, int, int]], t0: float, t1: float) -> float:
    xs = [rss for t, rss, _ in series if t0 <= t <= t1]
    if not xs:  # a short run: the nearest sample
        nearest = min(series, key=lambda s: abs(s[0] - t0))
        return float(nearest[1])
    return float(statistics.median(xs))


async def _run(cfg: SoakConfig, platform: Platform) -> dict[str, Any]:
    total = cfg.minutes * 60
    load = Load("127.0.0.1", platform.relay_port, cfg.users, seed=cfg.seed)
    try:
        await load.setup()
        assert platform.relay is not None
        relay_pid = platform.relay.pid
        detect_pid = platform.detect.pid if platform.detect is not None else None
        start = time.monotonic()

        async def sample() -> None:
            while True:
                t = time.monotonic() - start
                d = rss_bytes(detect_pid) if detect_pid else 0
                cfg.series.append((t, rss_bytes(relay_pid), d))
                if len(cfg.series) % 12 == 0:
                    log.info("t=%.0fs relay_rss=%.1f MB detect_rss=%.1f MB acked=%d failed=%d skipped=%d", t,
                             cfg.series[-1][1] / 2**20, d / 2**20, len(load.acked), load.failed, load.skipped)
                await asyncio.sleep(cfg.sample_s)

        sampler = asyncio.ensure_future(sample())
        await load.drive(cfg.rate, total)
        sampler.cancel()
        cfg.series.append((time.monotonic() - start, rss_bytes(relay_pid), rss_bytes(detect_pid) if detect_pid else 0))
        if platform.relay is None or platform.relay.proc.poll() is not None:
            raise HarnessError("the relay died during the soak; see " + str(platform.logs))
        w0, w1 = WARMUP * total, (WARMUP + WINDOW) * total
        l0 = (1 - WINDOW) * total
        first = _median_between(cfg.series, w0, w1)
        last = _median_between(cfg.series, l0, total + cfg.sample_s)
        figures = {
            "minutes": cfg.minutes,
            "rss_growth_pct": (last - first) / first * 100 if first else float("nan"),
            "p99_first_ms": load.p99_between(start + w0, start + w1),
            "p99_last_ms": load.p99_between(start + l0, start + total + 1),
        }
        log.info("details: rss_first_mb=%.1f rss_last_mb=%.1f sent=%d acked=%d failed=%d skipped=%d "
                 "rate_achieved=%.1f/s undecryptable=%d", first / 2**20, last / 2**20, load.sent, len(load.acked),
                 load.failed, load.skipped, len(load.acked) / total, load.undecryptable.count)
        return figures
    finally:
        await load.close()


def run_soak(cfg: SoakConfig) -> dict[str, Any]:
    return run_on_platform(lambda platform: _run(cfg, platform), prefix="sg-soak-", state_dir=cfg.state_dir,
                           db_url=cfg.db_url)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="sealguard bench soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=200.0, help="messages per second (open loop)")
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS samples")
    ap.add_argument("--state-dir", type=Path, default=None, help="keep state and logs here")
    ap.add_argument("--json", type=Path, default=None, help="write the RSS series and figures here")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops every child we started
    cfg = SoakConfig(minutes=args.minutes, rate=args.rate, users=args.users, sample_s=args.sample_s,
                     db_url=os.environ.get("SEALGUARD_DB_URL"), state_dir=args.state_dir)
    figures = run_soak(cfg)
    if args.json is not None:
        args.json.write_text(json.dumps({"figures": figures, "series": cfg.series}, indent=1))
    print_figures("soak", figures)
