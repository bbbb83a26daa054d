"""`sealguard bench cluster --nodes N`: one relay node, then N relay nodes, on one broker and one database.

In one run (issue 8):
1. **single node** — `python -m sealguard relay` (no cluster, the asyncio data plane the cluster nodes
   run: `SEALGUARD_RELAY_NATIVE=0`) on PostgreSQL; the relay benchmark's
   load processes (`bench/_load.py`) connect `--users` users and run a closed loop of `--messages`
   100-byte messages; CPU of the relay and the broker per delivered message;
2. **N nodes** — `sealguard relay --cluster --node-id relay-i` × N on another database; the same
   load with user i on node i mod N, so a message crosses nodes with probability (N-1)/N; CPU of
   every node plus the broker per delivered message, latency send → receipt (p99), and the share
   of messages handed over between nodes (the nodes' `cluster_handed_over` counters).
   Steps 1 and 2 take turns — single, cluster, single, cluster… `--repeats` measured runs each, the
   median of each kept — so both see the same shared machine; both setups stay up meanwhile, each
   on its own embedded broker with its own load processes (its users stay connected);
3. **a node killed under load** — real SDK clients (`bench/_harness_load.py`, vodozemac, a
   supervisor per user that reconnects — to the next node — after the kill) send at `--kill-rate`
   for `--kill-seconds`; halfway, the last node gets SIGKILL; then every message acked to its sender
   must reach its recipient (`lost`), the killed node is started again;
4. **bans** — `--bans` ban decisions through the moderation write path (`do_decide`: database,
   then `sg.enforcement.v1`), paced at `--ban-rate`; for each, the time until every node's
   `enforcement.applied` signal (its `ts`) — the p99 over decisions.

Ends with `bench cluster: nodes=N msgs_per_s=.. cross_node_share=.. server_cpu_us_per_msg=..
single_node_cpu_us_per_msg=.. p99_ms=.. lost=.. ban_all_nodes_p99_ms=..`. The database is a fresh
PostgreSQL database next to SEALGUARD_TEST_PG (default postgres@127.0.0.1:5432/test), dropped at
the end; the broker is an embedded Tansu unless SEALGUARD_KAFKA names one (then its CPU is not
counted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import re
import secrets
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench._harness import Child, create_pg_database, drop_pg_database
from bench._proc import cpu_seconds, metric_sum, percentile, raise_nofile, thread_cpu
from bench.relay import Loader, _latencies, _split, all_do, python_thread_names
from sealguard.cli.app import print_figures
from sealguard.net import free_port

log = logging.getLogger("bench.cluster")
REPO = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("SEALGUARD_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
_READY = re.compile(r"relay: listening=(\S+):(\d+) metrics=(\S+) node=(\S+)")


class BenchError(RuntimeError):
    """The benchmark could not run; the message says which step failed."""


# -- the nodes ------------------------------------------------------------------------------------

class Nodes:
    """N relay nodes as `python -m sealguard relay` processes on one broker and one database, each
    on a fixed port (a killed node comes back on the same address), logs under `state/logs`.
    With `cluster=False` and one node: the plain single relay."""

    def __init__(self, state_dir: Path, kafka: str, db_url: str, n: int, *, cluster: bool = True,
                 prefix: str | None = None, ack_timeout_s: float = 5.0, node_ttl_s: float = 3.0,
                 limits: list[str] | None = None, partitions: int = 2) -> None:
        self.state_dir = state_dir
        self.logs = state_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.kafka, self.db_url, self.n = kafka, db_url, n
        self.cluster = cluster
        self.prefix = prefix or f"c{secrets.token_hex(3)}"
        self.ack_timeout_s, self.node_ttl_s = ack_timeout_s, node_ttl_s
        self.limits = limits or []
        self.partitions = partitions
        self.ports = [free_port("127.0.0.1") for _ in range(n)]
        self.children: list[Child | None] = [None] * n
        self.metrics_urls: list[str] = [""] * n

    @property
    def signals_topic(self) -> str:
        return f"{self.prefix}.signals"

    @property
    def enforcement_topic(self) -> str:
        return f"{self.prefix}.enforcement"

    def node_id(self, i: int) -> str:
        return f"relay-{i + 1}"

    def env(self) -> dict[str, str]:
        p = self.prefix
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEALGUARD_")}
        env.update({"SEALGUARD_STATE_DIR": str(self.state_dir), "SEALGUARD_KAFKA": self.kafka,
                    "SEALGUARD_DB_URL": self.db_url, "SEALGUARD_PARTITIONS": str(self.partitions),
                    "SEALGUARD_SIGNALS_TOPIC": f"{p}.signals", "SEALGUARD_INBOUND_TOPIC": f"{p}.inbound",
                    "SEALGUARD_ENFORCEMENT_TOPIC": f"{p}.enforcement", "SEALGUARD_SCORES_TOPIC": f"{p}.scores",
                    "SEALGUARD_ROUTES_TOPIC": f"{p}.relay.routes", "SEALGUARD_INBOX_PREFIX": f"{p}.relay.node.",
                    "PYTHONUNBUFFERED": "1"})
        if not self.cluster:
            # The native data plane serves single nodes only (relay/server/plane.py); the single node runs
            # the asyncio data plane the cluster nodes run, so the ratio is the cost of clustering, like
            # for like. What the plane saves a single node is `bench relay`'s figure.
            env["SEALGUARD_RELAY_NATIVE"] = "0"
        return env

    def start(self, i: int, timeout: float = 90.0) -> None:
        args = ["relay", "--host", "127.0.0.1", "--port", str(self.ports[i]), "--metrics-port", "0",
                "--ack-timeout", str(self.ack_timeout_s), "--node-id", self.node_id(i)]
        if self.cluster:
            args += ["--cluster", "--node-ttl", str(self.node_ttl_s)]
        for spec in self.limits:
            args += ["--limit", spec]
        child = Child(self.node_id(i), args, self.env(), self.logs / f"{self.node_id(i)}.log")
        self.children[i] = child
        m = child.wait_for(_READY, timeout)
        self.metrics_urls[i] = m.group(3)
        if all(c is not None for c in self.children):
            self.wait_joined()

    def start_all(self) -> Nodes:
        from sealguard.storage import Database

        Database(self.db_url).dispose()  # migrations once, before the nodes race to run them
        for i in range(self.n):
            self.start(i)
        self.wait_joined()
        return self

    def wait_joined(self, timeout: float = 30.0) -> None:
        """Until every running node counts every other running node alive (each learns of a new
        peer at its next heartbeat): before that, messages to the newcomer's clients are queued."""
        if not self.cluster:
            return
        running = [i for i in range(self.n) if self.children[i] is not None]
        deadline = time.monotonic() + timeout
        while True:
            seen = []
            for i in running:
                with urllib.request.urlopen(self.metrics_urls[i], timeout=10) as resp:
                    seen.append(metric_sum(resp.read().decode(), "cluster_peers_alive") or 0.0)
            if all(v >= len(running) - 1 for v in seen):
                return
            if time.monotonic() > deadline:
                raise BenchError(f"relay nodes see {seen} live peers after {timeout:.0f}s, expected "
                                 f"{len(running) - 1} each; logs in {self.logs}")
            time.sleep(0.1)

    def kill(self, i: int) -> None:
        child = self.children[i]
        if child is not None:
            child.kill()
            self.children[i] = None

    def stop(self) -> None:
        for i, child in enumerate(self.children):
            if child is not None:
                child.stop()
                self.children[i] = None

    def __enter__(self) -> Nodes:  # noqa: PYI034
        return self.start_all()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self.children if c is not None]

    def metric(self, needle: str) -> float:
        total = 0.0
        for i, url in enumerate(self.metrics_urls):
            if self.children[i] is None:
                continue
            with urllib.request.urlopen(url, timeout=10) as resp:
                total += metric_sum(resp.read().decode(), needle) or 0.0
        return total


