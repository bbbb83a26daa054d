"""The cluster's database work (tables `relay_nodes`, `relay_routes`), run on the cluster's own
thread — never on the event loop, and not on the relay's DB thread, so a heartbeat is never stuck
behind a batch of queue writes (nor the reverse)."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from sqlalchemy import delete, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from sealguard.storage import Database, RelayNodeRow, RelayRouteRow

NodeRow = tuple[str, int, str, int, int | None]  # node, incarnation, inbox_topic, last_seen, stopped_at
_BEAT = text("UPDATE relay_nodes SET last_seen = :now WHERE node = :node AND incarnation = :inc")
_NODES = text("SELECT node, incarnation, inbox_topic, last_seen, stopped_at FROM relay_nodes")


def _insert(session: Session, table: type) -> object:
    return (postgresql.insert(table) if session.get_bind().dialect.name == "postgresql"
            else sqlite.insert(table))


class ClusterStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def register_node(self, node: str, incarnation: int, inbox_topic: str, now: int) -> None:
        """This node (re)starts: its row says so, and routes a previous incarnation left are gone
        (none of its clients survived the restart)."""
        with self.db.session() as s, s.begin():
            stmt = _insert(s, RelayNodeRow).values(  # type: ignore[attr-defined]
                node=node, incarnation=incarnation, inbox_topic=inbox_topic, started_at=now, last_seen=now,
                stopped_at=None)
            s.execute(stmt.on_conflict_do_update(index_elements=["node"], set_={
                "incarnation": incarnation, "inbox_topic": inbox_topic, "started_at": now, "last_seen": now,
                "stopped_at": None}))
            s.execute(delete(RelayRouteRow).where(RelayRouteRow.node == node))

    def heartbeat(self, node: str, incarnation: int, now: int) -> list[NodeRow]:
        """Stamp our row and read everyone's, in one transaction. Every second on every node, so on a
        plain connection with two fixed statements: through an ORM session it cost the node ~5 ms of
        CPU a second (its code cold in the cache between beats), this way ~1.5."""
        with self.db.engine.begin() as c:
            c.execute(_BEAT, {"now": now, "node": node, "inc": incarnation})
            return [tuple(r) for r in c.execute(_NODES).all()]  # type: ignore[misc]

    def nodes(self) -> list[NodeRow]:
        with self.db.session() as s:
            return [tuple(r) for r in s.execute(select(  # type: ignore[misc]
                RelayNodeRow.node, RelayNodeRow.incarnation, RelayNodeRow.inbox_topic, RelayNodeRow.last_seen,
                RelayNodeRow.stopped_at)).all()]

    def mark_stopped(self, node: str, incarnation: int, now: int) -> None:
        with self.db.session() as s, s.begin():
            s.execute(update(RelayNodeRow).where(RelayNodeRow.node == node, RelayNodeRow.incarnation == incarnation)
                      .values(stopped_at=now, last_seen=now))
            s.execute(delete(RelayRouteRow).where(RelayRouteRow.node == node))

    def write_routes(self, node: str, changes: Sequence[tuple[str, bool, int]]) -> None:
        """Apply a batch of (account, online, ts) of this node's clients, the last change per account winning."""
        last: dict[str, tuple[bool, int]] = {}
        for account, online, ts in changes:
            last[account] = (online, ts)
        ups = [{"account": a, "node": node, "updated_at": ts} for a, (on, ts) in last.items() if on]
        downs = [a for a, (on, _) in last.items() if not on]
        with self.db.session() as s, s.begin():
            if ups:
                stmt = _insert(s, RelayRouteRow)
                s.execute(stmt.on_conflict_do_update(  # type: ignore[attr-defined]
                    index_elements=["account"],
                    set_={"node": stmt.excluded.node, "updated_at": stmt.excluded.updated_at}), ups)  # type: ignore[attr-defined]
            for i in range(0, len(downs), 500):
                s.execute(delete(RelayRouteRow).where(RelayRouteRow.account.in_(downs[i:i + 500]),
                                                      RelayRouteRow.node == node))

    def load_routes(self, nodes: Collection[str]) -> list[tuple[str, str, int]]:
        if not nodes:
            return []
        with self.db.session() as s:
            return [tuple(r) for r in s.execute(  # type: ignore[misc]
                select(RelayRouteRow.account, RelayRouteRow.node, RelayRouteRow.updated_at)
                .where(RelayRouteRow.node.in_(list(nodes)))).all()]

    def drop_routes(self, node: str) -> int:
        """Routes of a node found dead (any node may do it; doing it twice changes nothing)."""
        with self.db.session() as s, s.begin():
            return int(s.execute(delete(RelayRouteRow).where(RelayRouteRow.node == node)).rowcount)
