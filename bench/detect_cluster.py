"""`sealguard bench detect_cluster --signals N --workers W`: what a detection cluster costs per signal.

One backlog of N simulated signals (the same population as `bench detect`) on an embedded broker
and a SQLite file, produced twice onto fresh topics once the group has settled, each time consumed
by `python -m sealguard detect` processes in their own consumer group: first by one worker (every counterpart side applied in-process), then by W workers
(a counterpart side whose partition another worker holds goes through the inbound topic: one
produce, one consume, one decode more). The CPU of the worker processes (utime + stime from
/proc, forked checkpoint children included) is read when each is ready and when the group's
checkpoints cover the whole backlog and every inbound copy; it ends with

    bench detect_cluster: signals=N workers=W single_cpu_us_per_signal=.. cluster_cpu_us_per_signal=.. inbound_copies=.. cluster_over_single=..

docs/capacity.md uses the ratio for the cluster's CPU per signal.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.detect_cluster")

SETTLE_S = 10.0  # > 3 × the workers' max.poll.interval.ms: every join and rebalance done


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


def _start(env: dict[str, str], group: str, name: str, logs: Path) -> subprocess.Popen[str]:
    out = (logs / f"{name}.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "sealguard", "detect", "--group", group, "--metrics-port", "0",
                             "--max-poll-interval-ms", "3000", "--checkpoint-interval", "2"],
                            env=env, stdout=subprocess.PIPE, stderr=out, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited {proc.returncode}; see {logs / (name + '.log')}")
        if select.select([proc.stdout], [], [], 0.5)[0] and proc.stdout.readline().startswith("detect: "):
            return proc
    raise RuntimeError(f"{name} printed no ready line")


def checkpointed_offsets(db: Any, group: str, topic: str) -> dict[int, int]:
    """partition → next offset the group's workers checkpointed for `topic` (with their state)."""
    from sqlalchemy import select as sql_select

    from sealguard.storage import DetectionCheckpointRow

    with db.session() as s:
        rows = s.execute(sql_select(DetectionCheckpointRow.partition, DetectionCheckpointRow.next_offset).where(
            DetectionCheckpointRow.consumer_group == group, DetectionCheckpointRow.topic == topic)).all()
    return {p: int(o) for p, o in rows}


def _count(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """Records per partition, read from the beginning until 2 s pass without one (no group join)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-count-{os.getpid()}-{time.time_ns()}",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    ends: dict[int, int] = {}
    last = time.monotonic()
    try:
        while time.monotonic() - last < 2.0:
            for m in c.consume(num_messages=5000, timeout=0.2):
                if m.error() is None:
                    ends[m.partition()] = max(ends.get(m.partition(), 0), m.offset() + 1)
                    last = time.monotonic()
    finally:
        c.close()
    return ends


def _run(base: Any, db: Any, workers: int, records: list[tuple[str, bytes]], ends: dict[int, int],
         logs: Path) -> tuple[float, float, int]:
    """(CPU seconds of the workers, wall seconds, inbound copies) for one group over the backlog.

    Each run has its own topics; the backlog is produced only once every worker is in the group and
    the assignment has settled (on Tansu a join completes after max.poll.interval.ms), so the first
    worker does not consume it alone while the others start."""
    from bench.detect import _produce_all
    from sealguard.stream import ensure_topics

    group = f"bench-dc-{workers}-{os.getpid()}"
    tag = f"dc{workers}x{os.getpid()}"
    settings = base.model_copy(update={"signals_topic": f"{tag}.signals", "inbound_topic": f"{tag}.inbound",
                                       "enforcement_topic": f"{tag}.enforcement", "scores_topic": f"{tag}.scores"})
    ensure_topics(settings.kafka, settings.topics, settings.partitions)
    env = {**os.environ, "SEALGUARD_KAFKA": settings.kafka, "SEALGUARD_DB_URL": settings.database_url,
           "SEALGUARD_STATE_DIR": str(settings.state_dir), "SEALGUARD_PARTITIONS": str(settings.partitions),
           "SEALGUARD_SIGNALS_TOPIC": settings.signals_topic, "SEALGUARD_INBOUND_TOPIC": settings.inbound_topic,
           "SEALGUARD_ENFORCEMENT_TOPIC": settings.enforcement_topic, "SEALGUARD_SCORES_TOPIC": settings.scores_topic}
    procs = [_start(env, group, f"{group}-w{i}", logs) for i in range(workers)]
    try:
        time.sleep(SETTLE_S)
        cpu0 = {p.pid: _cpu_s(p.pid) for p in procs}
        t0 = time.monotonic()
        _produce_all(settings.kafka, settings.signals_topic, records)
        deadline = t0 + 900
        inbound: dict[int, int] = {}
        while time.monotonic() < deadline:
            got = checkpointed_offsets(db, group, settings.signals_topic)
            if all(got.get(p, 0) >= end for p, end in ends.items()):
                inbound = _count(settings.kafka, settings.inbound_topic, settings.partitions) if workers > 1 else {}
                got_in = checkpointed_offsets(db, group, settings.inbound_topic)
                if all(got_in.get(p, 0) >= end for p, end in inbound.items()):
                    break
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a worker of {group} exited {p.returncode}; see {logs}")
            time.sleep(0.5)
        else:
            raise RuntimeError(f"{group} did not finish the backlog in time")
        wall = time.monotonic() - t0
        cpu = sum(_cpu_s(p.pid) - cpu0[p.pid] for p in procs)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
    return cpu, wall, sum(inbound.values())


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="sealguard bench detect_cluster")
    ap.add_argument("--signals", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--partitions", type=int, default=4)
    args = ap.parse_args(argv)
    if args.workers < 2 or args.partitions < args.workers:
        raise SystemExit("--workers must be at least 2 and at most --partitions")

    from bench.detect import _model, _signals
    from sealguard.broker import EmbeddedBroker
    from sealguard.cli.app import print_figures
    from sealguard.settings import Settings
    from sealguard.storage import Database

    tmp = Path(tempfile.mkdtemp(prefix="sg-bench-detect-cluster-"))
    logs = tmp / "logs"
    logs.mkdir()
    settings = Settings(state_dir=tmp / "state", partitions=args.partitions, kafka=None,
                        db_url=f"sqlite:///{tmp / 'state' / 'sealguard.db'}")
    db = Database(settings.database_url)  # migrations once, before the workers start
    _model(settings.state_dir)
    records, _ = _signals(args.signals, 1)
    ends: dict[int, int] = {}
    for key, _ in records:
        p = zlib.crc32(key.encode()) % args.partitions  # librdkafka's default partitioner for keyed records
        ends[p] = ends.get(p, 0) + 1
    with EmbeddedBroker(settings) as broker:
        live = settings.model_copy(update={"kafka": broker.bootstrap})
        log.info("%d signals over %d partitions; logs in %s", len(records), args.partitions, logs)
        cpu1, wall1, _ = _run(live, db, 1, records, ends, logs)
        log.info("one worker: %.1f s CPU, %.1f s wall", cpu1, wall1)
        cpun, walln, copies = _run(live, db, args.workers, records, ends, logs)
        log.info("%d workers: %.1f s CPU, %.1f s wall, %d inbound copies", args.workers, cpun, walln, copies)
    db.dispose()
    n = len(records)
    print_figures("bench detect_cluster", {
        "signals": n, "workers": args.workers, "single_cpu_us_per_signal": round(cpu1 / n * 1e6, 1),
        "cluster_cpu_us_per_signal": round(cpun / n * 1e6, 1), "inbound_copies": copies,
        "cluster_over_single": round(cpun / cpu1, 2) if cpu1 else None,
    })
