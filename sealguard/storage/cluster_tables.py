"""Tables of the relay cluster: which nodes are alive, and which node each online account is on.

Both are rebuilt into memory by every node at start (relay/cluster); the stream
(`sg.relay.routes.v1`) carries the changes afterwards. Nothing here is message content.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from sealguard.storage.base import AccountCol, Base, Ms


class RelayNodeRow(Base):
    """One row per relay node id; `last_seen` is its heartbeat (the node's own clock, ms).

    Other nodes judge liveness by whether `last_seen` keeps changing on *their* clock, so clock
    skew between hosts does not matter. `incarnation` changes at each start of the node."""

    __tablename__ = "relay_nodes"

    node: Mapped[str] = mapped_column(String(32), primary_key=True)
    incarnation: Mapped[int] = mapped_column(BigInteger)
    inbox_topic: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[int] = mapped_column(Ms)
    last_seen: Mapped[int] = mapped_column(Ms)
    stopped_at: Mapped[int | None] = mapped_column(Ms)


class RelayRouteRow(Base):
    """account → the node its client is connected to; written (batched) by that node, deleted at
    disconnect, and deleted wholesale for a node found dead."""

    __tablename__ = "relay_routes"

    account: Mapped[str] = mapped_column(AccountCol(), primary_key=True)
    node: Mapped[str] = mapped_column(String(32), index=True)
    updated_at: Mapped[int] = mapped_column(Ms)
