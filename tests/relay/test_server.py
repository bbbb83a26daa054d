"""The relay server seen from real SDK clients (real vodozemac, real SQLite, real sockets)."""

from __future__ import annotations

import asyncio
import os
import struct
from pathlib import Path

import pytest
from sqlalchemy import func, select

from relay.client import ConnectionLost, Identity, RelayClient, RequestRefused
from relay.protocol import DeliveryStatus, ErrorCode, FrameReader, FrameType, decode_payload, encode, encode_frame
from relay.server.features import Features
from relay.testing import eventually, harness, next_address, run
from sealguard.storage import NoticeRow, QueuedMessageRow

pytestmark = pytest.mark.timeout(60)


def test_register_login_and_auth_failures(tmp: Path) -> None:
    async def main() -> None:
        async with harness(tmp) as h:
            alice = await h.user()
            assert alice.account_id and alice.account_id.startswith("a")
            # A second connection logs in with the same identity (and kicks the first: one device).
            again = h.client(alice.identity)
            await again.connect()
            assert await again.login() == 0
            await eventually(lambda: not alice.connected)
            # Mallory knows alice's account id but not her key.
            mallory = h.client(Identity(Identity.generate().account, alice.account_id))
            await mallory.connect()
            with pytest.raises(RequestRefused) as err:
                await mallory.login()
            assert err.value.code is ErrorCode.BAD_SIGNATURE
            # Re-registering the same identity key is refused.
            dup = h.client(Identity(alice.identity.account))
            await dup.connect()
            with pytest.raises(RequestRefused) as err:
                await dup.register()
            assert err.value.code is ErrorCode.ALREADY_REGISTERED
            # Login without a challenge, to an unknown account, and acting before login.
            raw = h.client()
            await raw.connect()
            with pytest.raises(RequestRefused) as err:
                await raw.request(FrameType.LOGIN, alice.account_id, "sig")
            assert err.value.code is ErrorCode.NO_CHALLENGE
            await raw.request(FrameType.CHALLENGE_REQ)
            with pytest.raises(RequestRefused) as err:
                await raw.request(FrameType.LOGIN, "a" + "0" * 20, "sig")
            assert err.value.code is ErrorCode.UNKNOWN_ACCOUNT
            with pytest.raises(RequestRefused) as err:
                await raw.send_raw(alice.account_id, b"x")
            assert err.value.code is ErrorCode.NOT_AUTHENTICATED
            # A registration signed over the wrong nonce.
            await raw.request(FrameType.CHALLENGE_REQ)
            ident = raw.identity
            with pytest.raises(RequestRefused) as err:
                await raw.request(FrameType.REGISTER, "sdk", ident.identity_key, ident.curve_key, ident.sign(b"nope"))
            assert err.value.code is ErrorCode.BAD_SIGNATURE
            assert len(h.signals("account.registered")) == 1

    run(main())


def test_one_to_one_end_to_end_round_trip_and_receipts(tmp: Path) -> None:
    async def main() -> None:
        async with harness(tmp) as h:
            a, b = await h.user(), await h.user()
            mid = await a.send(b.account_id, b"hello bob")
            got = await asyncio.wait_for(b.inbox.get(), 5)
            assert (got.sender, got.message_id, got.plaintext) == (a.account_id, mid, b"hello bob")
            assert a.ack_status[mid] is DeliveryStatus.DELIVERED
            reply = await b.send(a.account_id, b"hi alice")
            assert (await asyncio.wait_for(a.inbox.get(), 5)).plaintext == b"hi alice"
            # Read receipts travel end to end.
            await a.send_read_receipt(b.account_id, [reply])
            await eventually(lambda: reply in b.read_ids)
            sent = h.signals("message.sent")
            assert [s.first_contact for s in sent[:2]] == [True, False]
            assert sent[0].recipient_online is True and sent[0].size_bucket > 0
            # The relay never saw the plaintext.
            assert all(b"hello bob" not in repr(e).encode() for e in h.listener.events)

    run(main())


