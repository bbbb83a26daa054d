"""Every rate limit in the one table: the second action past a 1-token bucket is refused with
RATE_LIMITED and a `limit.breached` signal naming the account (or the net_bucket before login)."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from relay.client import RelayClient, RequestRefused
from relay.protocol import ErrorCode, FrameType
from relay.server.limits import LIMITS, Rate, RateLimiter, parse_overrides
from relay.testing import Harness, harness, next_address, run
from sealguard.contracts import Limit

pytestmark = pytest.mark.timeout(60)
ONE = Rate(1, 1e-6)


async def _register(h: Harness, c: RelayClient) -> Callable[[], Awaitable[object]]:
    address = next_address()
    await h.user(prekeys=0, address=address)
    other = h.client(address=address)  # same /24: same net_bucket
    await other.connect()
    return other.register


async def _challenge(h: Harness, c: RelayClient) -> Callable[[], Awaitable[object]]:
    raw = h.client()
    await raw.connect()
    await raw.request(FrameType.CHALLENGE_REQ)
    return lambda: raw.request(FrameType.CHALLENGE_REQ)


async def _send(h: Harness, c: RelayClient) -> Callable[[], Awaitable[object]]:
    b = await h.user()
    await c.send(b.account_id, b"1")
    return lambda: c.send(b.account_id, b"2")


async def _first_contact(h: Harness, c: RelayClient) -> Callable[[], Awaitable[object]]:
    b, d = await h.user(), await h.user()
    await c.send(b.account_id, b"hi")
    await c.send(b.account_id, b"again: not a first contact")
    return lambda: c.send(d.account_id, b"hi")


async def _prekey_claim(h: Harness, c: RelayClient) -> Callable[[], Awaitable[object]]:
    b = await h.user()
    await c.claim_prekey(b.account_id)
    return lambda: c.claim_prekey(b.account_id)


async def _report(h: Harness, c: RelayClient) -> Callable[[], Awaitable[object]]:
    b = await h.user()
    await c.report(b.account_id, [])
    return lambda: c.report(b.account_id, [])


async def _media_upload(h: Harness, c: RelayClient) -> Callable[[], Awaitable[object]]:
    await c.upload_media(os.urandom(100), compress=False)
    return lambda: c.upload_media(os.urandom(100), compress=False)


async def _group_add(h: Harness, c: RelayClient) -> Callable[[], Awaitable[object]]:
    b, d = await h.user(), await h.user()
    gid = await c.create_group([b.account_id])
    return lambda: c.add_member(gid, d.account_id)


async def _handle_lookup(h: Harness, c: RelayClient) -> Callable[[], Awaitable[object]]:
    await c.claim_handle("findme")
    await c.lookup_handle("findme")
    return lambda: c.lookup_handle("findme")


SETUPS = {
    Limit.register: _register, Limit.challenge: _challenge, Limit.send: _send, Limit.first_contact: _first_contact,
    Limit.prekey_claim: _prekey_claim, Limit.report: _report, Limit.media_upload: _media_upload,
    Limit.group_add: _group_add, Limit.handle_lookup: _handle_lookup,
}


def test_every_limit_has_a_test_and_a_row() -> None:
    assert set(SETUPS) == set(Limit) == set(LIMITS)


@pytest.mark.parametrize("limit", list(Limit), ids=lambda x: x.value)
def test_limit_breach_is_refused_and_signalled(limit: Limit, tmp: Path) -> None:
    async def main() -> None:
        async with harness(tmp, limits={limit: ONE}) as h:
            c = await h.user(prekeys=3) if limit not in (Limit.register, Limit.challenge) else h.client()
            action = await SETUPS[limit](h, c)
            with pytest.raises(RequestRefused) as err:
                await action()
            assert err.value.code is ErrorCode.RATE_LIMITED and limit.value in err.value.detail
            breaches = h.signals("limit.breached")
            assert [b.limit for b in breaches] == [limit]
            if limit in (Limit.register, Limit.challenge):
                assert breaches[0].net_bucket and breaches[0].account is None
            else:
                assert breaches[0].account == c.account_id

    run(main())


def test_token_bucket_refills_and_restricted_rows_are_tighter() -> None:
    limiter = RateLimiter({Limit.send: Rate(2, 1000.0)})
    now = [0.0]
    limiter._clock = lambda: now[0]
    assert limiter.take(Limit.send, "a") and limiter.take(Limit.send, "a")
    assert not limiter.take(Limit.send, "a")
    now[0] += 0.002
    assert limiter.take(Limit.send, "a")
    assert limiter.rate(Limit.first_contact, restricted=True).capacity < limiter.rate(Limit.first_contact).capacity
    now[0] += 10
    assert limiter.prune() >= 1
    # the same a little at a time: a pass over every bucket in steps, then a new pass
    for i in range(5):
        limiter.take(Limit.send, f"k{i}")
    now[0] += 10
    assert sum(limiter.prune_step(budget=2) for _ in range(3)) == 5 and len(limiter) == 0
    limiter.take(Limit.send, "again")
    now[0] += 10
    assert limiter.prune_step() == 1


def test_overrides_parse_and_name_what_was_wrong() -> None:
    assert parse_overrides(["send=10:2.5"]) == {Limit.send: Rate(10, 2.5)}
    with pytest.raises(ValueError, match="name=capacity:refill_per_s"):
        parse_overrides(["sending=1:1"])
