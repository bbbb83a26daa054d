"""The routing table (account → node) and the node table (who is alive), both in memory.

Pure bookkeeping with no I/O, run on the relay's event loop: `node.py` feeds them from the
database at start, from the routes topic afterwards, and from the heartbeat rows every second.
"""

from __future__ import annotations

from dataclasses import dataclass


class RouteTable:
    """Where each account connected to *another* node is (this node's own clients are
    `RelayServer.conns`). A record older (by its writer's clock) than the one applied is ignored, so
    a replay of the topic after a database snapshot cannot move an account back."""

    def __init__(self) -> None:
        self.node_of: dict[str, str] = {}
        self._ts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.node_of)

    def apply(self, account: str, node: str, online: bool, ts: int) -> bool:
        """True if the route changed."""
        if ts < self._ts.get(account, -1):
            return False
        self._ts[account] = ts
        if online:
            if self.node_of.get(account) == node:
                return False
            self.node_of[account] = node
            return True
        if self.node_of.get(account) == node:  # a disconnect only removes that node's route
            del self.node_of[account]
            return True
        return False

    def drop_node(self, node: str) -> list[str]:
        """Forget every route to `node` (found dead or stopped); returns the accounts."""
        gone = [a for a, n in self.node_of.items() if n == node]
        for a in gone:
            del self.node_of[a]
        return gone


@dataclass(slots=True)
class Peer:
    node: str
    incarnation: int
    inbox_topic: str
    last_seen: int  # the peer's own clock (ms) — compared only with itself
    changed_at: float  # our monotonic clock when last_seen last changed
    alive: bool


class NodeTable:
    """Liveness of the other nodes from their heartbeat rows. A node is alive while its `last_seen`
    keeps changing: judged on *our* monotonic clock (when we saw it change), so clock skew between
    hosts does not matter. A node that stopped cleanly (`stopped_at` set) is dead at once."""

    def __init__(self, me: str, ttl_s: float) -> None:
        self.me = me
        self.ttl_s = ttl_s
        self.peers: dict[str, Peer] = {}

    def alive(self, node: str) -> Peer | None:
        peer = self.peers.get(node)
        return peer if peer is not None and peer.alive else None

    def observe(self, rows: list[tuple[str, int, str, int, int | None]], now_mono: float,
                now_ms: int) -> tuple[list[str], list[str]]:
        """Rows (node, incarnation, inbox_topic, last_seen, stopped_at) → (newly dead, newly alive).
        A node seen for the first time is alive if its last heartbeat is recent on our wall clock
        (the one guess that needs clocks to agree); after that only changes count."""
        died: list[str] = []
        born: list[str] = []
        ttl_ms = self.ttl_s * 1000
        for node, inc, topic, last_seen, stopped_at in rows:
            if node == self.me:
                continue
            peer = self.peers.get(node)
            if peer is None:
                fresh = stopped_at is None and now_ms - last_seen < ttl_ms
                peer = Peer(node, inc, topic, last_seen, now_mono if fresh else float("-inf"), False)
                self.peers[node] = peer
            elif last_seen != peer.last_seen or inc != peer.incarnation:
                if inc != peer.incarnation and peer.alive:
                    died.append(node)  # restarted: what it held in memory is gone
                    peer.alive = False
                peer.last_seen, peer.incarnation, peer.inbox_topic = last_seen, inc, topic
                peer.changed_at = now_mono
            alive = stopped_at is None and now_mono - peer.changed_at < self.ttl_s
            if alive and not peer.alive:
                born.append(node)
            elif peer.alive and not alive:
                died.append(node)
            peer.alive = alive
        return died, born
