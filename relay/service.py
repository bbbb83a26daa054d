"""One relay node as a service: server + Kafka signal emitter + enforcement consumer + /metrics.

    service = RelayService(settings)
    await service.start()          # service.address -> (host, port); service.metrics_url
    ...
    await service.stop()

or `await run_relay(settings, ready_callback, stop_event)`, which `sealguard relay` and the lead's
`sealguard up` use. With `settings.kafka` unset the relay runs without a stream (signals go to
the listener given, or nowhere) — the CLI starts an embedded broker instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from relay.listener import NullListener, SignalListener
from relay.server import RelayConfig, RelayServer
from sealguard.contracts import Enforcement
from sealguard.settings import Settings
from sealguard.storage import Database

if TYPE_CHECKING:
    from relay.cluster import Cluster, ClusterConfig

log = logging.getLogger(__name__)


def config_from_settings(settings: Settings, **overrides: object) -> RelayConfig:
    base = RelayConfig(node=settings.node_id, net_salt=settings.net_salt, media_dir=settings.state_dir / "media",
                       native_plane=settings.relay_native)
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


class RelayService:
    def __init__(self, settings: Settings, *, config: RelayConfig | None = None,
                 listener: SignalListener | None = None, metrics: bool = True, metrics_port: int = 0,
                 cluster: ClusterConfig | None = None) -> None:
        self.settings = settings
        self.config = config or config_from_settings(settings)
        if cluster is not None:  # a cluster node's handovers and write pacing live in the asyncio data plane
            self.config = dataclasses.replace(self.config, native_plane=False)
        self._listener = listener
        self._metrics_enabled = metrics
        self._metrics_port = metrics_port
        self.db: Database | None = None
        self.server: RelayServer | None = None
        self.emitter = None
        self.consumer = None
        self.metrics = None
        self.cluster_config = cluster  # one of several nodes (relay/cluster, docs/cluster.md); needs Kafka
        self.cluster: Cluster | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        return self.server.host, self.server.port

    @property
    def metrics_url(self) -> str | None:
        return self.metrics.url if self.metrics is not None else None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        s = self.settings
        s.ensure_state_dir()
        self.db = await loop.run_in_executor(None, Database, s.database_url)
        listener = self._listener
        if s.kafka:
            from relay.emitter import KafkaEmitter
            from sealguard.stream import ensure_topics, wait_for_broker

            await loop.run_in_executor(None, wait_for_broker, s.kafka, 60.0)
            await loop.run_in_executor(None, ensure_topics, s.kafka, [s.signals_topic, s.enforcement_topic],
                                       s.partitions)
            if listener is None:
                self.emitter = KafkaEmitter(s.kafka, s.signals_topic)
                listener = self.emitter
        self.server = RelayServer(self.db, self.config, listener or NullListener())
        await self.server.start(s.relay_host, s.relay_port)
        if self.cluster_config is not None:
            from relay.cluster import Cluster, ClusterError

            if not s.kafka:
                raise ClusterError("a relay cluster needs Kafka (SEALGUARD_KAFKA)")
            self.cluster = self.server.cluster = Cluster(self.server, self.db, s.kafka, self.cluster_config,
                                                         enforcement_topic=s.enforcement_topic,
                                                         enforcement_partitions=s.partitions)
            await self.cluster.start()
        # What was loaded (accounts, groups, blocks) lives as long as the process: keep it out of
        # every collection; and collect young objects less often — the hot path makes few cycles.
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 50)
        if s.kafka and self.cluster is None:  # a cluster node reads enforcement in its cluster reader's fetches
            from relay.enforcement_consumer import EnforcementConsumer

            server = self.server

            def on_enforcement(enf: Enforcement) -> None:
                loop.call_soon_threadsafe(server.enforcer.on_enforcement, enf)

            def on_reconnect() -> None:
                loop.call_soon_threadsafe(lambda: server.spawn(server.enforcer.load_from_db()))

            self.consumer = EnforcementConsumer(s.kafka, s.enforcement_topic, self.config.node, on_enforcement,
                                                on_reconnect)
            self.consumer.start()
        if self._metrics_enabled:
            from relay.metrics import MetricsServer

            self.metrics = MetricsServer(self.server, self.emitter, s.relay_host, self._metrics_port)
            if self.cluster is not None:
                from relay.cluster.metrics import ClusterCollector

                self.metrics.registry.register(ClusterCollector(self.cluster))
        log.info("relay %s ready on %s:%d (metrics %s)", self.config.node, *self.address, self.metrics_url)

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        if self.consumer is not None:
            await loop.run_in_executor(None, self.consumer.stop)
        if self.cluster is not None:
            self.cluster.begin_stop()
        if self.server is not None:
            await self.server.stop()
        if self.cluster is not None:
            await self.cluster.close()
        if self.emitter is not None:
            await loop.run_in_executor(None, self.emitter.close, 10.0)
        if self.metrics is not None:
            self.metrics.stop()
        if self.db is not None:
            self.db.dispose()


async def run_relay(settings: Settings, ready_callback: Callable[[RelayService], None] | None = None,
                    stop_event: asyncio.Event | None = None, *, config: RelayConfig | None = None) -> None:
    """Run until `stop_event` is set (or the task is cancelled); stop cleanly either way."""
    service = RelayService(settings, config=config)
    await service.start()
    try:
        if ready_callback is not None:
            ready_callback(service)
        await (stop_event or asyncio.Event()).wait()
    finally:
        await service.stop()
