"""Enforcement inside the relay: apply ban / restrict / warn / lift, idempotent by decision id.

Decisions reach the relay two ways — loaded from the database (at start and after each broker
reconnect) and consumed from `sg.enforcement.v1` (`relay/enforcement_consumer.py`) — and both
end in `apply`. An account's state is its newest decision (by decision time): an older decision
replayed from the log never undoes a newer one. Each first application on this node is recorded
in `enforcement_applications` and confirmed with `enforcement.applied`.

Also delivers pending rows of the `notices` table (codes only): at login and by polling.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from relay.protocol import FrameType, encode
from sealguard.contracts import Action, Enforcement, now_ms

if TYPE_CHECKING:
    from relay.server.core import RelayServer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DecisionState:
    decision_id: str
    action: Action
    reason_code: str
    created_at: int
    expires_at: int | None

    def live(self, now: int) -> bool:
        return self.expires_at is None or self.expires_at > now


NOTICE_KIND = {Action.warn: "warned", Action.restrict: "restricted", Action.lift: "lifted", Action.ban: "banned"}


def appeal_hint(decision_id: str) -> str:
    """How to appeal, carried in the BAN frame (a code and an id, never free text)."""
    return f"appeal:POST /appeals decision_id={decision_id}"


class Enforcer:
    def __init__(self, server: RelayServer) -> None:
        self.server = server
        self.bans: dict[str, DecisionState] = {}
        self.restricted: dict[str, DecisionState] = {}
        self._latest: dict[str, int] = {}  # account → created_at of the newest decision applied
        self.applied: set[str] = set()  # decision ids seen by this node
        self._notice_cursor = 0
        self._polling = False
        self._poll_again = False

    # -- queries ---------------------------------------------------------------------------------
    def active_ban(self, account: str) -> DecisionState | None:
        ban = self.bans.get(account)
        if ban is not None and not ban.live(now_ms()):
            del self.bans[account]
            return None
        return ban

    def ban_frame(self, ban: DecisionState, rid: int = 0) -> bytes:
        return encode(FrameType.BAN, rid, ban.decision_id, ban.reason_code, appeal_hint(ban.decision_id))

    # -- loading -------------------------------------------------------------------------------------
    async def load_from_db(self) -> None:
        """Make memory match the database: active bans/restrictions in, lifted/expired ones out.
        Runs at start and after every broker reconnect (decisions may have been missed)."""
        store, node = self.server.store, self.server.config.node
        recorded = await self.server.run_db(store.applied_decisions, node)
        active = await self.server.run_db(store.active_decisions)
        active_ids = {d.decision_id for d in active}
        for table in (self.bans, self.restricted):
            for account, state in list(table.items()):
                if state.decision_id not in active_ids:
                    del table[account]
        for d in active:
            state = DecisionState(d.decision_id, d.action, d.reason_code, d.created_at, d.expires_at)
            if d.decision_id in recorded:
                self.applied.add(d.decision_id)
                self._set_state(d.account, state)
            else:
                await self.apply(d.account, state)
        self.applied |= recorded
        log.info("enforcement loaded: %d bans, %d restrictions", len(self.bans), len(self.restricted))

    def on_enforcement(self, enf: Enforcement) -> None:
        """Called on the event loop for each decision consumed from the topic."""
        state = DecisionState(enf.decision_id, enf.action, enf.reason_code.value, enf.ts, enf.expires_at)
        self.server.spawn(self.apply(enf.account, state))

    # -- applying ---------------------------------------------------------------------------------------
    def _set_state(self, account: str, state: DecisionState) -> None:
        self._latest[account] = state.created_at
        if state.action is Action.ban:
            self.bans[account] = state
            self.restricted.pop(account, None)
        elif state.action is Action.restrict:
            self.restricted[account] = state
            self.bans.pop(account, None)
        elif state.action is Action.lift:
            self.bans.pop(account, None)
            self.restricted.pop(account, None)

    async def apply(self, account: str, state: DecisionState) -> None:
        if state.decision_id in self.applied:
            return  # idempotent: a second application changes nothing
        self.applied.add(state.decision_id)
        server = self.server
        now = now_ms()
        stale = state.action is not Action.warn and state.created_at < self._latest.get(account, -1)
        expired = not state.live(now)
        if not stale and not expired:
            was_banned = account in self.bans
            self._set_state(account, state)
            conn = server.conns.get(account)
            if state.action is Action.ban:
                if conn is not None:
                    conn.send(self.ban_frame(state))
                    conn.close()
                # What it sent and what was queued for it: neither can be delivered while it is banned.
                n = await server.run_db(server.store.set_withheld, account, True)
                server.stats.withheld += n
            elif state.action is Action.lift and was_banned:
                await self.release(account)
            if state.action is not Action.ban:
                # One delivery path for notices (no duplicates with moderation's own rows): make sure
                # the row exists, then poll now rather than within the second.
                await server.run_db(server.store.ensure_notice, account, NOTICE_KIND[state.action],
                                    state.decision_id, state.reason_code)
                await self.poll_notices()
        first = await server.run_db(server.store.record_application, state.decision_id, server.config.node)
        if first:
            server.stats.enforcements += 1
            server.listener.emit(server.book.enforcement_applied(account, state.decision_id, state.action))
            log.info("applied %s %s to %s%s", state.action.value, state.decision_id, account,
                     " (stale: a newer decision stands)" if stale else " (expired)" if expired else "")

    async def release(self, account: str) -> None:
        """Release what a ban held back: the account's messages, and those queued for it, except
        where the other party is still banned."""
        server = self.server
        await server.run_db(server.store.set_withheld, account, False, frozenset(self.bans))

    def expire(self) -> None:
        now = now_ms()
        for table in (self.bans, self.restricted):
            for account in [a for a, s in table.items() if not s.live(now)]:
                del table[account]

    # -- notices ---------------------------------------------------------------------------------------
    async def deliver_notices(self, account: str) -> None:
        server = self.server
        rows = await server.run_db(server.store.pending_notices, account)
        self._send_notices(rows)

    async def poll_notices(self) -> None:
        """Deliver new notices to connected accounts (offline ones get theirs at login)."""
        if self._polling:
            self._poll_again = True
            return
        self._polling = True
        try:
            while True:
                self._poll_again = False
                server = self.server
                rows = await server.run_db(server.store.pending_notices, None, self._notice_cursor)
                if rows:
                    self._notice_cursor = max(r[0] for r in rows)
                self._send_notices(rows)
                if not self._poll_again and len(rows) < 500:
                    return
        finally:
            self._polling = False

    def _send_notices(self, rows: list[tuple[int, str, str, str | None, str | None]]) -> None:
        server = self.server
        done = []
        for nid, account, kind, decision_id, reason_code in rows:
            conn = server.conns.get(account)
            if conn is None or conn.closed:
                continue  # delivered at its next login
            conn.send(encode(FrameType.NOTICE, 0, kind, decision_id or "", reason_code or ""))
            done.append(nid)
        if done:
            server.spawn(server.run_db(server.store.mark_notices_delivered, done))
