"""A load process of the relay benchmark: `python -m bench._load`, driven by `bench/relay.py`.

Why a separate process: the server's CPU and RSS are read from /proc, so nothing of the load may
run inside it, and U=10,000 clients plus the server's own sockets do not fit one process's
20,000 open files. The orchestrator starts several of these and speaks to each over stdin/stdout,
one JSON object per line; logs go to stderr:

    {"cmd": "connect", "target": "relay"|"mqtt", "host", "port", "first", "count", "concurrency",
     "run_id", "keepalive_s", "ports"}                           → {"connected", "failed", "secs", "error"}
                     (optional "ports": several relay nodes, user i connects to ports[i % len(ports)])
    {"cmd": "run", "count", "inflight"}       closed loop        → figures and latencies (see _run)
    {"cmd": "run", "count", "rate"}           open loop at `rate` messages/s
    {"cmd": "close"}                                             → {"closed"}
    {"cmd": "exit"}

A process holds one population of users per target at once (a relay's and mosquitto's, so the
orchestrator can alternate closed loops between the two servers); "run" and "close" take an
optional "target", by default the one connected last.

Each process picks random (sender, recipient) pairs among its own online users, so a message's
send and receipt are timed on one clock without cross-process bookkeeping. Each user talks to
`partners` random others (its conversations, drawn once at connect): a message goes from a random
user to one of its partners. Pairs drawn from all U users at every message would make nearly every
message a first contact, which the relay rightly rate-limits as spam (60 first contacts per
account, then one per 10 s); people write to the few they talk with. A message is in flight
from its send until the relay's SEND_ACK (sent only once the recipient acked) — for mosquitto
(QoS 0, no acknowledgement) until the recipient's receipt.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import logging
import random
import resource
import sys
import time
from array import array
from typing import Any

from bench._proc import raise_nofile, source_address

log = logging.getLogger("bench.load")
_now = time.monotonic_ns  # CLOCK_MONOTONIC: one clock for every process on the machine


class Load:
    """The users of one load process and the message driver over them."""

    def __init__(self) -> None:
        self.clients: list[Any] = []
        self.partners: list[list[Any]] = []
        self.target = ""
        self._keepalive: asyncio.Task[None] | None = None
        self._reset(0, 0)

    def _reset(self, count: int, window: int) -> None:
        self.lat = array("q")
        self.count = count
        self.window = window  # 0 → open loop (no window)
        self.sent = 0
        self.received = 0
        self.acked = 0
        self.inflight = 0
        self.max_inflight = 0
        self.done: asyncio.Future[None] | None = None

    # -- callbacks from the clients (hot path) ---------------------------------------------
    def on_message(self, sent_ns: int) -> None:
        self.lat.append(_now() - sent_ns)
        self.received += 1
        if self.target == "mqtt":
            self._release()
        elif self.received >= self.count and self.acked >= self.count:
            self._finish()

    def on_ack(self) -> None:
        self.acked += 1
        self._release()

    def _release(self) -> None:
        self.inflight -= 1
        if self.window and self.sent < self.count:
            self._send_one()
        if self.received >= self.count and (self.target == "mqtt" or self.acked >= self.count):
            self._finish()

    def _finish(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    def _send_one(self, ts: int | None = None) -> None:
        clients = self.clients
        i = int(random.random() * len(clients))
        mine = self.partners[i]
        clients[i].send(mine[int(random.random() * len(mine))].addr, _now() if ts is None else ts)
        self.sent += 1
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)

    # -- commands ------------------------------------------------------------------------
    async def connect(self, target: str, host: str, port: int, first: int, count: int, concurrency: int,
                      run_id: str, keepalive_s: float = 0.0, partners: int = 10,
                      ports: list[int] | None = None) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        self.target = target
        sem = asyncio.Semaphore(concurrency)
        errors: list[str] = []
        t0 = time.monotonic()

        async def one(gi: int) -> Any:
            async with sem:
                for attempt in range(5):
                    try:
                        # `ports`: several relay nodes, user gi on node gi % len(ports) (bench cluster)
                        p = ports[gi % len(ports)] if ports else port
                        return await self._connect_one(loop, target, host, p, gi, run_id)
                    except (OSError, TimeoutError, RuntimeError) as exc:
                        if attempt == 4:
                            errors.append(f"client {gi}: {exc}")
                            return None
                        await asyncio.sleep(0.2 * (attempt + 1))
                return None

        results = await asyncio.gather(*(one(first + i) for i in range(count)))
        self.clients = [c for c in results if c is not None]
        n = len(self.clients)
        k = max(1, min(partners, n - 1))
        self.partners = []
        for i in range(n):
            picks = random.sample(range(n - 1), k) if n > 1 else []
            self.partners.append([self.clients[j + 1 if j >= i else j] for j in picks])
        # Thousands of long-lived client objects: move them out of the collector's sight, so a
        # full collection never pauses the load in the middle of a latency measurement.
        gc.collect()
        gc.freeze()
        if keepalive_s > 0 and target == "relay":
            self._keepalive = asyncio.create_task(self._pinger(keepalive_s))
        return {"connected": len(self.clients), "failed": len(errors), "secs": time.monotonic() - t0,
                "error": errors[0] if errors else ""}

    async def _connect_one(self, loop: asyncio.AbstractEventLoop, target: str, host: str, port: int, gi: int,
                           run_id: str) -> Any:
        src = (source_address(gi), 0)
        if target == "relay":
            import vodozemac

            from bench._wire import RelayClient

            identity = vodozemac.Account()
            _, first = await loop.create_connection(lambda: RelayClient(gi, self.on_message, self.on_ack),
                                                    host, port, local_addr=src)
            try:
                account_id = await first.register(identity)
            finally:
                first.close()
            await first.closed
            _, proto = await loop.create_connection(lambda: RelayClient(gi, self.on_message, self.on_ack),
                                                    host, port, local_addr=src)
            try:
                await proto.login(identity, account_id)
            except BaseException:
                proto.close()
                raise
            return proto
        if target == "mqtt":
            from bench._mqtt import MqttClient

            topic = f"{run_id}{gi:012x}".encode()
            _, mproto = await loop.create_connection(lambda: MqttClient(topic, self.on_message), host, port,
                                                     local_addr=src)
            try:
                await mproto.handshake(topic)
            except BaseException:
                mproto.close()
                raise
            return mproto
        raise ValueError(f"unknown target {target!r}: expected 'relay' or 'mqtt'")

    async def _pinger(self, every_s: float) -> None:
        """Keep idle connections alive across the server's idle timeout, spread over the period."""
        while True:
            clients = list(self.clients)
            step = every_s / max(1, len(clients))
            for c in clients:
                c.ping()
                await asyncio.sleep(step)
            if not clients:
                await asyncio.sleep(every_s)

    async def run(self, count: int, inflight: int = 0, rate: float = 0.0, timeout: float = 120.0) -> dict[str, Any]:
        if len(self.clients) < 2:
            raise RuntimeError(f"need at least 2 connected users to send between, have {len(self.clients)}")
        loop = asyncio.get_running_loop()
        self._reset(count, inflight if not rate else 0)
        self.done = loop.create_future()
        gc.disable()  # the hot path allocates no cycles; no collector pauses while we time
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t_start = _now()
        max_lag = 0
        if count == 0:
            self.done.set_result(None)
        elif rate <= 0:
            for _ in range(min(inflight, count)):
                self._send_one()
        else:
            interval = 1e9 / rate
            while self.sent < count:
                now = _now()
                due = min(count, int((now - t_start) / interval) + 1)
                while self.sent < due:
                    intended = t_start + int(self.sent * interval)
                    max_lag = max(max_lag, now - intended)
                    self._send_one()
                # Sleep until the next send is due, at least 1 ms: uvloop's timers count whole
                # milliseconds, and sleep(0.0005) was a 0 ms timer — this process spun a core for
                # the whole open loop and took CPU from the server it was timing.
                await asyncio.sleep(max(0.001, (t_start + self.sent * interval - _now()) / 1e9))
        timed_out = False
        try:
            await asyncio.wait_for(asyncio.shield(self.done), timeout)
        except TimeoutError:
            timed_out = True
        t_end = _now()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        gc.enable()
        load_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
        errors = sum(getattr(c, "errors", 0) for c in self.clients)
        last_error = next((c.last_error for c in self.clients if getattr(c, "last_error", "")), "")
        return {"sent": self.sent, "received": self.received, "acked": self.acked, "t_start": t_start,
                "t_end": t_end, "timed_out": timed_out, "errors": errors, "last_error": last_error,
                "max_inflight": self.max_inflight, "max_lag_ms": max_lag / 1e6, "load_cpu_s": load_cpu,
                "lat_ns": base64.b64encode(self.lat.tobytes()).decode()}

    async def close(self) -> dict[str, Any]:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        clients, self.clients = self.clients, []
        for c in clients:
            c.close()
        if clients:
            await asyncio.wait([asyncio.ensure_future(c.closed) for c in clients], timeout=30)
        return {"closed": len(clients)}