def test_offline_queue_delivery_ack_deletes_and_duplicates_are_dropped(tmp: Path) -> None:
    async def main() -> None:
        async with harness(tmp) as h:
            a, b = await h.user(), await h.user()
            await a.send(b.account_id, b"first")  # opens the session while b is online
            await b.inbox.get()
            await b.close()
            await eventually(lambda: b.account_id not in h.server.conns)
            mids = [await a.send(b.account_id, f"m{i}".encode()) for i in range(5)]
            assert {a.ack_status[m] for m in mids} == {DeliveryStatus.QUEUED}
            with h.db.session() as s:
                assert s.scalar(select(func.count()).select_from(QueuedMessageRow)) == 5
            await b.connect()
            assert await b.login() == 5
            got = [await asyncio.wait_for(b.inbox.get(), 5) for _ in range(5)]
            assert [g.plaintext for g in got] == [f"m{i}".encode() for i in range(5)]
            await eventually(lambda: set(mids) <= a.delivered_ids)  # delivery receipts

            def queued() -> int:
                with h.db.session() as s:
                    return int(s.scalar(select(func.count()).select_from(QueuedMessageRow)) or 0)

            await eventually(lambda: queued() == 0)
            # A redelivery of a message already received is acked and dropped.
            b.received_ids.add("ff" * 16)
            assert b.inbox.empty()

    run(main())


def test_unacked_delivery_is_queued_when_the_recipient_vanishes(tmp: Path) -> None:
    async def main() -> None:
        async with harness(tmp, ack_timeout_s=0.3) as h:
            a, b = await h.user(), await h.user()
            await a.send(b.account_id, b"open")
            await b.inbox.get()
            b._on_deliver = lambda payload: None  # type: ignore[method-assign]  # receives, never acks
            mid = await asyncio.wait_for(a.send(b.account_id, b"lost?"), 5)
            assert a.ack_status[mid] is DeliveryStatus.QUEUED
            with h.db.session() as s:
                assert s.scalar(select(func.count()).select_from(QueuedMessageRow)) == 1

    run(main())


def test_malformed_frame_gets_an_error_frame_and_only_that_client_is_closed(tmp: Path) -> None:
    async def main() -> None:
        async with harness(tmp) as h:
            a, b = await h.user(), await h.user()
            for garbage, code in [
                (b"\x00\x00\x00\x08\x07\x01\x00\x00\x00\x00\x01\x00", ErrorCode.BAD_VERSION),
                (struct.pack(">I", 50_000_000), ErrorCode.FRAME_TOO_LARGE),
                (encode(FrameType.PING, 1)[:5] + b"\xfe" + encode(FrameType.PING, 1)[6:], ErrorCode.UNKNOWN_FRAME),
            ]:
                reader, writer = await asyncio.open_connection(h.server.host, h.server.port)
                writer.write(garbage)
                data = await asyncio.wait_for(reader.read(), 5)  # the error frame, then EOF
                ftype, _, _, payload = FrameReader().feed(data)[0]
                assert ftype == FrameType.ERROR and decode_payload(ftype, payload)[0] == code
                writer.close()
            # A logged-in client whose ADD_CONTACT payload is truncated: error frame, closed; others go on.
            with pytest.raises(RequestRefused) as err:
                await a._request_raw(9, encode_frame(FrameType.ADD_CONTACT, 9, b"a123"))
            assert err.value.code is ErrorCode.MALFORMED and "ADD_CONTACT.account" in err.value.detail
            await eventually(lambda: not a.connected)
            c = await h.user()
            await c.send(b.account_id, b"still fine")
            assert (await asyncio.wait_for(b.inbox.get(), 5)).plaintext == b"still fine"

    run(main())


def test_idle_and_half_open_connections_time_out(tmp: Path) -> None:
    async def main() -> None:
        async with harness(tmp, handshake_timeout_s=0.3, idle_timeout_s=0.8, sweep_interval_s=0.1) as h:
            reader, writer = await asyncio.open_connection(h.server.host, h.server.port)  # says nothing
            data = await asyncio.wait_for(reader.read(), 5)  # an error frame, then EOF
            ftype, _, _, payload = FrameReader().feed(data)[0]
            assert ftype == FrameType.ERROR and decode_payload(ftype, payload)[0] == ErrorCode.TIMEOUT
            writer.close()
            c = h.client()
            c.ping_interval = 0  # silent after login
            await c.connect()
            await c.register()
            await asyncio.wait_for(c.closed.wait(), 5)
            pinger = h.client()
            pinger.ping_interval = 0.2
            await pinger.connect()
            await pinger.register()
            await asyncio.sleep(1.2)
            assert pinger.connected

    run(main())


def test_a_logged_in_client_dribbling_bytes_of_a_frame_that_never_completes_times_out(tmp: Path) -> None:
    async def main() -> None:
        async with harness(tmp, idle_timeout_s=0.8, sweep_interval_s=0.1) as h:
            c = h.client()
            c.ping_interval = 0
            await c.connect()
            await c.register()
            c._write(struct.pack(">I", 64))  # a frame header promising 64 bytes ...
            for _ in range(25):  # ... dribbled one byte every 0.1 s, never reaching them
                if c.closed.is_set():
                    break
                c._write(b"\x00")
                await asyncio.sleep(0.1)
            assert c.closed.is_set(), "a slow-loris after login must hit the idle timeout"

    run(main())


