"""Races the fault bench found, each pinned down with a real relay and real clients.

`sealguard bench faults` showed acknowledged messages (SEND_ACK = QUEUED) that did not reach their
online recipient until it logged in *again*; delivered that late, behind dozens of newer messages
of the same Olm chain, vodozemac no longer holds their message keys and the SDK drops them as
undecryptable — a lost message. The window is the recipient's login: the relay reads the queue
(`load_queue`) before the connection becomes routable (`_authenticated`), so a message routed in
between is queued after the read and sits in the database while the recipient is online.

Fixed in the relay by 8db5d4f (a message committed while its recipient logs in is handed over at
once); this test keeps it fixed. The database is made slow here (the relay's real `load_queue` runs, then its DB thread sleeps, as
it does when PostgreSQL is busy) only to make the window wide enough to hit every time.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from relay.server.store import QueuedOut
from relay.testing import eventually, harness, run


def test_a_message_queued_during_the_recipients_login_is_delivered_without_another_login(tmp_path: Path) -> None:
    async def main() -> None:
        async with harness(tmp_path) as h:
            alice, bob = await h.user(), await h.user()
            assert alice.account_id and bob.account_id
            await alice.send(bob.account_id, b"warm-up: the Olm session exists")
            await bob.inbox.get()
            real = h.server.store.load_queue

            def busy_load_queue(recipient: str, limit: int = 1000) -> list[QueuedOut]:
                out = real(recipient, limit)
                time.sleep(0.4)  # the DB thread is busy right after the read
                return out

            h.server.store.load_queue = busy_load_queue  # type: ignore[method-assign]
            await bob.close()
            await eventually(lambda: bob.account_id not in h.server.conns)
            bob2 = h.client(bob.identity)
            bob2.olm = bob.olm  # the same device coming back: same sessions
            await bob2.connect()
            login = asyncio.ensure_future(bob2.login())
            await asyncio.sleep(0.15)  # bob's queue has been read; he is not routable yet
            mid = await alice.send(bob.account_id, b"sent while bob logs in")
            assert mid in alice.acked_ids  # the relay promised: delivered or committed to the queue
            await login
            got = await asyncio.wait_for(bob2.inbox.get(), 5.0)
            assert got.message_id == mid

    run(main())


def test_messages_queued_before_the_login_are_delivered_at_login(tmp_path: Path) -> None:
    """The control: what was committed before the read is delivered (no second login needed)."""
    async def main() -> None:
        async with harness(tmp_path) as h:
            alice, bob = await h.user(), await h.user()
            assert alice.account_id and bob.account_id
            await bob.close()
            await eventually(lambda: bob.account_id not in h.server.conns)
            mids = [await alice.send(bob.account_id, f"m{i}".encode()) for i in range(20)]
            bob2 = h.client(bob.identity)
            await bob2.connect()
            assert await bob2.login() == 20
            got = [await asyncio.wait_for(bob2.inbox.get(), 5.0) for _ in mids]
            assert [g.message_id for g in got] == mids  # in order

    run(main())
