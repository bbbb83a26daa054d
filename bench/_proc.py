"""What the benchmarks read about a server from outside it: CPU and RSS from `/proc`, the open-files
limit, percentiles, source addresses and Prometheus counters.

Reading `/proc/PID/stat` (utime + stime, every thread included) instead of asking the server means
the same figure is taken the same way for our relay and for mosquitto, which we cannot instrument.
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Sequence

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class ProcError(RuntimeError):
    """A process we measure is gone or unreadable."""


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), in seconds; 1/CLK_TCK resolution."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ProcError(f"cannot read CPU of pid {pid}: {exc}") from None
    # comm may contain spaces and parentheses: fields start after the last ')'.
    fields = raw[raw.rindex(b")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of stat(5)
    return (utime + stime) / _TICKS


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread, keyed `comm/tid` (the main thread's tid is the pid): tells the
    event loop apart from the database thread, the signal emitter and librdkafka's threads."""
    out: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError as exc:
        raise ProcError(f"cannot list threads of pid {pid}: {exc}") from None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue  # the thread ended
        comm = raw[raw.index(b"(") + 1:raw.rindex(b")")].decode(errors="replace")
        fields = raw[raw.rindex(b")") + 2:].split()
        out[f"{comm}/{tid}"] = (int(fields[11]) + int(fields[12])) / _TICKS
    return out


def rss_bytes(pid: int) -> int:
    """Resident set size in bytes (statm's resident pages)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError as exc:
        raise ProcError(f"cannot read RSS of pid {pid}: {exc}") from None


def raise_nofile() -> int:
    """Lift this process's soft open-files limit to its hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def source_address(index: int) -> str:
    """A distinct loopback source address for client `index`, each in its own /24, so every
    simulated client has its own net_bucket (as real clients on real networks would) and
    per-bucket pre-login limits measure nothing but themselves. Up to 62,500 clients."""
    a, b = divmod(index, 250)
    if a >= 250:
        raise ValueError(f"client index {index} is beyond the 62,500 distinct /24s this scheme gives")
    return f"127.{a + 1}.{b + 1}.1"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values; nan when there are none."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def metric_sum(text: str, needle: str) -> float | None:
    """Sum of every sample in a Prometheus text exposition whose name contains `needle`
    (so `signals_dropped` matches `sealguard_relay_signals_dropped_total`, whatever the prefix).
    None when no such metric is exported."""
    total: float | None = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if needle not in name or name.endswith("_created"):
            continue
        try:
            value = float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        total = (total or 0.0) + value
    return total
