"""Several relay nodes as one relay: routes and presence in memory, handover through Kafka.

    cluster = Cluster(server, db, bootstrap, ClusterConfig(node="relay-2"))
    server.cluster = cluster
    await cluster.start()
    ...
    cluster.begin_stop(); await server.stop(); await cluster.close()

`RelayService` does this when started with `cluster=ClusterConfig(...)` (`sealguard relay
--cluster`). Modules: `wire` (what nodes say to each other), `routes` (the in-memory tables),
`store` (the `relay_nodes` / `relay_routes` tables), `bus` (the Kafka threads), `node` (the glue and
the handover protocol). See docs/cluster.md.
"""

from relay.cluster.node import Cluster, ClusterConfig, ClusterError

__all__ = ["Cluster", "ClusterConfig", "ClusterError"]
