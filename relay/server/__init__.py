"""The relay server: an asyncio.Protocol server on uvloop routing ciphertext it cannot read.

    server = RelayServer(Database(url), RelayConfig(node="relay-1"), listener)
    await server.start("127.0.0.1", 0)   # server.host, server.port
    ...
    await server.stop()

Modules: core (connections, auth, routing, acks, offline queue), features (prekeys, people,
groups, reports, media), enforce (ban/restrict/warn/lift, notices), limits (the one rate-limit
table), store (database work on the DB thread), connection (one slotted Protocol per client).
"""

from relay.server.core import Refused, RelayConfig, RelayError, RelayServer
from relay.server.limits import LIMITS, RESTRICTED, Rate, RateLimiter

__all__ = ["LIMITS", "RESTRICTED", "Rate", "RateLimiter", "Refused", "RelayConfig", "RelayError", "RelayServer"]
