"""Prometheus `/metrics` for a relay node.

The server keeps plain integer counters (no locks, no label lookups on the message path); this
collector reads them when Prometheus scrapes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from relay.emitter import KafkaEmitter
    from relay.server.core import RelayServer

COUNTERS = {
    "frames_in": "Frames received from clients",
    "frames_out": "Frames sent to clients (replies and deliveries)",
    "sends": "Messages accepted (1:1 and group)",
    "acks_delivered": "Sends acked after the recipient's client acked",
    "acks_queued": "Sends acked after the message was committed to the offline queue",
    "queued": "Messages written to the offline queue",
    "delivered": "Deliveries acked by recipients",
    "errors": "Requests refused with an error frame",
    "protocol_errors": "Connections closed for breaking the protocol",
    "limit_breaches": "Rate-limit breaches",
    "withheld": "Queued messages withheld because their sender was banned",
    "logins": "Successful logins",
    "registrations": "Accounts registered",
    "timeouts": "Ack timeouts and idle connections closed",
    "enforcements": "Decisions applied on this node",
    "slow_consumers": "Connections dropped for not reading what the relay sent",
}


def family(kind: type[CounterMetricFamily | GaugeMetricFamily], name: str, doc: str, value: float) -> Any:
    """`sealguard_relay_<name>` with one sample (also the cluster's collector, relay/cluster/metrics.py)."""
    m = kind(f"sealguard_relay_{name}", doc)
    m.add_metric([], value)
    return m


class RelayCollector(Collector):
    def __init__(self, server: RelayServer, emitter: KafkaEmitter | None = None) -> None:
        self.server = server
        self.emitter = emitter

    def collect(self) -> Iterator[Any]:
        s = self.server
        s.sync_plane()
        for name, doc in COUNTERS.items():
            yield family(CounterMetricFamily, name, doc, s.counter(name))
        w = s.stall_watch
        for name, value, doc in (
                ("loop_stalls", w.stalls, "Times the event loop ran more than 5 ms late (a 10 ms ticker)"),
                ("loop_stall_seconds", w.stall_s, "How late the event loop ran in those stalls, summed"),
                ("gc_pauses", w.gc_pauses, "Garbage collections that took more than 1 ms"),
                ("gc_pause_seconds", w.gc_pause_s, "Time spent in garbage collections (every thread)")):
            yield family(CounterMetricFamily, name, doc, value)
        gauges = {
            "connections": (len(s.all_conns), "Open client connections"),
            "online_accounts": (len(s.conns), "Authenticated connections"),
            "inflight": (len(s.inflight) + s.plane_inflight, "Deliveries waiting for the recipient's ack"),
            "queue_write_batch": (len(s._enqueue_batch), "Messages waiting for the next queue write"),
            "offline_queue_depth": (s.queue_depth, "Messages in the offline queue (refreshed every purge interval)"),
            "withheld_messages": (s.withheld_depth, "Withheld messages kept in the queue table"),
            "bans": (len(s.enforcer.bans), "Active bans held in memory"),
            "restrictions": (len(s.enforcer.restricted), "Active restrictions held in memory"),
            "loop_lag_max_seconds": (s.stall_watch.lag_max_s, "Longest event-loop stall since start"),
            "gc_pause_max_seconds": (s.stall_watch.gc_pause_max_s, "Longest garbage collection since start"),
        }
        if self.emitter is not None:
            gauges["signal_buffer"] = (self.emitter.buffered + s.plane_signal_buffer,
                                       "Signals accepted but not yet confirmed by the broker")
            gauges["signals_dropped"] = (self.emitter.dropped + s.plane_count("signals_dropped"),
                                         "Signals dropped because the buffer was full")
            gauges["signals_failed"] = (self.emitter.failed, "Signals the broker refused")
        for name, (value, doc) in gauges.items():
            yield family(GaugeMetricFamily, name, doc, value)


class MetricsServer:
    """A /metrics HTTP endpoint on its own thread."""

    def __init__(self, server: RelayServer, emitter: KafkaEmitter | None, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RelayCollector(server, emitter))
        self._httpd: WSGIServer
        self._thread: threading.Thread
        self._httpd, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.host = host
        self.port = int(self._httpd.server_port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