def cpu_total(pids: list[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


def _threads(pids: list[int], names: list[dict[str, str]]) -> dict[str, float]:
    """CPU seconds by thread name, summed over the nodes: the Python name where py-spy gave one
    (MainThread = the event loop, cluster-inbox, signal-emitter...), else the native one
    (librdkafka's `rdk:broker…`, `rdk:main`)."""
    out: dict[str, float] = {}
    for pid, known in zip(pids, names):
        for key, secs in thread_cpu(pid).items():
            comm, _, tid = key.rpartition("/")
            name = known.get(tid) or re.sub(r"\d+$", "", comm)
            out[name] = out.get(name, 0.0) + secs
    return out


def _loop_counters(pids: list[int]) -> list[float]:
    """Summed over the nodes' event-loop threads (tid = pid): read and write syscalls (/proc io
    `syscr`, `syscw`: the clients' sockets, the loop's wake-up pipe), context switches (voluntary,
    involuntary) and CPU seconds in user space and in the kernel — diagnostics for the log only."""
    out = [0.0] * 6
    for pid in pids:
        try:
            with open(f"/proc/{pid}/task/{pid}/io") as f:
                io = dict(line.split(": ") for line in f.read().splitlines())
            with open(f"/proc/{pid}/task/{pid}/status") as f:
                st = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
            with open(f"/proc/{pid}/task/{pid}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rindex(b")") + 2:].split()
        tick = os.sysconf("SC_CLK_TCK")
        for i, v in enumerate((int(io["syscr"]), int(io["syscw"]), int(st["voluntary_ctxt_switches"]),
                               int(st["nonvoluntary_ctxt_switches"]), int(fields[11]) / tick,
                               int(fields[12]) / tick)):
            out[i] += v
    return out


def _io_counts(pids: list[int]) -> tuple[int, int]:
    """Read and write syscalls of whole processes (/proc io): the broker's requests and responses."""
    r = w = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/io") as f:
                io = dict(line.split(": ") for line in f.read().splitlines())
        except OSError:
            continue
        r, w = r + int(io["syscr"]), w + int(io["syscw"])
    return r, w


# -- 1 and 2: throughput, CPU, latency -----------------------------------------------------------------

class ClosedLoop:
    """One setup's closed-loop measurement (its nodes, its broker, its own load processes with their
    users connected), so that the two setups can take turns: `run()` measures one run of
    `--messages` messages; `summary()` keeps the median run. Each run is preceded by a short warm-up
    (not measured): the setup sat idle while the other one ran."""

    def __init__(self, nodes: Nodes, extra_pids: list[int], loaders: list[Loader], args: argparse.Namespace,
                 label: str) -> None:
        self.nodes, self.extra_pids, self.loaders, self.args, self.label = nodes, extra_pids, loaders, args, label
        self.runs: list[dict[str, Any]] = []
        self.all_lat: list[float] = []
        self.idle_pids: list[int] = []  # the other setup's processes: their CPU during our runs is logged

    def connect(self) -> None:
        args, nodes, k = self.args, self.nodes, len(self.loaders)
        counts = _split(args.users, k)
        firsts = [sum(counts[:i]) for i in range(k)]
        run_id = "c" + os.urandom(4).hex()
        replies = all_do(self.loaders, [{"cmd": "connect", "target": "relay", "host": "127.0.0.1",
                                         "port": nodes.ports[0], "ports": nodes.ports, "first": f, "count": c,
                                         "concurrency": args.concurrency, "run_id": run_id, "keepalive_s": 50.0,
                                         "partners": args.partners}
                                        for f, c in zip(firsts, counts)])
        connected = sum(r["connected"] for r in replies)
        if connected < max(2, args.users * 0.99):
            raise BenchError(f"{self.label}: only {connected} of {args.users} users connected; first error: "
                             f"{next((r['error'] for r in replies if r['error']), '')}")
        time.sleep(1.5)  # every node learns every route
        self.pids = nodes.pids + self.extra_pids
        self.names = [*(nodes.node_id(i) for i in range(nodes.n) if nodes.children[i] is not None), "broker"]
        self.thread_names = [python_thread_names(p) for p in nodes.pids]

    def phase(self, count: int) -> tuple[list[dict[str, Any]], float, list[float]]:
        k = len(self.loaders)
        windows = _split(self.args.inflight, k)
        cmds = [{"cmd": "run", "count": c, "inflight": max(1, w), "timeout": 120.0}
                for c, w in zip(_split(count, k), windows)]
        rs = all_do(self.loaders, cmds)
        for i, r in enumerate(rs):
            if r.get("timed_out"):
                log.warning("%s: load %d timed out: sent=%s received=%s acked=%s last_error=%s", self.label, i,
                            r["sent"], r["received"], r["acked"], r["last_error"])
        wall = (max(r["t_end"] for r in rs) - min(r["t_start"] for r in rs)) / 1e9
        return rs, wall, _latencies(rs)

    def run(self) -> None:
        """A warm-up, then one measured run: CPU of every node and the broker per delivered message."""
        nodes, pids, names, label = self.nodes, self.pids, self.names, self.label
        self.phase(min(max(self.args.messages // 10, 100), 3000))  # warm-up
        handed0 = nodes.metric("cluster_handed_over") if nodes.cluster else 0.0
        idle0 = cpu_total(self.idle_pids)
        per0 = [cpu_seconds(p) for p in pids]
        threads0 = _threads(nodes.pids, self.thread_names)
        loop0 = _loop_counters(nodes.pids)
        io0 = _io_counts(self.extra_pids)
        rs, wall, lat = self.phase(self.args.messages)
        per1 = [cpu_seconds(p) for p in pids]
        loop1 = _loop_counters(nodes.pids)
        io1 = _io_counts(self.extra_pids)
        threads1 = _threads(nodes.pids, self.thread_names)
        idle1 = cpu_total(self.idle_pids)
        handed1 = nodes.metric("cluster_handed_over") if nodes.cluster else 0.0
        delivered = sum(r["received"] for r in rs)
        acked = sum(r["acked"] for r in rs)
        self.all_lat.extend(lat)
        run = {"delivered": delivered, "acked": acked, "wall_s": wall, "handed": handed1 - handed0,
               "msgs_per_s": delivered / wall if wall > 0 else math.nan,
               "cpu_us_per_msg": (sum(per1) - sum(per0)) * 1e6 / delivered if delivered else math.nan}
        self.runs.append(run)
        if delivered:
            log.info("%s: %.0f msgs/s, %.1f us of CPU per message by process: %s; by thread, summed over the "
                     "nodes: %s; the idle other setup meanwhile: %.1f%% of a core", label, run["msgs_per_s"],
                     run["cpu_us_per_msg"],
                     {n: round((b - a) * 1e6 / delivered, 1) for n, a, b in zip(names, per0, per1)},
                     {k: round((v - threads0.get(k, 0.0)) * 1e6 / delivered, 1)
                      for k, v in sorted(threads1.items(), key=lambda kv: threads0.get(kv[0], 0.0) - kv[1])
                      if v - threads0.get(k, 0.0) > 0},
                     (idle1 - idle0) * 100 / wall if wall > 0 else math.nan)
            log.info("%s: event loops per message: read syscalls %.2f, write syscalls %.2f, context switches "
                     "%.3f voluntary %.3f involuntary, CPU %.1f us user %.1f us kernel", label,
                     *(((b - a) * (1e6 if i >= 4 else 1)) / delivered for i, (a, b) in enumerate(zip(loop0, loop1))))
            log.info("%s: the broker's read / write syscalls a second: %.0f / %.0f", label,
                     (io1[0] - io0[0]) / wall, (io1[1] - io0[1]) / wall)

    def profile(self, path: Path) -> None:
        """After the measured runs (no skew): py-spy on the first node during one more run."""
        from bench.relay import PySpy, summarize_profile

        spy = PySpy(self.nodes.pids[0], path)
        self.phase(self.args.messages)
        spy.stop()
        if path.exists():
            log.info("%s: profile of %s (py-spy):\n%s", self.label, self.nodes.node_id(0), summarize_profile(path))

    def close(self) -> None:
        all_do(self.loaders, [{"cmd": "close"}] * len(self.loaders))

    def summary(self) -> dict[str, Any]:
        runs = self.runs
        median = sorted(runs, key=lambda r: r["cpu_us_per_msg"])[len(runs) // 2]
        delivered = sum(r["delivered"] for r in runs)
        acked = sum(r["acked"] for r in runs)
        all_lat = sorted(self.all_lat)
        out = {"delivered": delivered, "acked": acked, "runs": len(runs),
               "msgs_per_s": median["msgs_per_s"], "cpu_us_per_msg": median["cpu_us_per_msg"],
               "cpu_us_per_msg_runs": [round(r["cpu_us_per_msg"], 1) for r in runs],
               "p50_ms": percentile(all_lat, 50), "p99_ms": percentile(all_lat, 99),
               "lost": max(0, acked - delivered),  # acked (SEND_ACK) but never received
               "cross_node_share": sum(r["handed"] for r in runs) / delivered if delivered else math.nan}
        log.info("%s: %s", self.label, json.dumps({k2: round(v, 3) if isinstance(v, float) else v
                                                   for k2, v in out.items()}))
        return out


def closed_loops(one: ClosedLoop, many: ClosedLoop, repeats: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two setups take turns — single, cluster, single, cluster… — so that both see the same
    machine (it is shared: its load drifts over minutes, and a setup measured only before the other
    would carry that drift into the ratio); the median run of each is kept."""
    one.idle_pids, many.idle_pids = many.pids, one.pids
    for _ in range(repeats):
        one.run()
        many.run()
    return one.summary(), many.summary()


# -- 3: a node killed under load ------------------------------------------------------------------------

async def kill_run(nodes: Nodes, args: argparse.Namespace) -> dict[str, Any]:
    """SDK users spread over the nodes; the last node is killed halfway; every acked message must arrive."""
    from bench._harness_load import BookedClient, Load, address
    from relay.client import Identity

    ports = nodes.ports

    class RoamingClient(BookedClient):
        """Connects to its own node; when that refuses (killed), to the next one — as a phone would."""

        async def connect(self) -> None:
            try:
                await super().connect()
            except OSError:
                self.port = ports[(ports.index(self.port) + 1) % len(ports)]
                raise

    load = Load("127.0.0.1", ports[0], args.kill_users, partners=3, max_inflight=500)
    # User i on node i mod N; a second after registering, every node knows every account.
    await load.setup(10, client=lambda i: RoamingClient("127.0.0.1", ports[i % len(ports)], Identity.generate(),
                                                        bind_address=address(i), request_timeout=15.0,
                                                        ping_interval=20.0), settle_s=1.0)
    await asyncio.sleep(1.0)
    victim = nodes.n - 1
    half = args.kill_seconds / 2
    drive = asyncio.ensure_future(load.drive(args.kill_rate, args.kill_seconds))
    await asyncio.sleep(half)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, nodes.kill, victim)
    log.info("killed node %s (SIGKILL) after %.1fs of load", nodes.node_id(victim), half)
    await drive
    missing = await load.settle(args.settle_s)
    relogins = 0
    if missing:  # what is left must be in the queue: a login on any node delivers it
        log.warning("%d acked messages not received after %.0fs; every user logs in again", len(missing),
                    args.settle_s)
        relogins = len(missing)
        await load.relogin_all()
        missing = await load.settle(args.settle_s)
    out = {"sent": load.sent, "acked": len(load.acked), "failed": load.failed, "lost": len(missing),
           "needed_relogin": relogins, "duplicates": load.duplicates(),
           "reconnects": sum(u.reconnects for u in load.users)}
    await load.close()
    log.info("kill run: %s", json.dumps(out))
    return out


# -- 4: bans on every node ----------------------------------------------------------------------------

def ban_run(nodes: Nodes, args: argparse.Namespace) -> dict[str, Any]:
    from confluent_kafka import TopicPartition

    from moderation.decisions import DecisionRequest, KafkaEnforcementPublisher, do_decide
    from sealguard.contracts import Action, DecisionSource, ReasonCode, new_account_id
    from sealguard.storage import Database
    from sealguard.stream import consumer

    db = Database(nodes.db_url, migrate=False)
    publisher = KafkaEnforcementPublisher(nodes.kafka, nodes.enforcement_topic)
    cons = consumer(nodes.kafka, f"bench-cluster-{secrets.token_hex(4)}")
    meta = cons.list_topics(nodes.signals_topic, timeout=10).topics[nodes.signals_topic]
    tps = []
    for p in meta.partitions:
        _, high = cons.get_watermark_offsets(TopicPartition(nodes.signals_topic, p), timeout=10, cached=False)
        tps.append(TopicPartition(nodes.signals_topic, p, max(high, 0)))
    cons.assign(tps)
    node_ids = {nodes.node_id(i) for i in range(nodes.n) if nodes.children[i] is not None}
    decided: dict[str, int] = {}  # decision id → created_at (ms)
    applied: dict[str, dict[str, int]] = {}
    try:
        interval = 1.0 / args.ban_rate
        t0 = time.monotonic()
        for i in range(args.bans):
            row = do_decide(db, publisher, DecisionRequest(new_account_id(), Action.ban, ReasonCode.spam,
                                                           DecisionSource.reviewer, "bench-cluster"))
            decided[row.id] = row.created_at
            _drain(cons, applied, 0.0)
            wait = t0 + (i + 1) * interval - time.monotonic()
            if wait > 0:
                _drain(cons, applied, wait)
        publisher.flush()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(len(applied.get(d, {})) < len(node_ids) for d in decided):
            _drain(cons, applied, 0.2)
    finally:
        cons.close()
        publisher.close()
        db.dispose()
    delays = sorted(max(applied[d].values()) - created for d, created in decided.items()
                    if node_ids <= set(applied.get(d, {})))
    incomplete = sum(1 for d in decided if not node_ids <= set(applied.get(d, {})))
    out = {"bans": len(decided), "incomplete": incomplete, "p50_ms": percentile(delays, 50),
           "p99_ms": percentile(delays, 99) if not incomplete else math.inf}
    log.info("bans: %s", json.dumps(out))
    return out


def _drain(cons: Any, applied: dict[str, dict[str, int]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        msgs = cons.consume(1000, max(0.0, min(0.05, deadline - time.monotonic())))
        for m in msgs:
            v = m.value()
            if m.error() is not None or not v or b'"enforcement.applied"' not in v:
                continue
            ev = json.loads(v)
            applied.setdefault(ev["decision_id"], {})[ev["node"]] = int(ev["ts"])
        if time.monotonic() >= deadline:
            return


# -- the command -----------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="sealguard bench cluster", description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=3, help="relay nodes in the cluster run")
    ap.add_argument("--users", type=int, default=600, help="users of the closed-loop runs")
    ap.add_argument("--messages", type=int, default=30_000, help="messages of each closed-loop run (long enough that "
                    "a shared machine's noise averages out)")
    ap.add_argument("--repeats", type=int, default=5, help="measured closed-loop runs per setup, the setups taking "
                    "turns; the figures are each setup's median run (p99 over all of them)")
    ap.add_argument("--inflight", type=int, default=2000, help="most messages in flight at once (all loaders); "
                    "enough that the cluster, whose hops wait for batching, is not bound by latency")
    ap.add_argument("--partners", type=int, default=10, help="conversations per user")
    ap.add_argument("--load-procs", type=int, default=2, help="load processes")
    ap.add_argument("--concurrency", type=int, default=50, help="handshakes in progress per load process")
    ap.add_argument("--kill-users", type=int, default=60, help="SDK users of the node-kill run")
    ap.add_argument("--kill-rate", type=float, default=100.0, help="messages per second of the node-kill run")
    ap.add_argument("--kill-seconds", type=float, default=10.0, help="length of the node-kill run")
    ap.add_argument("--settle-s", type=float, default=20.0, help="how long acked messages may take to arrive")
    ap.add_argument("--bans", type=int, default=200, help="ban decisions timed to every node")
    ap.add_argument("--ban-rate", type=float, default=50.0, help="ban decisions per second")
    ap.add_argument("--json", type=Path, default=None, help="write every figure to this file")
    ap.add_argument("--profile", type=Path, default=None, help="py-spy raw profile of the first cluster node, "
                    "recorded during an extra closed-loop run after the measured one")
    ap.add_argument("--state-dir", type=Path, default=None, help="keep the nodes' logs here (default: a temporary "
                    "folder, removed at the end)")
    args = ap.parse_args(argv)
    if args.nodes < 2:
        ap.error(f"--nodes must be at least 2 (got {args.nodes}): the cluster run compares with one node")
    if args.users < 2 * args.nodes:
        ap.error(f"--users must be at least twice --nodes (got {args.users})")
    if args.kill_users < 2 * args.nodes:
        ap.error(f"--kill-users must be at least twice --nodes (got {args.kill_users})")
    for name in ("messages", "inflight", "bans", "load_procs", "repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be positive")
    if args.kill_rate <= 0 or args.kill_seconds <= 0 or args.ban_rate <= 0:
        ap.error("--kill-rate, --kill-seconds and --ban-rate must be positive")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    import uvloop

    raise_nofile()
    limits = ["send=100000:100000", "first_contact=100000:100000"]
    with ExitStack() as stack:
        state = args.state_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sg-bench-cluster-")))
        state.mkdir(parents=True, exist_ok=True)
        kafka = os.environ.get("SEALGUARD_KAFKA")
        # One broker per setup: both setups stay up while they take turns, and the idle one's
        # polling (its readers' fetches, heartbeats) must not land on the measured one's broker CPU.
        kafkas: list[str] = []
        brokers: list[list[int]] = []
        stops: list[Any] = []
        if not kafka:
            from sealguard.broker import EmbeddedBroker
            from sealguard.settings import Settings

            for name in ("single", "cluster"):
                (state / name).mkdir(parents=True, exist_ok=True)
                broker = stack.enter_context(EmbeddedBroker(Settings(state_dir=state / name),
                                                            log_path=state / f"broker-{name}.log"))
                assert broker.proc is not None
                kafkas.append(broker.bootstrap)
                brokers.append([broker.proc.pid])
                stops.append(broker.stop)
        else:
            log.warning("SEALGUARD_KAFKA names a broker: its CPU is not counted, and both setups share it")
            kafkas, brokers = [kafka, kafka], [[], []]
        try:
            db_single = create_pg_database(PG_ADMIN_URL)
            db_cluster = create_pg_database(PG_ADMIN_URL)
        except Exception as exc:  # noqa: BLE001 - say plainly why the bench cannot run
            raise BenchError(f"PostgreSQL at {PG_ADMIN_URL} is needed (SEALGUARD_TEST_PG): {exc}") from None
        stack.callback(drop_pg_database, PG_ADMIN_URL, db_single)
        stack.callback(drop_pg_database, PG_ADMIN_URL, db_cluster)
        loaders = [Loader(i) for i in range(2 * args.load_procs)]  # each setup keeps its own users connected
        stack.callback(lambda: [ld.stop() for ld in loaders])

        single = Nodes(state / "single", kafkas[0], db_single, 1, cluster=False, limits=limits)
        stack.callback(single.stop)
        single.start_all()
        many = Nodes(state / "cluster", kafkas[1], db_cluster, args.nodes, limits=limits)
        stack.callback(many.stop)
        many.start_all()
        loop_one = ClosedLoop(single, brokers[0], loaders[:args.load_procs], args, "single node")
        loop_many = ClosedLoop(many, brokers[1], loaders[args.load_procs:], args, f"{args.nodes} nodes")
        loop_one.connect()
        loop_many.connect()
        one, multi = closed_loops(loop_one, loop_many, args.repeats)
        loop_one.close()
        single.stop()
        if stops:
            stops[0]()  # the single node's broker
        if args.profile is not None:
            loop_many.profile(args.profile)
        loop_many.close()
        killed = uvloop.run(kill_run(many, args))
        # Started again from this (main) thread: a child's PR_SET_PDEATHSIG follows the thread that
        # started it, and the event loop's executor threads end with the loop.
        many.start(many.n - 1)
        bans = ban_run(many, args)
    figures: dict[str, Any] = {
        "nodes": args.nodes, "msgs_per_s": _int(multi["msgs_per_s"]),
        "cross_node_share": round(multi["cross_node_share"], 3),
        "server_cpu_us_per_msg": round(multi["cpu_us_per_msg"], 1),
        "single_node_cpu_us_per_msg": round(one["cpu_us_per_msg"], 1),
        "p99_ms": round(multi["p99_ms"], 2), "lost": multi["lost"] + one["lost"] + killed["lost"],
        "ban_all_nodes_p99_ms": bans["p99_ms"],
    }
    log.info("single node msgs_per_s=%.0f p99_ms=%.2f; kill run %s", one["msgs_per_s"], one["p99_ms"],
             json.dumps(killed))
    if args.json is not None:
        args.json.write_text(json.dumps({"figures": figures, "single": one, "cluster": multi, "kill": killed,
                                         "bans": bans}, indent=2, default=str))
    return figures


def _int(value: float) -> int | float:
    return round(value) if math.isfinite(value) else math.nan


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    print_figures("bench cluster", run(args))


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    main(sys.argv[1:])
