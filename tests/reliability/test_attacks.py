"""Attacks on the relay itself, each against a real relay (uvloop, SQLite, real vodozemac clients on
distinct 127.x source addresses). Every attack must fail *cleanly*: a typed refusal (an ERROR frame
with its code), the attacker's connection is the only one affected, and honest users keep working.

The API attacks (tokens, roles, HTTP reports) are in test_api_attacks.py; the banned account
reconnecting over the real Kafka enforcement path in test_ban_holds.py.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from relay.client import Identity, RequestRefused
from relay.protocol import ErrorCode, FrameType, encode, encode_deliver, encode_deliver_ack
from relay.testing import eventually, harness, run
from sealguard.contracts import now_ms
from sealguard.settings import Settings


def test_log_in_without_the_key_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with harness(tmp_path) as h:
            victim = await h.user()
            account = victim.account_id
            assert account is not None
            # 1. Knowing the account id, signing with another key.
            mallory = h.client(Identity(Identity.generate().account, account))
            await mallory.connect()
            with pytest.raises(RequestRefused) as err:
                await mallory.login()
            assert err.value.code is ErrorCode.BAD_SIGNATURE
            # 2. Replaying a signature the victim made over an earlier nonce (captured login).
            old_nonce = os.urandom(32)
            captured = victim.identity.sign(b"sealguard-login|" + old_nonce + account.encode())
            await mallory.request(FrameType.CHALLENGE_REQ)
            with pytest.raises(RequestRefused) as err:
                await mallory.request(FrameType.LOGIN, account, captured)
            assert err.value.code is ErrorCode.BAD_SIGNATURE
            # 3. The same challenge cannot be retried (one attempt per nonce).
            with pytest.raises(RequestRefused) as err:
                await mallory.request(FrameType.LOGIN, account, captured)
            assert err.value.code is ErrorCode.NO_CHALLENGE
            # 4. Registering the victim's public identity key with a signature the attacker can make.
            await mallory.request(FrameType.CHALLENGE_REQ)
            with pytest.raises(RequestRefused) as err:
                await mallory.request(FrameType.REGISTER, "sdk", victim.identity.identity_key,
                                      mallory.identity.curve_key, mallory.identity.sign(b"anything"))
            assert err.value.code is ErrorCode.BAD_SIGNATURE
            # The attacker's connection is still unauthenticated: it can do nothing.
            with pytest.raises(RequestRefused) as err:
                await mallory.send_raw(account, b"x")
            assert err.value.code is ErrorCode.NOT_AUTHENTICATED
            with pytest.raises(RequestRefused) as err:
                await mallory.request(FrameType.CLAIM_PREKEY, account)
            assert err.value.code is ErrorCode.NOT_AUTHENTICATED
            # The victim never noticed.
            assert victim.connected
            await victim.ping()
            assert h.server.stats.logins == 0

    run(main())


def test_send_as_another_account_is_impossible(tmp_path: Path) -> None:
    async def main() -> None:
        async with harness(tmp_path) as h:
            victim, bob, mallory = await h.user(), await h.user(), await h.user()
            assert victim.account_id and bob.account_id and mallory.account_id
            # A logged-in connection cannot switch to another account.
            await mallory._challenge()
            with pytest.raises(RequestRefused) as err:
                await mallory.request(FrameType.LOGIN, victim.account_id, victim.identity.sign(b"x"))
            assert err.value.code is ErrorCode.ALREADY_AUTHENTICATED
            # A SEND has no sender field: the relay stamps the connection's account.
            await mallory.send(bob.account_id, b"hello from mallory")
            got = await bob.inbox.get()
            assert got.sender == mallory.account_id
            # Forging a server-to-client DELIVER that names the victim as sender: refused, not routed.
            forged = encode_deliver(os.urandom(16), victim.account_id.encode(), b"", 0, now_ms(), b"\x01forged")
            errors_before = h.server.stats.errors  # the ERROR (rid 0) is logged by the SDK; count it server-side
            mallory._write(forged)
            await eventually(lambda: h.server.stats.errors > errors_before)
            assert mallory.connected
            # Acking a message addressed to someone else does not take it from them.
            await bob.close()
            mid = await victim.send(bob.account_id, b"for bob only")
            mallory._write(encode_deliver_ack([bytes.fromhex(mid)]))
            await mallory.ping()
            bob2 = h.client(bob.identity)
            await bob2.connect()
            assert await bob2.login() == 1
            got = await bob2.inbox.get()
            assert (got.sender, got.message_id, got.plaintext) == (victim.account_id, mid, b"for bob only")
            assert bob2.inbox.empty()  # the forged DELIVER never reached anyone

    run(main())


def test_draining_anothers_prekeys_is_rate_limited_and_the_victim_stays_reachable(tmp_path: Path) -> None:
    async def main() -> None:
        async with harness(tmp_path) as h:
            victim, mallory, friend = await h.user(prekeys=20), await h.user(), await h.user()
            assert victim.account_id and friend.account_id
            ok, one_time, limited = 0, set(), 0
            started = time.monotonic()
            for _ in range(150):
                try:
                    _, key_id, _, is_fallback = await mallory.claim_prekey(victim.account_id)
                except RequestRefused as exc:
                    assert exc.code is ErrorCode.RATE_LIMITED
                    limited += 1
                    continue
                ok += 1
                if not is_fallback:
                    assert key_id not in one_time  # a one-time key is never handed out twice
                    one_time.add(key_id)
            elapsed = time.monotonic() - started
            assert len(one_time) == 20
            assert limited > 0 and ok <= 100 + 2 * elapsed + 1  # the prekey_claim bucket: 100, +2/s
            assert mallory.connected  # refused, not disconnected
            assert any(e.type == "limit.breached" and getattr(e, "limit", None) == "prekey_claim"
                       for e in h.listener.events)
            # The victim's one-time keys are gone, but the fallback key keeps it reachable.
            await friend.send(victim.account_id, b"still reachable")
            got = await victim.inbox.get()
            assert (got.sender, got.plaintext) == (friend.account_id, b"still reachable")

    run(main())


def test_verified_reports_only_from_the_recipient_and_once_per_message(tmp_path: Path) -> None:
    async def main() -> None:
        async with harness(tmp_path) as h:
            sender, recipient, outsider = await h.user(), await h.user(), await h.user()
            assert sender.account_id and recipient.account_id
            mids = [await sender.send(recipient.account_id, f"m{i}".encode()) for i in range(3)]
            # Someone who was not the recipient names the messages (ids leaked or guessed): nothing verified.
            assert await outsider.report(sender.account_id, mids) == 0
            # The sender reporting its own messages (as if it were the recipient): nothing verified.
            assert await sender.report(sender.account_id, mids) == 0
            # The real recipient: verified once ...
            assert await recipient.report(sender.account_id, mids) == 3
            # ... and never twice, in any combination.
            assert await recipient.report(sender.account_id, mids) == 0
            assert await recipient.report(sender.account_id, [mids[0], mids[0], mids[1]]) == 0
            verified = [e.messages_verified for e in h.listener.events if e.type == "report.filed"]
            assert sum(verified) == 3

    run(main())


def test_report_flooding_is_rate_limited(tmp_path: Path) -> None:
    async def main() -> None:
        async with harness(tmp_path) as h:
            target, flooder, honest = await h.user(), await h.user(), await h.user()
            assert target.account_id
            accepted, limited = 0, 0
            started = time.monotonic()
            for _ in range(40):
                try:
                    await flooder.report(target.account_id, [])
                    accepted += 1
                except RequestRefused as exc:
                    assert exc.code is ErrorCode.RATE_LIMITED
                    limited += 1
            elapsed = time.monotonic() - started
            assert accepted <= 20 + 0.05 * elapsed + 1 and limited >= 19  # report bucket: 20, +1 per 20 s
            assert flooder.connected
            # Another account's reports are untouched by the flooder's bucket.
            assert await honest.report(target.account_id, []) == 0
            filed = [e for e in h.listener.events if e.type == "report.filed"]
            assert len(filed) == accepted + 1

    run(main())


def test_registration_flood_from_one_network_bucket_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with harness(tmp_path) as h:
            registered, limited = 0, 0
            started = time.monotonic()
            for i in range(70):
                # Rotating the last octet does not help: the bucket is the /24.
                c = h.client(address=f"127.77.3.{i % 250 + 1}")
                await c.connect()
                try:
                    await c.register()
                    registered += 1
                except RequestRefused as exc:
                    assert exc.code is ErrorCode.RATE_LIMITED
                    limited += 1
                await c.close()
            elapsed = time.monotonic() - started
            assert registered <= 50 + elapsed + 1 and limited >= 10
            breaches = [e for e in h.listener.events if e.type == "limit.breached"]
            assert breaches and all(e.net_bucket and e.account is None for e in breaches)
            # One network's flood does not refuse another network.
            other = h.client(address="127.78.3.1")
            await other.connect()
            assert await other.register()

    run(main())


def test_challenge_flood_from_one_bucket_is_refused_without_closing_others(tmp_path: Path) -> None:
    """Challenges are limited per network bucket (200, +20/s): ten connections from one /24, each
    asking 25 times (under any per-connection pre-login budget), together hit the bucket."""
    async def main() -> None:
        async with harness(tmp_path) as h:
            honest = await h.user()
            codes: list[ErrorCode] = []
            ok = 0
            for i in range(10):
                c = h.client(address=f"127.79.1.{i + 1}")
                c.request_timeout = 10
                await c.connect()
                for _ in range(25):
                    try:
                        await c.request(FrameType.CHALLENGE_REQ)
                        ok += 1
                    except RequestRefused as exc:
                        codes.append(exc.code)
                await c.close()
            assert codes and set(codes) == {ErrorCode.RATE_LIMITED}, codes
            assert ok <= 200 + 20 * 10, ok
            # One connection spraying frames before login is cut off (FLOOD closes only it).
            sprayer = h.client(address="127.79.2.1")
            await sprayer.connect()
            errors_before = h.server.stats.protocol_errors
            sprayer._write(b"".join(encode(FrameType.CHALLENGE_REQ, i + 1) for i in range(100)))
            await eventually(lambda: not sprayer.connected, 10)
            assert h.server.stats.protocol_errors > errors_before
            await honest.ping()
            assert honest.connected

    run(main())


def test_unknown_and_server_only_frames_are_refused_cleanly(tmp_path: Path) -> None:
    async def main() -> None:
        async with harness(tmp_path) as h:
            user, other = await h.user(), await h.user()
            for ftype in (FrameType.REGISTERED, FrameType.LOGGED_IN, FrameType.BAN, FrameType.RECEIPT):
                with pytest.raises(RequestRefused) as err:
                    await user.request(ftype, *_dummy(ftype))
                assert err.value.code is ErrorCode.INVALID
            assert user.connected and other.connected
            await other.ping()

    run(main())


def _dummy(ftype: FrameType) -> tuple[object, ...]:
    from relay.protocol.frames import SCHEMAS

    sample = {"u8": 0, "u16": 0, "u32": 0, "u64": 0, "str": "x", "acct": "a" + "0" * 20, "blob": b"x",
              "mid": b"\x00" * 16}
    out: list[object] = []
    for _, kind in SCHEMAS[ftype]:
        if kind not in sample:
            raise KeyError(kind)
        out.append(sample[kind])
    return tuple(out)


def test_a_banned_account_reconnecting_on_a_new_connection_is_refused(topics: Settings) -> None:
    """The real enforcement path: `do_decide` (database, then sg.enforcement.v1) → the relay's consumer;
    then the banned key tries again on a new connection from another network, and after a relay restart."""
    from moderation.decisions import DecisionRequest, KafkaEnforcementPublisher, do_decide
    from relay.client import Banned, RelayClient
    from relay.service import RelayService
    from sealguard.contracts import Action, DecisionSource, ReasonCode
    from sealguard.storage import Database

    assert topics.kafka is not None

    async def client(port: int, ident: Identity, addr: str, register: bool) -> RelayClient:
        c = RelayClient("127.0.0.1", port, ident, bind_address=addr, request_timeout=10)
        await c.connect()
        if register:
            await c.register()
            await c.upload_prekeys(5)
        return c

    async def main() -> None:
        loop = asyncio.get_running_loop()
        service = RelayService(topics, metrics=False)
        await service.start()
        db = Database(topics.database_url, migrate=False)
        publisher = KafkaEnforcementPublisher(topics.kafka, topics.enforcement_topic)
        try:
            port = service.address[1]
            spammer = await client(port, Identity.generate(), "127.61.0.1", True)
            friend = await client(port, Identity.generate(), "127.61.1.1", True)
            assert spammer.account_id and friend.account_id
            await spammer.send(friend.account_id, b"before the ban")
            row = await loop.run_in_executor(None, lambda: do_decide(db, publisher, DecisionRequest(
                account=spammer.account_id, action=Action.ban, reason_code=ReasonCode.spam,
                source=DecisionSource.reviewer, actor="r:attack-test")))
            await eventually(lambda: spammer.banned is not None and not spammer.connected, 30)
            assert spammer.banned == (row.id, "spam")
            # A new connection, the same key, another network: refused with the decision to appeal.
            again = await client(port, spammer.identity, "127.62.0.1", False)
            with pytest.raises(Banned) as err:
                await again.login()
            assert err.value.decision_id == row.id
            await eventually(lambda: not again.connected)
            # Unauthenticated, it can do nothing (and registering the same key again is refused).
            third = await client(port, spammer.identity, "127.63.0.1", False)
            with pytest.raises(RequestRefused) as refused:
                await third.send_raw(friend.account_id, b"x")
            assert refused.value.code is ErrorCode.NOT_AUTHENTICATED
            with pytest.raises(RequestRefused) as refused:
                await third.register()
            assert refused.value.code is ErrorCode.ALREADY_REGISTERED
            await third.close()
            # The relay restarts: the ban comes back from the database.
            await service.stop()
            service = RelayService(topics, metrics=False)
            await service.start()
            fourth = await client(service.address[1], spammer.identity, "127.64.0.1", False)
            with pytest.raises(Banned):
                await fourth.login()
        finally:
            await service.stop()
            publisher.flush(5)
            db.dispose()

    run(main())