def test_prekey_claims_one_time_keys_then_the_fallback_then_none(tmp: Path) -> None:
    async def main() -> None:
        async with harness(tmp) as h:
            bob = await h.user(prekeys=2)
            a = await h.user()
            claims = [await a.claim_prekey(bob.account_id) for _ in range(4)]
            assert [c[3] for c in claims] == [False, False, True, True]
            assert len({c[1] for c in claims[:2]}) == 2  # never the same one-time key twice
            nokeys = await h.user(prekeys=0)
            with pytest.raises(RequestRefused) as err:
                await a.claim_prekey(nokeys.account_id)
            assert err.value.code is ErrorCode.NO_PREKEY
            # A session opened on the fallback key still works end to end.
            other = await h.user()
            bob.olm.sessions.clear()
            await other.claim_prekey(bob.account_id)  # (already exhausted: fallback)
            await other.send(bob.account_id, b"via fallback")
            assert (await asyncio.wait_for(bob.inbox.get(), 5)).plaintext == b"via fallback"

    run(main())


def test_group_membership_changes_and_megolm_fan_out(tmp: Path) -> None:
    async def main() -> None:
        async with harness(tmp) as h:
            a, b, c, d = [await h.user() for _ in range(4)]
            gid = await a.create_group([b.account_id, c.account_id])
            await a.send_group(gid, b"hello group")
            for m in (b, c):
                got = await asyncio.wait_for(m.inbox.get(), 5)
                assert (got.group, got.plaintext, got.sender) == (gid, b"hello group", a.account_id)
            await a.add_member(gid, d.account_id)
            await eventually(lambda: gid in d.groups)
            await a.remove_member(gid, c.account_id)
            await eventually(lambda: gid not in c.groups)
            await a.send_group(gid, b"after changes")
            assert (await asyncio.wait_for(d.inbox.get(), 5)).plaintext == b"after changes"
            assert (await asyncio.wait_for(b.inbox.get(), 5)).plaintext == b"after changes"
            await asyncio.sleep(0.2)
            assert c.inbox.empty()
            # A removed member can no longer send to the group; strangers cannot add themselves.
            with pytest.raises(RequestRefused) as err:
                await c.send_group(gid, b"x") if gid in c.groups else await c.request(
                    FrameType.GROUP_ADD, gid, c.account_id)
            assert err.value.code is ErrorCode.NOT_A_MEMBER
            # Members reply in the group with their own Megolm session.
            await b.send_group(gid, b"from b")
            assert (await asyncio.wait_for(a.inbox.get(), 5)).plaintext == b"from b"
            types = [e.type for e in h.listener.events if e.type.startswith("group.")]
            assert types == ["group.created", "group.member_added", "group.member_added", "group.member_added",
                             "group.member_removed"]

    run(main())


def test_queue_quota_and_ttl(tmp: Path) -> None:
    async def main() -> None:
        async with harness(tmp, queue_quota=2, queue_ttl_s=0.5) as h:
            a, b = await h.user(), await h.user()
            await b.close()
            await eventually(lambda: b.account_id not in h.server.conns)
            await a.send(b.account_id, b"1")
            await a.send(b.account_id, b"2")
            with pytest.raises(RequestRefused) as err:
                await a.send(b.account_id, b"3")
            assert err.value.code is ErrorCode.QUOTA_EXCEEDED
            await asyncio.sleep(0.6)
            await h.server._purge()
            with h.db.session() as s:
                assert s.scalar(select(func.count()).select_from(QueuedMessageRow)) == 0

    run(main())


def test_report_verification_recipient_only_once_per_message(tmp: Path) -> None:
    async def main() -> None:
        async with harness(tmp) as h:
            spammer, victim, bystander = await h.user(), await h.user(), await h.user()
            mids = [await spammer.send(victim.account_id, b"buy now") for _ in range(3)]
            # A bystander naming messages it never received: nothing verified.
            assert await bystander.report(spammer.account_id, mids) == 0
            assert await victim.report(spammer.account_id, mids + ["00" * 16]) == 3
            assert await victim.report(spammer.account_id, mids) == 0  # at most one verified report per message
            reports = h.signals("report.filed")
            assert [(r.messages_named, r.messages_verified) for r in reports] == [(3, 0), (4, 3), (3, 0)]

    run(main())


