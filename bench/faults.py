"""`sealguard bench faults`: steady load while the platform is hurt, then the books are checked.

Under an open loop of `--rate` messages/s between real E2E clients, at random moments:
`kill -9` and restart the relay `--relay-kills` times, restart the broker (Tansu loses its log),
kill -9 and restart the detection worker, ban accounts through `do_decide` (database first, then
`sg.enforcement.v1`), and — in PostgreSQL mode — terminate every sealguard database session with
`pg_terminate_backend`. Then, from the clients' own records and the database:

* every acknowledged message reached its recipient's application exactly once, or is counted as
  `withheld` (its sender was banned while it waited in the queue);
* `bans_intact`: every account with an active ban in the database is refused at login on a fresh
  connection after all of it, and nobody else is;
* `double_enforced`: decisions applied more than once on one node — `enforcement.applied` signals
  with distinct event ids for the same (decision, node), read from the live topic across broker
  restarts, plus duplicate rows in `enforcement_applications`.

    sealguard bench faults --messages 100000 --rate 400          # SQLite (the default)
    sealguard bench faults --pg                                   # a fresh PostgreSQL database
    SEALGUARD_DB_URL=postgresql+psycopg://postgres@127.0.0.1:5432/DB sealguard bench faults

Ends stdout with `faults: acked=.. lost=.. duplicates=.. withheld=.. double_enforced=.. relay_kills=..
broker_restarts=.. detector_restarts=.. db_disconnects=.. bans_intact=..`; details go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._harness import HarnessError, Platform, create_pg_database, drop_pg_database, run_on_platform
from bench._harness_load import Load, User
from sealguard.cli.app import print_figures

log = logging.getLogger("bench.faults")
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@dataclass
class FaultsConfig:
    messages: int = 100_000  # acknowledged messages to reach
    rate: float = 400.0
    users: int = 60
    relay_kills: int = 10
    broker_restarts: int = 1
    detector_restarts: int = 1
    db_disconnects: int = 3  # PostgreSQL only
    bans: int = 3
    seed: int = 7
    db_url: str | None = None
    state_dir: Path | None = None
    max_seconds: float | None = None  # stop driving after this even if `messages` is not reached
    settle_s: float = 60.0
    stall_s: float = 120.0
    details: dict[str, Any] = field(default_factory=dict)  # filled by the run: what stderr shows


class AppliedWatcher:
    """Counts `enforcement.applied` per (decision, node) by distinct event id, across broker restarts.

    Assigned to every partition (no group join): after a broker restart the offsets are out of
    range on the new, empty log and the consumer starts again at its beginning."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        from sealguard.stream import consumer

        self.topic, self.partitions = topic, partitions
        self.seen: dict[tuple[str, str], set[str]] = defaultdict(set)
        self._consumer = consumer(bootstrap, f"faults-watch-{os.getpid()}", **{"auto.offset.reset": "earliest"})
        self._stop = threading.Event()
        self._reassign = False
        self._thread = threading.Thread(target=self._run, name="applied-watcher", daemon=True)

    def start(self) -> AppliedWatcher:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in range(self.partitions)])
        self._thread.start()
        return self

    def _run(self) -> None:
        import json

        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        while not self._stop.is_set():
            if self._reassign:
                self._reassign = False
                self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING)
                                       for p in range(self.partitions)])
            for msg in self._consumer.consume(1000, 0.2):
                if msg.error() is not None or msg.value() is None:
                    continue
                try:
                    doc = json.loads(msg.value())
                except ValueError:
                    continue
                if doc.get("type") == "enforcement.applied":
                    self.seen[(doc["decision_id"], doc["node"])].add(doc["id"])

    def reset(self) -> None:
        """After a broker restart: read the new log from its start (Tansu does not report the old
        offsets as out of range, it just returns nothing until the new log passes them)."""
        self._reassign = True

    def doubles(self) -> int:
        return sum(1 for ids in self.seen.values() if len(ids) > 1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


class TrackedPublisher:
    """The enforcement publisher the API and detection use (`sealguard.stream.producer`, linger 0, keyed
    by account, on `sg.enforcement.v1`) plus a delivery report per decision, so a run can tell a ban
    the relay never applied from one the broker never got."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from sealguard.stream import producer

        self.topic = topic
        self.delivered: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self._producer = producer(bootstrap, **{"linger.ms": 0})

    def publish(self, enforcement: Any) -> None:
        from sealguard.contracts import encode

        decision_id = enforcement.decision_id

        def report(err: Any, _msg: Any) -> None:
            if err is None:
                self.delivered.append(decision_id)
            else:
                self.failed.append((decision_id, str(err)))
                log.error("decision %s was not delivered to %s: %s", decision_id, self.topic, err)

        self._producer.produce(self.topic, key=enforcement.account, value=encode(enforcement), on_delivery=report)
        self._producer.poll(0)

    def flush(self, timeout: float = 10.0) -> int:
        return int(self._producer.flush(timeout))


def _schedule(cfg: FaultsConfig, planned_s: float, postgres: bool, rng: Any) -> list[tuple[float, str]]:
    """Random moments within 10%..85% of the planned run for every fault and ban."""
    events: list[tuple[float, str]] = []

    def at(kind: str, n: int) -> None:
        events.extend((rng.uniform(0.10, 0.85) * planned_s, kind) for _ in range(n))

    at("relay", cfg.relay_kills)
    at("broker", cfg.broker_restarts)
    at("detect", cfg.detector_restarts)
    at("ban", cfg.bans)
    if postgres:
        at("db", cfg.db_disconnects)
    return sorted(events)


async def _run(cfg: FaultsConfig, platform: Platform) -> dict[str, Any]:
    from moderation.decisions import DecisionRequest, do_decide
    from sealguard.contracts import Action, DecisionSource, ReasonCode
    from sealguard.storage import Database

    loop = asyncio.get_running_loop()
    s = platform.settings
    db = Database(s.database_url, migrate=False)
    publisher = TrackedPublisher(platform.kafka, s.enforcement_topic)
    watcher = AppliedWatcher(platform.kafka, s.signals_topic, s.partitions).start()
    load = Load("127.0.0.1", platform.relay_port, cfg.users, seed=cfg.seed)
    counts = {"relay": 0, "broker": 0, "detect": 0, "db": 0, "ban": 0}
    db_killed = 0
    lock = asyncio.Lock()  # one fault at a time: each waits for the platform to be whole again
    try:
        log.info("registering %d users", cfg.users)
        await load.setup()
        planned = cfg.messages / cfg.rate * 1.1
        if cfg.max_seconds is not None:
            planned = min(planned, cfg.max_seconds)
        events = _schedule(cfg, planned, platform.postgres, load.rng)
        log.info("driving %.0f msg/s for ~%.0f s; faults at %s", cfg.rate, planned,
                 ", ".join(f"{k}@{t:.0f}s" for t, k in events))
        stop = asyncio.Event()
        start = time.monotonic()

        def ban_user(u: User) -> None:
            do_decide(db, publisher, DecisionRequest(account=u.account, action=Action.ban,
                                                     reason_code=ReasonCode.spam, source=DecisionSource.reviewer,
                                                     actor="r:faults"))

        async def fault(kind: str) -> None:
            nonlocal db_killed
            async with lock:
                t = time.monotonic() - start
                if kind == "relay":
                    platform.kill_relay()
                    await loop.run_in_executor(None, platform.start_relay)
                elif kind == "broker":
                    await loop.run_in_executor(None, platform.restart_broker)
                    watcher.reset()
                elif kind == "detect":
                    platform.kill_detect()
                    await loop.run_in_executor(None, platform.start_detect)
                elif kind == "db":
                    db_killed += await loop.run_in_executor(None, platform.terminate_db_connections)
                elif kind == "ban":
                    candidates: list[User] = []
                    for _ in range(60):  # right after a relay restart nobody is logged in yet
                        candidates = [u for u in load.users if u.usable]
                        if candidates:
                            break
                        await asyncio.sleep(0.5)
                    if not candidates:
                        log.warning("ban skipped: no user logged in for 30 s")
                        return
                    u = load.rng.choice(candidates)
                    u.retiring = True  # no new messages to or from it; what is queued gets withheld
                    await asyncio.sleep(1.0)
                    await loop.run_in_executor(None, ban_user, u)
                counts[kind] += 1
                log.info("fault %s #%d at %.1fs (took %.1fs; acked so far %d)", kind, counts[kind], t,
                         time.monotonic() - start - t, len(load.acked))

        async def faults() -> None:
            for t, kind in events:
                delay = start + t - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await fault(kind)

        fault_task = asyncio.ensure_future(faults())

        async def until_enough() -> None:
            # Load runs until the messages are in *and* every fault has happened under it; a run in
            # which nothing is acked for `stall_s` is a broken platform, not a figure.
            last, last_t = -1, time.monotonic()
            while (len(load.acked) < cfg.messages or not fault_task.done()) and \
                    time.monotonic() - start < planned * 3 + 600:
                await asyncio.sleep(0.5)
                if len(load.acked) != last:
                    last, last_t = len(load.acked), time.monotonic()
                elif time.monotonic() - last_t > cfg.stall_s:
                    stop.set()
                    fault_task.cancel()
                    raise HarnessError(f"nothing acked for {cfg.stall_s:.0f}s (acked {last}); see the logs in "
                                       f"{platform.logs}")
            stop.set()

        await asyncio.gather(load.drive(cfg.rate, planned * 3 + 600, stop=stop), until_enough())
        await fault_task
        log.info("driving done in %.0f s: sent=%d acked=%d failed=%d skipped=%d", time.monotonic() - start,
                 load.sent, len(load.acked), load.failed, load.skipped)

        # -- the books ------------------------------------------------------------------------
        await load.settle(cfg.settle_s)
        withheld, to_banned, active_bans, app_doubles = await loop.run_in_executor(
            None, _database_books, db, {u.account for u in load.users})
        held = withheld | to_banned
        stuck = load.missing(held)
        if stuck:
            log.warning("%d acked messages not delivered while their recipients were online; logging everyone "
                        "in again (queued messages are delivered at login)", len(stuck))
            await load.relogin_all()
            await load.settle(cfg.settle_s / 2, held)
        lost = load.missing(held)
        if lost:
            log.error("lost %d, e.g. %s", len(lost), lost[:10])
        stuck_status = {str(_ack_status(load, m)) for m in stuck}
        bans_intact = await _check_bans(load, active_bans) and len(active_bans) >= counts["ban"]
        await asyncio.sleep(1.0)  # let the watcher read the last signals
        figures = {
            "acked": len(load.acked), "lost": len(lost), "duplicates": load.duplicates(),
            "withheld": sum(1 for m in load.acked if m in withheld),
            "double_enforced": watcher.doubles() + app_doubles,
            "relay_kills": counts["relay"], "broker_restarts": counts["broker"],
            "detector_restarts": counts["detect"], "db_disconnects": db_killed, "bans_intact": bans_intact,
        }
        undelivered_left = publisher.flush(5)
        details = {
            "sent": load.sent, "failed": load.failed, "skipped": load.skipped, "stuck_until_relogin": len(stuck),
            "stuck_ack_status": ",".join(sorted(stuck_status)) or "none",
            "lost_all_stuck": int(set(lost) <= set(stuck)), "undecryptable": load.undecryptable.count,
            "delay_p50_s_decrypted": round(load.delivery_delays()[0], 3),
            "delay_p50_s_undecryptable": round(load.delivery_delays()[1], 3),
            "delay_min_s_undecryptable": round(load.delivery_delays()[2], 3),
            "held_for_banned_recipient": sum(1 for m in load.acked if m in to_banned), "bans_by_bench": counts["ban"],
            "active_bans": len(active_bans), "reconnects": sum(u.reconnects for u in load.users),
            "decisions_seen_applied": len(watcher.seen), "decisions_delivered": len(publisher.delivered),
            "decisions_undelivered": len(publisher.failed) + undelivered_left,
            "wall_s": round(time.monotonic() - start),
        }
        log.info("details: %s", " ".join(f"{k}={v}" for k, v in details.items()))
        cfg.details = details
        return figures
    finally:
        await load.close()
        watcher.stop()
        publisher.flush(5)
        db.dispose()


def _ack_status(load: Load, mid: str) -> str:
    sender = load.users[load.acked[mid][0]].client
    status = sender.ack_status.get(mid)
    return status.name if status is not None else "unknown"


def _database_books(db: Any, accounts: set[str]) -> tuple[set[str], set[str], set[str], int]:
    """(withheld message ids, ids queued for a banned recipient, accounts with an active ban,
    duplicate (decision, node) rows in enforcement_applications)."""
    from sqlalchemy import func, select

    from sealguard.contracts import now_ms
    from sealguard.storage import DecisionRow, EnforcementApplicationRow, QueuedMessageRow

    now = now_ms()
    with db.session() as s:
        bans = {a for a, exp in s.execute(select(DecisionRow.account, DecisionRow.expires_at).where(
            DecisionRow.status == "active", DecisionRow.action == "ban")) if exp is None or exp > now}
        withheld = set(s.scalars(select(QueuedMessageRow.message_id).where(QueuedMessageRow.withheld.is_(True))))
        to_banned = set(s.scalars(select(QueuedMessageRow.message_id).where(
            QueuedMessageRow.recipient.in_(bans)))) if bans else set()
        doubles = s.execute(select(func.count()).select_from(
            select(EnforcementApplicationRow.decision_id).group_by(
                EnforcementApplicationRow.decision_id, EnforcementApplicationRow.node)
            .having(func.count() > 1).subquery())).scalar() or 0
    return withheld, to_banned, bans & accounts, int(doubles)


async def _check_bans(load: Load, active_bans: set[str]) -> bool:
    """Every banned account is refused on a fresh connection; every other user is logged in."""
    from relay.client import Banned, ClientError, RelayClient

    ok = True
    deadline = time.monotonic() + 20  # a user may still be between connections after the last fault
    while time.monotonic() < deadline and not all(u.online or u.banned or u.account in active_bans
                                                  for u in load.users):
        await asyncio.sleep(0.2)
    for u in load.users:
        if u.account in active_bans:
            probe = RelayClient(load.host, load.port, u.client.identity, bind_address=None, request_timeout=10)
            try:
                await probe.connect()
                await probe.login()
                log.error("banned account %s logged in", u.account)
                ok = False
            except Banned:
                pass
            except (TimeoutError, ClientError, OSError) as exc:
                log.error("ban probe of %s failed oddly: %s", u.account, exc)
                ok = False
            finally:
                probe.abort()
        elif u.banned or not u.client.connected:
            log.error("user %s (no active ban) is %s", u.account, "refused" if u.banned else "not connected")
            ok = False
    return ok


def run_faults(cfg: FaultsConfig) -> dict[str, Any]:
    """Set the platform up, run, tear it all down; returns the figures."""
    if os.environ.get("SEALGUARD_KAFKA"):
        cfg.broker_restarts = 0  # not ours to restart
    return run_on_platform(lambda platform: _run(cfg, platform), prefix="sg-faults-", state_dir=cfg.state_dir,
                           db_url=cfg.db_url)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="sealguard bench faults", description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=100_000, help="acknowledged messages to reach")
    ap.add_argument("--rate", type=float, default=400.0, help="messages per second (open loop)")
    ap.add_argument("--users", type=int, default=60)
    ap.add_argument("--relay-kills", type=int, default=10)
    ap.add_argument("--broker-restarts", type=int, default=1)
    ap.add_argument("--detector-restarts", type=int, default=1)
    ap.add_argument("--db-disconnects", type=int, default=3)
    ap.add_argument("--bans", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--pg", action="store_true", help=f"a fresh PostgreSQL database (created via {PG_ADMIN})")
    ap.add_argument("--state-dir", type=Path, default=None, help="keep state and logs here")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops every child we started
    db_url = os.environ.get("SEALGUARD_DB_URL")
    created = None
    if args.pg and not (db_url or "").startswith("postgresql"):
        created = db_url = create_pg_database(PG_ADMIN)
        log.info("PostgreSQL mode: %s", db_url)
    cfg = FaultsConfig(messages=args.messages, rate=args.rate, users=args.users, relay_kills=args.relay_kills,
                       broker_restarts=args.broker_restarts, detector_restarts=args.detector_restarts,
                       db_disconnects=args.db_disconnects, bans=args.bans, seed=args.seed, db_url=db_url,
                       state_dir=args.state_dir)
    try:
        figures = run_faults(cfg)
    finally:
        if created:
            drop_pg_database(PG_ADMIN, created)
    print_figures("faults", figures)
