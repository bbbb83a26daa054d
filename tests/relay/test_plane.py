"""The native data plane (relay/server/_plane.c, plane.py): the messages it handles itself are the
same messages, with the same acks, signals, commitments, limits and durability, as the Python path's.
Every test runs a real relay with the plane and real clients over loopback."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest
from sqlalchemy import select

from relay.client import RelayClient, RequestRefused
from relay.emitter import encode_message_sent
from relay.protocol import DeliveryStatus, ErrorCode
from relay.server import _plane  # type: ignore[attr-defined]
from relay.server.enforce import DecisionState
from relay.server.limits import Rate
from relay.testing import eventually, harness, next_address, run
from sealguard.contracts import Action, Limit, decode, now_ms
from sealguard.storage import QueuedMessageRow

_URING_SYSCTL = Path("/proc/sys/kernel/io_uring_disabled")
URING_ALLOWED = _URING_SYSCTL.exists() and _URING_SYSCTL.read_text().strip() == "0"


@pytest.fixture(autouse=True, params=["io_uring", "epoll"])
def io(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test on both of the plane's I/O layers: io_uring, and epoll (where io_uring cannot be
    set up, or SEALGUARD_RELAY_EPOLL is set)."""
    if request.param == "epoll":
        monkeypatch.setenv("SEALGUARD_RELAY_EPOLL", "1")
    else:
        monkeypatch.delenv("SEALGUARD_RELAY_EPOLL", raising=False)
    return str(request.param)


def native_sends(h) -> int:  # type: ignore[no-untyped-def]
    h.server.sync_plane()
    return h.server.plane_count("sends")


def test_the_plane_serves_messages_with_the_same_acks_signals_and_commitments(tmp: Path, io: str) -> None:
    async def main() -> None:
        async with harness(tmp) as h:
            assert h.server.plane is not None, "the plane is built by `make venv`"
            if io == "epoll" or URING_ALLOWED:
                assert h.server.plane.plane.io.startswith(io), h.server.plane.plane.io
            a, b = await h.user(), await h.user()
            mids = [await a.send(b.account_id, f"m{i}".encode()) for i in range(12)]
            got = [(await asyncio.wait_for(b.inbox.get(), 5)).plaintext for _ in mids]
            assert got == [f"m{i}".encode() for i in range(12)]
            assert all(a.ack_status[m] is DeliveryStatus.DELIVERED for m in mids)
            assert native_sends(h) == 12
            await eventually(lambda: len(h.signals("message.sent")) == 12)
            sent = h.signals("message.sent")
            assert [s.first_contact for s in sent] == [True] + [False] * 11
            assert {(s.sender, s.recipient, s.recipient_online, s.kind.value) for s in sent} == \
                {(a.account_id, b.account_id, True, "text")}
            assert len({s.size_bucket for s in sent}) == 1 and len({s.id for s in sent}) == 12
            # Report commitments written by the plane verify as the Python path's do.
            assert await b.report(a.account_id, mids) == 12

    run(main())


def test_the_plane_formats_message_sent_and_hashes_commitments_as_python_does() -> None:
    for n in (0, 1, 58, 128):
        data = os.urandom(n)
        assert _plane.blake2b_16(data) == hashlib.blake2b(data, digest_size=16).digest()
    ours = decode(encode_message_sent("a" + "1" * 20, "a" + "2" * 20, 300, 1, False, True, 1_700_000_000_000))
    assert ours.size_bucket == 8 and ours.kind.value == "media"


def test_a_message_held_by_the_plane_is_queued_when_its_recipient_vanishes(tmp: Path) -> None:
    async def main() -> None:
        async with harness(tmp) as h:
            a, b = await h.user(), await h.user()
            await a.send(b.account_id, b"open")
            await b.inbox.get()
            b._on_deliver = lambda payload: None  # type: ignore[method-assign]  # receives, never acks
            send = asyncio.ensure_future(a.send(b.account_id, b"kept"))
            await eventually(lambda: native_sends(h) == 1)
            b.abort()
            mid = await asyncio.wait_for(send, 5)
            assert a.ack_status[mid] is DeliveryStatus.QUEUED
            with h.db.session() as s:
                assert s.scalars(select(QueuedMessageRow.message_id)).all() == [mid]

    run(main())