def test_block_refuses_messages_from_the_blocked(tmp: Path) -> None:
    async def main() -> None:
        async with harness(tmp) as h:
            a, b = await h.user(), await h.user()
            await b.block(a.account_id)
            with pytest.raises(RequestRefused) as err:
                await a.send(b.account_id, b"hey")
            assert err.value.code is ErrorCode.BLOCKED
            await b.unblock(a.account_id)
            await a.send(b.account_id, b"hey")
            assert h.signals("contact.blocked")[0].blocker == b.account_id

    run(main())


def test_handles_contacts_and_presence_to_contacts_only(tmp: Path) -> None:
    async def main() -> None:
        async with harness(tmp) as h:
            a, b, c = await h.user(), await h.user(), await h.user()
            await a.claim_handle("alice_1")
            with pytest.raises(RequestRefused) as err:
                await b.claim_handle("alice_1")
            assert err.value.code is ErrorCode.HANDLE_TAKEN
            with pytest.raises(RequestRefused) as err:
                await b.claim_handle("Not A Handle!")
            assert err.value.code is ErrorCode.INVALID
            assert await b.lookup_handle("alice_1") == a.account_id
            with pytest.raises(RequestRefused) as err:
                await b.lookup_handle("nobody")
            assert err.value.code is ErrorCode.NOT_FOUND
            await a.add_contact(b.account_id)
            await a.close()
            await eventually(lambda: b.presence.get(a.account_id) is False)
            assert a.account_id not in c.presence  # c is not a's contact
            await a.connect()
            await a.login()
            await eventually(lambda: b.presence.get(a.account_id) is True)
            assert h.signals("contact.added")[0].contact == b.account_id

    run(main())


def test_media_upload_fetch_compression_and_ttl(tmp: Path) -> None:
    from io import BytesIO

    from PIL import Image

    async def main() -> None:
        async with harness(tmp, media_ttl_s=0.5) as h:
            a, b = await h.user(), await h.user()
            img = Image.new("RGB", (3000, 2000), (200, 30, 30))
            raw = BytesIO()
            img.save(raw, format="BMP")
            await a.send_media(b.account_id, raw.getvalue(), caption="a red square")
            got = await asyncio.wait_for(b.inbox.get(), 5)
            assert got.media is not None and got.plaintext == b"a red square"
            data = await b.fetch_media(got.media)
            assert len(data) < len(raw.getvalue()) / 10  # compressed before encryption
            assert Image.open(BytesIO(data)).size == (1600, 1067)
            stored = (tmp / "media" / got.media.blob_id).read_bytes()
            assert data not in stored  # the relay holds ciphertext only
            uploaded, fetched = h.signals("media.uploaded")[0], h.signals("media.fetched")[0]
            assert uploaded.blob != got.media.blob_id and fetched.fetch_count == 1
            with pytest.raises(RequestRefused) as err:
                await a.request(FrameType.MEDIA_UPLOAD, os.urandom(4 * 1024 * 1024 + 1))
            assert err.value.code is ErrorCode.TOO_LARGE
            await asyncio.sleep(0.6)
            await h.server._purge()
            assert not (tmp / "media" / got.media.blob_id).exists()
            with pytest.raises(RequestRefused) as err:
                await b.fetch_media(got.media)
            assert err.value.code is ErrorCode.NOT_FOUND

    run(main())


def test_notices_are_delivered_on_login_and_by_polling(tmp: Path) -> None:
    async def main() -> None:
        async with harness(tmp, notice_poll_s=0.1) as h:
            a = await h.user()
            b = await h.user()
            await b.close()
            with h.db.session() as s, s.begin():
                s.add(NoticeRow(account=a.account_id, kind="report_actioned", decision_id="d" + "1" * 32,
                                reason_code="spam", created_at=1))
                s.add(NoticeRow(account=b.account_id, kind="appeal_upheld", created_at=1))
            n = await asyncio.wait_for(a.notices.get(), 5)
            assert (n.kind, n.reason_code) == ("report_actioned", "spam")
            await b.connect()
            await b.login()
            assert (await asyncio.wait_for(b.notices.get(), 5)).kind == "appeal_upheld"

            def undelivered() -> int:
                with h.db.session() as s:
                    return int(s.scalar(select(func.count()).select_from(NoticeRow)
                                        .where(NoticeRow.delivered_at.is_(None))) or 0)

            await eventually(lambda: undelivered() == 0)

    run(main())


def test_blob_signal_ids_are_hashed() -> None:
    class S:
        class config:
            net_salt = "salt"

    f = Features.__new__(Features)
    f.s = S  # type: ignore[assignment]
    blob = f.blob_signal_id("ab" * 16)
    assert blob.startswith("b") and len(blob) == 21 and "ab" * 8 not in blob


