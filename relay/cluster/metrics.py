"""`sealguard_relay_cluster_*` on the node's /metrics: handovers, acks, fallbacks, peers, routes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from relay.metrics import family

if TYPE_CHECKING:
    from relay.cluster.node import Cluster

COUNTERS = {
    "handed_over": "Messages handed to another node's inbox",
    "handovers_received": "Messages other nodes handed to this one",
    "acks_sent": "Handover acks sent back to the handing node",
    "acks_received": "Handover acks received in time",
    "late_acks": "Handover acks that came after the message was queued here",
    "fallbacks": "Handovers queued here instead (node dead, no ack in time, or it failed)",
    "pokes": "Other nodes told to deliver an account's queue now",
    "stale": "Inbox frames addressed to an earlier incarnation of this node (ignored)",
    "enforcements": "Enforcement decisions read by the cluster reader (applied idempotently)",
    "rejected": "Malformed cluster records (and enforcement records that are not decisions)",
    "takeovers": "Local connections closed because the account logged in on another node",
    "accounts_learned": "Accounts learned from the database at a login or a send: their registration news never came",
}


class ClusterCollector(Collector):
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def collect(self) -> Iterator[Any]:
        c = self.cluster
        for name, doc in COUNTERS.items():
            yield family(CounterMetricFamily, f"cluster_{name}", doc, getattr(c.stats, name))
        gaps = c._reader.gaps if c._reader is not None else None
        yield family(CounterMetricFamily, "cluster_reader_gaps_reread",
                     "Jumps in a partition's offsets the cluster reader read again (Tansu, several producers)",
                     gaps.seeks if gaps is not None else 0)
        yield family(GaugeMetricFamily, "cluster_peers_alive", "Other relay nodes alive",
                     sum(p.alive for p in c.nodes.peers.values()))
        yield family(GaugeMetricFamily, "cluster_remote_routes", "Accounts known to be connected to another node",
                     len(c.routes))
        yield family(GaugeMetricFamily, "cluster_pending_handovers", "Handovers waiting for the other node's ack",
                     len(c._pending))