def test_a_block_or_a_restriction_takes_messages_off_the_plane(tmp: Path) -> None:
    async def main() -> None:
        async with harness(tmp) as h:
            a, b, c = await h.user(), await h.user(), await h.user()
            for _ in range(2):
                await a.send(b.account_id, b"hi")
                await a.send(c.account_id, b"hi")
            assert native_sends(h) == 4
            await b.block(a.account_id)
            with pytest.raises(RequestRefused) as err:
                await a.send(b.account_id, b"blocked?")
            assert err.value.code is ErrorCode.BLOCKED
            await h.server.enforcer.apply(a.account_id, DecisionState("d-1", Action.restrict, "spam", now_ms(), None))
            await a.send(c.account_id, b"restricted, still delivered")
            assert native_sends(h) == 4  # a restricted sender's messages go through Python's tighter limits
            await h.server.enforcer.apply(a.account_id, DecisionState("d-2", Action.lift, "spam", now_ms(), None))
            await a.send(c.account_id, b"lifted")
            assert native_sends(h) == 5
            await b.unblock(a.account_id)
            await a.send(b.account_id, b"unblocked")
            assert native_sends(h) == 6

    run(main())


def test_the_send_limit_is_one_bucket_across_the_plane_python_and_a_reconnect(tmp: Path) -> None:
    async def main() -> None:
        async with harness(tmp, limits={Limit.send: Rate(5, 0.001)}) as h:
            a, b = await h.user(), await h.user()
            for _ in range(5):
                await a.send(b.account_id, b"x")
            assert native_sends(h) == 5
            with pytest.raises(RequestRefused) as err:
                await a.send(b.account_id, b"one too many")
            assert err.value.code is ErrorCode.RATE_LIMITED
            assert h.signals("limit.breached")[-1].account == a.account_id
            await a.close()
            again = RelayClient(h.server.host, h.server.port, a.identity, bind_address=next_address())
            h.clients.append(again)
            await again.connect()
            await again.login()
            with pytest.raises(RequestRefused) as err:
                await again.send(b.account_id, b"after a reconnect")
            assert err.value.code is ErrorCode.RATE_LIMITED

    run(main())


def test_first_contacts_on_the_plane_are_limited_signalled_and_know_contacts(tmp: Path) -> None:
    async def main() -> None:
        async with harness(tmp, limits={Limit.first_contact: Rate(2, 0.001)}) as h:
            a, b, c, d, e = [await h.user() for _ in range(5)]
            await a.add_contact(e.account_id)
            await a.send(e.account_id, b"a contact: not a first contact")
            await a.send(b.account_id, b"first")
            await a.send(c.account_id, b"second")
            with pytest.raises(RequestRefused) as err:
                await a.send(d.account_id, b"third first contact")
            assert err.value.code is ErrorCode.RATE_LIMITED
            assert h.signals("limit.breached")[-1].limit is Limit.first_contact
            await b.send(a.account_id, b"a reply is no first contact")
            assert native_sends(h) == 4
            await eventually(lambda: len(h.signals("message.sent")) == 4)
            assert [(s.recipient, s.first_contact) for s in h.signals("message.sent")] == [
                (e.account_id, False), (b.account_id, True), (c.account_id, True), (a.account_id, False)]

    run(main())


def test_a_framing_error_on_a_plane_connection_closes_only_it(tmp: Path) -> None:
    async def main() -> None:
        async with harness(tmp) as h:
            a, b = await h.user(), await h.user()
            await a.send(b.account_id, b"open")
            a._write(b"\x00\x00\x00\x08\x07\x30\x00\x00\x00\x00\x01\x00")  # version 7
            await eventually(lambda: not a.connected)
            assert h.server.counter("protocol_errors") == 1
            c = await h.user()
            await c.send(b.account_id, b"still fine")
            assert (await asyncio.wait_for(b.inbox.get(), 5)).plaintext == b"open"
            assert (await asyncio.wait_for(b.inbox.get(), 5)).plaintext == b"still fine"

    run(main())


def test_without_the_plane_the_asyncio_data_plane_serves(tmp: Path) -> None:
    async def main() -> None:
        async with harness(tmp, native_plane=False) as h:
            assert h.server.plane is None
            a, b = await h.user(), await h.user()
            for _ in range(3):
                await a.send(b.account_id, b"x")
            assert h.server.stats.sends == 3

    run(main())