def test_many_clients_on_distinct_source_addresses_get_distinct_net_buckets(tmp: Path) -> None:
    async def main() -> None:
        async with harness(tmp) as h:
            users = [await h.user(prekeys=0, address=next_address()) for _ in range(3)]
            buckets = {e.net_bucket for e in h.signals("account.registered")}
            assert len(buckets) == len(users)

    run(main())


def test_the_frame_budget_refills_every_sweep_interval(tmp: Path) -> None:
    """The sweep no longer visits every connection: a connection refills its own budget with its
    first frame of each sweep interval. 40 PINGs (4,000 of 5,000) per interval, four intervals."""
    async def main() -> None:
        async with harness(tmp, sweep_interval_s=0.2) as h:
            a, b = await h.user(), await h.user()
            for _ in range(4):
                gen = h.server.sweep_gen
                a._write(encode(FrameType.PING, 0) * 40)
                await eventually(lambda gen=gen: h.server.sweep_gen > gen, timeout=5)
            await asyncio.sleep(0.1)
            assert a.connected and not a.closed.is_set()
            await a.send(b.account_id, b"still here")
            assert (await asyncio.wait_for(b.inbox.get(), 5)).plaintext == b"still here"

    run(main())


def test_client_over_plain_identity_pickle(tmp: Path) -> None:
    async def main() -> None:
        async with harness(tmp) as h:
            a = await h.user()
            saved = a.identity.to_pickle(b"secret")
            await a.close()
            again = RelayClient(h.server.host, h.server.port, Identity.from_pickle(saved, b"secret"))
            h.clients.append(again)
            await again.connect()
            await again.login()
            assert again.account_id == a.account_id

    run(main())


def test_a_ping_flood_is_closed_and_others_are_unharmed(tmp: Path) -> None:
    async def main() -> None:
        async with harness(tmp) as h:
            a, b = await h.user(), await h.user()
            reader, writer = await asyncio.open_connection(h.server.host, h.server.port)
            writer.write(encode(FrameType.PING, 1) * 100)  # before login: 32 frames at most
            data = await asyncio.wait_for(reader.read(), 5)
            ftype, _, _, payload = FrameReader().feed(data)[-1]
            assert ftype == FrameType.ERROR and decode_payload(ftype, payload)[0] == ErrorCode.FLOOD
            writer.close()
            a._write(encode(FrameType.PING, 0) * 200)  # logged in: 50 PINGs per sweep interval
            await asyncio.wait_for(a.closed.wait(), 5)
            # the SDK says why the server closed it, to whoever still waits or tries
            assert a.closed_by is not None and a.closed_by.startswith("FLOOD")
            with pytest.raises(ConnectionLost, match="FLOOD"):
                await a.send(b.account_id, b"after")
            c = await h.user()
            await c.send(b.account_id, b"fine")
            assert (await asyncio.wait_for(b.inbox.get(), 5)).plaintext == b"fine"

    run(main())


def test_remove_contact_and_server_frames_sent_by_a_client(tmp: Path) -> None:
    async def main() -> None:
        async with harness(tmp) as h:
            a, b = await h.user(), await h.user()
            await a.add_contact(b.account_id)
            assert b.account_id in h.server.book.contacts_of(a.account_id)
            await a.remove_contact(b.account_id)
            assert b.account_id not in h.server.book.contacts_of(a.account_id)
            await a.close()
            await asyncio.sleep(0.2)
            assert a.account_id not in b.presence  # no longer a's contact: told nothing
            with pytest.raises(RequestRefused) as err:
                await b.request(FrameType.SEND_ACK, os.urandom(16), 1)
            assert err.value.code is ErrorCode.INVALID and "server-to-client" in err.value.detail
            await b.ping()

    run(main())


def test_an_offline_group_member_gets_the_key_and_the_message_at_login(tmp: Path) -> None:
    async def main() -> None:
        async with harness(tmp) as h:
            a, b = await h.user(), await h.user()
            gid = await a.create_group([b.account_id])
            await b.close()
            await eventually(lambda: b.account_id not in h.server.conns)
            mid = await a.send_group(gid, b"while you were away")
            assert a.ack_status[mid] is DeliveryStatus.QUEUED
            await b.connect()
            assert await b.login() == 2  # the Megolm key (over Olm) and the group message
            got = await asyncio.wait_for(b.inbox.get(), 5)
            assert (got.group, got.plaintext, got.message_id) == (gid, b"while you were away", mid)

    run(main())
