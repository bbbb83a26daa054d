"""Registrations per network bucket are counted over ALL partitions by every worker (the net feed,
detection/netfeed.py): two `python -m sealguard detect` processes in one consumer group against the
real broker and PostgreSQL.

A farm of 12 accounts registers from one network bucket, 3 accounts on each of the 4 signals
partitions, so each worker holds at most 9 of the registrations; the default rule `farm_burst`
needs `net_registrations_1h >= 10`. Then:

* each worker's global net book counts all 12 (its `sealguard_detect_net_registrations` gauge),
  its own registrations read back from the topic counted once;
* every farm account — those on either worker's partitions — is restricted by `rule:farm_burst`
  when it starts messaging strangers: a worker that counted only its own partitions (9 at most)
  would restrict none.
"""

from __future__ import annotations

import os
import secrets
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select as sql_select

from sealguard.contracts import encode, key_of, new_account_id, now_ms
from sealguard.contracts.signals import AccountRegistered, MessageSent, SessionOpened
from sealguard.contracts.types import ClientKind, MessageKind
from sealguard.settings import Settings
from sealguard.storage import Database, DecisionRow
from sealguard.stream import ensure_topics, producer

pytestmark = pytest.mark.postgres

PARTITIONS = 4
PER_PARTITION = 3  # farm accounts per signals partition: 12 in all, at most 9 on one worker
MAX_POLL_MS = 3000  # Tansu completes a group join only after this (DESIGN.md)
BUCKET = "n0000000f00d1"


def _accounts_on(partition: int, n: int) -> list[str]:
    """`n` fresh accounts the default partitioner (CRC32 of the key) puts on `partition`."""
    out: list[str] = []
    while len(out) < n:
        a = new_account_id()
        if zlib.crc32(a.encode()) % PARTITIONS == partition:
            out.append(a)
    return out


def _wait(what: str, cond: Callable[[], bool], timeout: float, workers: list[Any]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        for w in workers:
            if w.proc.poll() is not None:
                raise AssertionError(f"{w.name} exited {w.proc.returncode}: {w.log_path.read_text()[-3000:]}")
        time.sleep(0.1)
    logs = "\n".join(f"--- {w.name}\n{w.log_path.read_text()[-2000:]}" for w in workers)
    raise AssertionError(f"{what}: not within {timeout}s\n{logs}")


def test_every_worker_counts_every_partitions_registrations(tmp_path: Path, broker_bootstrap: str,
                                                            pg_url: str, detect_process: Any) -> None:
    tag = secrets.token_hex(3)
    settings = Settings(state_dir=tmp_path / "state", kafka=broker_bootstrap, db_url=pg_url, partitions=PARTITIONS,
                        signals_topic=f"n{tag}.signals", inbound_topic=f"n{tag}.inbound",
                        enforcement_topic=f"n{tag}.enforcement", scores_topic=f"n{tag}.scores",
                        net_topic=f"n{tag}.net")
    ensure_topics(broker_bootstrap, settings.topics, PARTITIONS)
    db = Database(pg_url)  # runs the migrations before the workers start
    env = {**os.environ, "SEALGUARD_KAFKA": broker_bootstrap, "SEALGUARD_DB_URL": pg_url,
           "SEALGUARD_STATE_DIR": str(settings.state_dir), "SEALGUARD_PARTITIONS": str(PARTITIONS),
           "SEALGUARD_SIGNALS_TOPIC": settings.signals_topic, "SEALGUARD_INBOUND_TOPIC": settings.inbound_topic,
           "SEALGUARD_ENFORCEMENT_TOPIC": settings.enforcement_topic, "SEALGUARD_SCORES_TOPIC": settings.scores_topic,
           "SEALGUARD_NET_TOPIC": settings.net_topic}
    prod = producer(broker_bootstrap)
    signals = settings.signals_topic

    def send(events: list[Any]) -> None:
        for ev in events:
            prod.produce(signals, key=key_of(ev), value=encode(ev))
        prod.flush(10)

    workers: list[Any] = []
    try:
        workers = [detect_process(f"worker{i}", env, f"g-net-{tag}", tmp_path, "--max-poll-interval-ms",
                                  str(MAX_POLL_MS), "--checkpoint-interval", "2") for i in (1, 2)]
        # Both in the group with partitions of their own: a round of one signal per partition
        # reaches both (while the group still settles, one may hold everything).
        probes = [_accounts_on(p, 1)[0] for p in range(PARTITIONS)]
        topic = f'topic="{signals}"'

        def both_consume() -> bool:
            before = [w.metric("sealguard_detect_records_total", topic) for w in workers]
            send([SessionOpened(account=a, net_bucket="n000000000001", node="relay-1") for a in probes])
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                now = [w.metric("sealguard_detect_records_total", topic) for w in workers]
                if sum(now) - sum(before) >= PARTITIONS:
                    return all(n > b for n, b in zip(now, before))
                time.sleep(0.1)
            return False

        _wait("both workers holding partitions", both_consume, 90, workers)

        # The farm registers: 3 accounts on every partition, so on both workers.
        farm = [a for p in range(PARTITIONS) for a in _accounts_on(p, PER_PARTITION)]
        t0 = now_ms()
        send([AccountRegistered(account=a, net_bucket=BUCKET, client_kind=ClientKind.mobile, ts=t0 + i * 100)
              for i, a in enumerate(farm)])
        _wait("every worker counting all 12 registrations",
              lambda: all(w.metric("sealguard_detect_net_registrations") == len(farm) for w in workers), 30, workers)
        # Each worker read its own registrations back from the net topic and did not count them twice.
        _wait("own registrations read back", lambda: all(w.metric("sealguard_detect_net_duplicates_total") > 0
                                                         for w in workers), 30, workers)

        # Then each farm account messages 6 strangers: farm_burst needs 10 registrations in the hour.
        t1 = now_ms()
        send([MessageSent(sender=a, recipient=new_account_id(), size_bucket=6, kind=MessageKind.text,
                          first_contact=True, recipient_online=False, ts=t1 + 200 * k + i)
              for k in range(6) for i, a in enumerate(farm)])

        def restricted() -> dict[str, list[str]]:
            with db.session() as s:
                rows = s.execute(sql_select(DecisionRow.account, DecisionRow.actor).where(
                    DecisionRow.account.in_(farm))).all()
            out: dict[str, list[str]] = {}
            for account, actor in rows:
                out.setdefault(account, []).append(actor)
            return out

        _wait("every farm account restricted", lambda: len(restricted()) == len(farm), 60, workers)
        got = restricted()
        assert all(actors == ["rule:farm_burst"] for actors in got.values()), got
        # both workers decided some of them (each holds partitions with farm accounts)
        assert all(w.metric("sealguard_detect_decisions_total", 'action="restrict"') > 0 for w in workers)
        assert sum(w.metric("sealguard_detect_decisions_total", 'action="restrict"') for w in workers) == len(farm)
    finally:
        codes = [w.stop() for w in workers]
        db.dispose()
    assert codes == [0, 0], codes
