"""Steady simulated load over real SDK clients, keeping the books a fault run is judged by.

Each user is a `RelayClient` with a real vodozemac identity, bound to its own /24 in 127.0.0.0/8
(so registration limits and net buckets are real), talking to a few partners it added as contacts
(people write to the people they know; a stranger-blast would rightly be restricted by detection).
An open loop sends at a fixed rate; each user has a supervisor that reconnects and logs in again
whenever the relay goes away (kill -9) — exactly what a phone does.

The books, kept from the clients' own records:
* `acked`: message id → (sender, recipient), only once the relay's SEND_ACK came back — the relay's
  promise that the recipient acked or the message is committed in the queue;
* `received`: how many times each message id reached the application (the inbox), so a duplicate
  shows even if the SDK's own dedup failed;
* send latency (send → SEND_ACK) with its time, for the soak's first/last p99.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from relay.client import Banned, ClientError, Identity, RelayClient
from relay.protocol import decode_deliver
from sealguard.contracts import now_ms

log = logging.getLogger("bench.load")
_PAYLOAD = struct.Struct(">IQ")  # sender index, sequence number — and the padding below
PAD = b"." * 84  # 100-byte plaintexts, like the relay benchmark


@dataclass
class User:
    index: int
    client: RelayClient
    partners: list[int] = field(default_factory=list)
    banned: bool = False
    retiring: bool = False  # about to be banned: nobody starts new messages to or from it
    online: bool = False  # logged in on the current connection (a bare TCP connection is not enough)
    reconnects: int = 0

    @property
    def account(self) -> str:
        assert self.client.account_id is not None
        return self.client.account_id

    @property
    def usable(self) -> bool:
        return self.online and not (self.banned or self.retiring) and self.client.connected


class _Undecryptable(logging.Handler):
    """Counts the SDK's "dropping undecryptable message" warnings: each is a message the relay
    delivered and the application never saw (acked to the relay, so it is gone)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("dropping undecryptable message"):
            self.count += 1


class BookedClient(RelayClient):
    """The real SDK, observed: how long after the relay accepted it each message was delivered,
    split by whether it could be decrypted. Behaviour is unchanged (the SDK's own `_on_deliver` runs)."""

    delays_ok: array[float]
    delays_undecryptable: array[float]

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.delays_ok = array("d")
        self.delays_undecryptable = array("d")

    def _on_deliver(self, payload: bytes) -> bytes | None:
        mid, _sender, group, _kind, ts, _ct = decode_deliver(payload)
        first = mid.hex() not in self.received_ids
        out = super()._on_deliver(payload)
        if first and not group:
            delay = (now_ms() - ts) / 1000
            (self.delays_ok if mid.hex() in self.received_ids else self.delays_undecryptable).append(delay)
        return out


def address(i: int) -> str:
    """A distinct /24 per user: 127.(20 + i // 250).(i % 250).1"""
    return f"127.{20 + i // 250}.{i % 250}.1"


