"""A real relay (RelayService: server, Kafka emitter, /metrics) with a 3-second handshake timeout,
for the short fuzz run in the suite: slow-loris and silent connections are then checked in
seconds instead of the production 15. Prints the same listening line as `sealguard relay`."""

from __future__ import annotations

import asyncio
import signal

import uvloop

from relay.service import RelayService, config_from_settings
from sealguard.cli.app import settings, setup_logging

HANDSHAKE_TIMEOUT_S = 3.0


async def main() -> None:
    s = settings()
    service = RelayService(s, config=config_from_settings(s, handshake_timeout_s=HANDSHAKE_TIMEOUT_S))
    await service.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    host, port = service.address
    print(f"relay: listening={host}:{port} metrics={service.metrics_url} node={service.config.node}", flush=True)
    try:
        await stop.wait()
    finally:
        await service.stop()


if __name__ == "__main__":
    setup_logging()
    uvloop.run(main())
