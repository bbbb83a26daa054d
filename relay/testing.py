"""Test helpers (used by tests/relay and anyone testing against a real relay): a RelayServer on
SQLite inside the caller's uvloop loop, clients on distinct 127.x source addresses, `eventually`."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import uvloop

from relay.client import Identity, RelayClient
from relay.listener import CollectingListener
from relay.server import RelayConfig, RelayServer
from sealguard.storage import Database

T = TypeVar("T")
_addresses = itertools.count(2)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return uvloop.run(coro)


def next_address() -> str:
    n = next(_addresses)
    return f"127.{(n >> 8) % 250 + 1}.{n % 256}.{(n * 7) % 250 + 1}"


class Harness:
    """A RelayServer on SQLite with a CollectingListener, and a client factory."""

    def __init__(self, server: RelayServer, listener: CollectingListener, db: Database) -> None:
        self.server = server
        self.listener = listener
        self.db = db
        self.clients: list[RelayClient] = []

    def client(self, identity: Identity | None = None, address: str | None = None) -> RelayClient:
        c = RelayClient(self.server.host, self.server.port, identity or Identity.generate(),
                        bind_address=address or next_address())
        self.clients.append(c)
        return c

    async def user(self, prekeys: int = 5, address: str | None = None) -> RelayClient:
        c = self.client(address=address)
        await c.connect()
        await c.register()
        if prekeys:
            await c.upload_prekeys(prekeys)
        return c

    def signals(self, etype: str) -> list[Any]:
        if self.server.plane is not None:  # what the native plane sent so far (it hands them over every 10 ms)
            self.server.plane.drain_signals()
        return [e for e in self.listener.events if e.type == etype]


@contextlib.asynccontextmanager
async def harness(tmp: Path, **config: Any) -> AsyncIterator[Harness]:
    db = Database(f"sqlite:///{tmp / 'relay.db'}")
    listener = CollectingListener()
    cfg = RelayConfig(media_dir=tmp / "media", **config)
    server = RelayServer(db, cfg, listener)
    await server.start("127.0.0.1", 0)
    h = Harness(server, listener, db)
    try:
        yield h
    finally:
        for c in h.clients:
            await c.close()
        await server.stop()
        db.dispose()


async def eventually(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Await until `check()` is truthy; fail naming the check otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)