async def serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    loads: dict[str, Load] = {}  # by target, in the order connected
    while True:
        line = await reader.readline()
        req = json.loads(line) if line else {"cmd": "exit"}  # the orchestrator went away: exit
        cmd = req.pop("cmd")
        if cmd == "exit":
            for load in loads.values():
                await load.close()
            return
        target = req.pop("target", None) if cmd != "connect" else req["target"]
        try:
            if cmd == "connect":
                if target in loads:
                    await loads.pop(target).close()
                loads[target] = Load()
                reply = await loads[target].connect(**req)
            elif cmd in ("run", "close"):
                if not loads:
                    raise RuntimeError(f"{cmd} before any connect")
                if target is not None and target not in loads:
                    raise RuntimeError(f"{cmd}: no users connected to {target!r} (have {sorted(loads)})")
                load = loads[target] if target is not None else loads[next(reversed(loads))]
                reply = await (load.run(**req) if cmd == "run" else load.close())
            else:
                reply = {"error": f"unknown command {cmd!r}"}
        except Exception as exc:  # reported to the orchestrator, which fails the bench naming it
            log.exception("load command %s failed", cmd)
            reply = {"error": f"{cmd}: {type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname).1s %(name)s: %(message)s", datefmt="%H:%M:%S")
    raise_nofile()
    import uvloop

    uvloop.run(serve())


if __name__ == "__main__":
    main()