class Load:
    def __init__(self, host: str, port: int, users: int, *, partners: int = 4, seed: int = 7,
                 max_inflight: int = 2000) -> None:
        self.host, self.port = host, port
        self.n = users
        self.k = min(partners, users - 1)
        self.rng = random.Random(seed)
        self.max_inflight = max_inflight
        self.users: list[User] = []
        self.acked: dict[str, tuple[int, int]] = {}
        self.received: Counter[str] = Counter()
        self.payloads: Counter[tuple[int, int]] = Counter()
        self.lat_t = array("d")  # when each acked send started (monotonic s)
        self.lat_ms = array("d")  # its send → ack latency
        self.sent = self.failed = self.skipped = 0
        self.inflight = 0
        self._seq = 0
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.undecryptable = _Undecryptable()
        logging.getLogger("relay.client.client").addHandler(self.undecryptable)

    # -- setup --------------------------------------------------------------------------------------
    async def setup(self, concurrency: int = 20, *, client: Callable[[int], RelayClient] | None = None,
                    settle_s: float = 0.0) -> None:
        """Register every user, upload prekeys, and make each partnership mutual contacts.
        `client(i)` makes user i's client (default: a `BookedClient` of this host and port);
        `settle_s`: a pause between registering and adding contacts (a cluster's nodes learn of new
        accounts from each other)."""
        sem = asyncio.Semaphore(concurrency)
        client = client or (lambda i: BookedClient(self.host, self.port, Identity.generate(), bind_address=address(i),
                                                   request_timeout=15.0, ping_interval=20.0))

        async def make(i: int) -> User:
            async with sem:
                c = client(i)
                await c.connect()
                await c.register()
                await c.upload_prekeys(3 * self.k + 5)
                return User(i, c, online=True)

        self.users = list(await asyncio.gather(*(make(i) for i in range(self.n))))
        for u in self.users:
            u.partners = sorted({(u.index + d) % self.n for d in range(1, self.k + 1)} |
                                {(u.index - d) % self.n for d in range(1, self.k + 1)})
        if settle_s:
            await asyncio.sleep(settle_s)

        async def contacts(u: User) -> None:
            async with sem:
                for p in u.partners:
                    await u.client.add_contact(self.users[p].account)

        await asyncio.gather(*(contacts(u) for u in self.users))
        for u in self.users:
            self._spawn(self._keep_connected(u))
            self._spawn(self._read_inbox(u))

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the users' own loops -------------------------------------------------------------------------
    async def _keep_connected(self, u: User) -> None:
        """Reconnect and log in again after any disconnect, as a phone would; stop once banned."""
        while not self._stopping:
            await u.client.closed.wait()
            u.online = False
            if self._stopping:
                return
            if u.client.banned is not None:
                u.banned = True
                return
            backoff = 0.05
            while not self._stopping:
                try:
                    await u.client.connect()
                    await u.client.login()
                    u.online = True
                    u.reconnects += 1
                    break
                except Banned:
                    u.banned = True
                    return
                except (TimeoutError, OSError, ClientError) as exc:
                    log.debug("user %d reconnect failed: %s", u.index, exc)
                    u.client.abort()
                    await asyncio.sleep(backoff + self.rng.random() * backoff)
                    backoff = min(backoff * 2, 1.0)

    async def _read_inbox(self, u: User) -> None:
        while True:
            r = await u.client.inbox.get()
            self.received[r.message_id] += 1
            if len(r.plaintext) >= _PAYLOAD.size:
                self.payloads[_PAYLOAD.unpack_from(r.plaintext)] += 1

    # -- sending -----------------------------------------------------------------------------------------
    async def _send_one(self, u: User, p: User, seq: int) -> None:
        self.inflight += 1
        t0 = time.monotonic()
        try:
            mid = await u.client.send(p.account, _PAYLOAD.pack(u.index, seq) + PAD)
        except Banned:
            u.banned = True
            self.failed += 1
            return
        except (TimeoutError, ClientError, OSError, ValueError):
            self.failed += 1  # never acked: not in the books (the sender would retry)
            return
        finally:
            self.inflight -= 1
        self.acked[mid] = (u.index, p.index)
        self.lat_t.append(t0)
        self.lat_ms.append((time.monotonic() - t0) * 1000)

    def send_random(self) -> bool:
        """Start one message from a random usable user to one of its usable partners."""
        if self.inflight >= self.max_inflight:
            self.skipped += 1
            return False
        for _ in range(8):
            u = self.users[self.rng.randrange(self.n)]
            if not u.usable:
                continue
            p = self.users[u.partners[self.rng.randrange(len(u.partners))]]
            if p.banned or p.retiring:
                continue
            self._seq += 1
            self.sent += 1
            self._spawn(self._send_one(u, p, self._seq))
            return True
        self.skipped += 1
        return False

    async def drive(self, rate: float, seconds: float, *, stop: asyncio.Event | None = None) -> None:
        """Open loop: `rate` messages per second for `seconds` (or until `stop`), whatever happens."""
        start = time.monotonic()
        started = 0
        while True:
            now = time.monotonic()
            if now - start >= seconds or (stop is not None and stop.is_set()):
                return
            due = int((now - start) * rate) - started
            for _ in range(due):
                self.send_random()
            started += max(due, 0)
            await asyncio.sleep(0.005)

    # -- ending -----------------------------------------------------------------------------------------
    def missing(self, exclude: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
        return [m for m in self.acked if not self.received[m] and m not in exclude]

    async def settle(self, timeout: float, exclude: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
        """Wait (sending nothing) until every acked message reached its application, or `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.inflight == 0 and not self.missing(exclude):
                break
            await asyncio.sleep(0.2)
        return self.missing(exclude)

    async def relogin_all(self) -> None:
        """Every live user drops its connection and logs in again (its queue is delivered at login)."""
        for u in self.users:
            if not u.banned:
                u.client.abort()
        await asyncio.sleep(0.5)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(u.banned or u.client.connected for u in self.users):
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        logging.getLogger("relay.client.client").removeHandler(self.undecryptable)
        self._stopping = True
        for u in self.users:
            u.client.abort()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- figures --------------------------------------------------------------------------------------
    def duplicates(self) -> int:
        """Extra deliveries to the application: by message id, and by (sender, sequence) payload."""
        by_id = sum(c - 1 for c in self.received.values() if c > 1)
        by_payload = sum(c - 1 for c in self.payloads.values() if c > 1)
        return max(by_id, by_payload)

    def delivery_delays(self) -> tuple[float, float, float]:
        """(p50 delay of decrypted first deliveries, p50 and min delay of undecryptable ones), seconds."""
        ok = sorted(d for u in self.users for d in u.client.delays_ok)  # type: ignore[attr-defined]
        bad = sorted(d for u in self.users for d in u.client.delays_undecryptable)  # type: ignore[attr-defined]
        nan = float("nan")
        return (ok[len(ok) // 2] if ok else nan, bad[len(bad) // 2] if bad else nan, bad[0] if bad else nan)

    def p99_between(self, t_from: float, t_to: float) -> float:
        xs = sorted(ms for t, ms in zip(self.lat_t, self.lat_ms) if t_from <= t < t_to)
        if not xs:
            return float("nan")
        return xs[min(len(xs) - 1, int(0.99 * len(xs)))]
