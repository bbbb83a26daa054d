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
import time
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
        self._changed: dict[str, float] = {}  # account → when its state last changed (monotonic)
        self.loads = 0  # times memory was reconciled with the database
        self._reconciling = False
        self._notice_cursor = 0
        self._polling = False
        self._poll_again = False

    # -- queries ---------------------------------------------------------------------------------
    def active_ban(self, account: str) -> DecisionState | None:
        ban = self.bans.get(account)
        if ban is not None and not ban.live(now_ms()):
            del self.bans[account]
            self.server.spawn(self.release(account))
            return None
        return ban

    def ban_frame(self, ban: DecisionState, rid: int = 0) -> bytes:
        return encode(FrameType.BAN, rid, ban.decision_id, ban.reason_code, appeal_hint(ban.decision_id))

    # -- loading -------------------------------------------------------------------------------------
    async def load_from_db(self, *, full: bool = True) -> None:
        """Make memory match the database — the truth: active bans/restrictions in, lifted/expired
        ones out (and what a ban withheld released). Runs at start, after every broker reconnect,
        and every `reconcile_interval_s` (decisions can be missed on the topic: a broker restart
        empties it, and a consumer's old position may point past the new records)."""
        server = self.server
        started = time.monotonic()
        if full:  # every decision this node ever applied: a replay of the topic re-applies none of them
            self.applied |= await server.run_db(server.store.applied_decisions, server.config.node)
        rows = await server.run_db(server.store.active_decisions_applied, server.config.node)
        active_ids = {d.decision_id for d, _ in rows}
        # In memory but not active in the database: ended there (a lift this node missed) — drop
        # it. Only what memory held before the query (one applied from the topic meanwhile may not
        # be in its snapshot), and only decisions the database knows (expiry is handled by `expire`).
        gone = {state.decision_id: account for table in (self.bans, self.restricted)
                for account, state in table.items()
                if state.decision_id not in active_ids and self._changed.get(account, 0.0) < started}
        if gone:
            for decision_id in await server.run_db(server.store.ended_decisions, set(gone)):
                account = gone[decision_id]
                ban = self.bans.get(account)
                if ban is not None and ban.decision_id == decision_id:
                    del self.bans[account]
                    log.info("ban %s of %s ended in the database: released", decision_id, account)
                    await self.release(account)
                restriction = self.restricted.get(account)
                if restriction is not None and restriction.decision_id == decision_id:
                    del self.restricted[account]
                server.enforcement_changed(account)
        for d, applied in rows:
            state = DecisionState(d.decision_id, d.action, d.reason_code, d.created_at, d.expires_at)
            if applied or d.decision_id in self.applied:
                current = self.bans.get(d.account) or self.restricted.get(d.account)
                self.applied.add(d.decision_id)
                if (current is None or current.decision_id != d.decision_id) \
                        and d.created_at >= self._latest.get(d.account, -1):
                    self._set_state(d.account, state)
            else:
                log.info("decision %s for %s found in the database, not applied here: applying",
                         d.decision_id, d.account)
                await self.apply(d.account, state)
        self.loads += 1
        (log.info if full else log.debug)("enforcement loaded: %d bans, %d restrictions", len(self.bans),
                                          len(self.restricted))

    def reconcile_soon(self) -> None:
        """The periodic safety net: one query on the DB thread; skipped while one is running."""
        if self._reconciling:
            return
        self._reconciling = True

        async def job() -> None:
            try:
                await self.load_from_db(full=False)
            finally:
                self._reconciling = False

        self.server.spawn(job())

    def on_enforcement(self, enf: Enforcement) -> None:
        """Called on the event loop for each decision consumed from the topic."""
        state = DecisionState(enf.decision_id, enf.action, enf.reason_code.value, enf.ts, enf.expires_at)
        self.server.spawn(self.apply(enf.account, state))

    # -- applying ---------------------------------------------------------------------------------------
    def _set_state(self, account: str, state: DecisionState) -> None:
        self._latest[account] = state.created_at
        self._changed[account] = time.monotonic()
        if state.action is Action.ban:
            self.bans[account] = state
            self.restricted.pop(account, None)
        elif state.action is Action.restrict:
            self.restricted[account] = state
            self.bans.pop(account, None)
        elif state.action is Action.lift:
            self.bans.pop(account, None)
            self.restricted.pop(account, None)
        self.server.enforcement_changed(account)

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
            elif was_banned and state.action is not Action.warn:  # a lift, or a restriction replacing the ban
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
                self.server.enforcement_changed(account)
                if table is self.bans:  # an expired ban holds nothing back any more
                    self.server.spawn(self.release(account))

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
