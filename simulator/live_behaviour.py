"""What each live account does, in compressed time, through the real SDK.

One coroutine per account acts (chats, broadcasts, spams) and one reads its inbox and reacts
(replies to friends; blocks, reports or — rarely — answers spam; scammers keep conversations
going). Every action is a real request to the relay; a refused or failed one is counted and
never stops the population. A banned client stops sending: its sends are refused by the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from relay.client import Identity, RelayClient
from relay.client.client import Banned, ClientError, Received
from sealguard.contracts import ClientKind, ReasonCode
from simulator.scenario import STRATEGIES, Scenario

if TYPE_CHECKING:
    from simulator.live import LiveResult

log = logging.getLogger(__name__)

_FAILURES = (ClientError, OSError, TimeoutError, asyncio.TimeoutError)


@dataclass
class Agent:
    index: int
    role: str
    address: str
    farm: int | None = None
    client: RelayClient | None = None
    account: str | None = None
    contacts: set[int] = field(default_factory=set)
    gap_s: float = 10.0
    turns: dict[int, int] = field(default_factory=dict)        # partner -> turns left in the conversation
    inbound: dict[str, list[str]] = field(default_factory=dict)  # sender -> message ids received
    reacted: set[str] = field(default_factory=set)

    @property
    def spammer(self) -> bool:
        return self.role in STRATEGIES

    @property
    def usable(self) -> bool:
        return self.client is not None and self.client.banned is None and self.client.connected


class Population:
    """The shared state of a live run: clients, the small social graph, truth and books."""

    def __init__(self, scenario: Scenario, rng: random.Random, result: LiveResult, host: str, port: int) -> None:
        self.scenario = scenario
        self.rng = rng
        self.result = result
        self.host, self.port = host, port
        self.agents: list[Agent] = []
        self.by_account: dict[str, Agent] = {}
        self.ring_queue: list[int] = []
        self.reactions: set[asyncio.Future[None]] = set()
        self.halted = False  # set when the traffic stops: no new requests, only draining
        self._ring_pos = 0

    # -- setup ------------------------------------------------------------------------------
    async def join(self, agent: Agent, kind: ClientKind) -> None:
        """Connect from the agent's own address, register, publish prekeys."""
        client = RelayClient(self.host, self.port, Identity.generate(), bind_address=agent.address,
                             request_timeout=20.0)
        agent.client = client
        await client.connect()
        agent.account = await client.register(client_kind=kind)
        await client.upload_prekeys(12)
        self.by_account[agent.account] = agent
        self.result.roles[agent.account] = agent.role
        self.result.labels[agent.account] = 1 if agent.spammer else 0
        agent.gap_s = min(60.0, max(1.5, self.rng.lognormvariate(2.3, 0.7)))  # median ~10 s, heavy users ~2 s

    async def befriend(self, host: str, port: int) -> None:
        """Communities of ~20 among the legitimate (and soon hijacked) accounts; contacts mutual."""
        people = [a for a in self.agents if a.account and (not a.spammer or a.role == "hijacked")]
        self.rng.shuffle(people)
        adds: list[Awaitable[Any]] = []
        for start in range(0, len(people), 20):
            community = people[start:start + 20]
            for a in community:
                for b in self.rng.sample(community, min(len(community), self.rng.randint(3, 8))):
                    if a is not b and b.index not in a.contacts:
                        a.contacts.add(b.index)
                        b.contacts.add(a.index)
                        adds += [self._add(a, b), self._add(b, a)]
        shops = [a for a in people if a.role == "small_business"]
        for shop in shops:
            for c in self.rng.sample(people, min(len(people), 30)):
                if c is not shop and shop.index not in c.contacts:
                    c.contacts.add(shop.index)
                    shop.contacts.add(c.index)
                    adds += [self._add(c, shop), self._add(shop, c)]
        for k in range(0, len(adds), 200):
            await asyncio.gather(*adds[k:k + 200])

    async def _add(self, a: Agent, b: Agent) -> None:
        await self.act(a, a.client.add_contact(b.account) if a.client and b.account else None)

    # -- actions ----------------------------------------------------------------------------
    async def act(self, agent: Agent, call: Awaitable[Any] | None) -> Any:
        """Run one request; failures are counted, a ban is remembered."""
        if call is None:
            return None
        if self.halted:
            if asyncio.iscoroutine(call):
                call.close()
            return None
        try:
            return await call
        except Banned:
            return None
        except _FAILURES as exc:
            self.result.refused += 1
            log.debug("%s %s: %s", agent.role, agent.account, exc)
            return None

    async def send(self, agent: Agent, target: Agent, spam: bool = False) -> str | None:
        if self.halted or not agent.usable or target.account is None:
            return None
        assert agent.client is not None and agent.account is not None
        if spam and agent.account not in self.result.first_spam_ms:
            self.result.first_spam_ms[agent.account] = int(time.time() * 1000)
        body = os.urandom(self.rng.randint(12, 180) if not spam else self.rng.randint(80, 400))
        mid = await self.act(agent, agent.client.send(target.account, body))
        if mid is not None:
            self.result.sent += 1
        return mid

    def strangers(self, agent: Agent, k: int) -> list[Agent]:
        pool = [a for a in self.agents if not a.spammer and a.account and a.index not in agent.contacts
                and a is not agent]
        return self.rng.sample(pool, min(k, len(pool)))

    def contact(self, agent: Agent) -> Agent | None:
        if not agent.contacts:
            return None
        ordered = sorted(agent.contacts)
        return self.agents[ordered[int(len(ordered) * self.rng.random() ** 2)]]

    def next_ring_target(self) -> Agent | None:
        if not self.ring_queue:
            return None
        target = self.agents[self.ring_queue[(self._ring_pos // 2) % len(self.ring_queue)]]
        self._ring_pos += 1
        return target

    def collect(self) -> None:
        for a in self.agents:
            if a.client is None or a.account is None:
                continue
            self.result.acked_ids[a.account] = set(a.client.acked_ids)
            self.result.received_ids[a.account] = set(a.client.received_ids)
            if a.client.banned is not None:
                self.result.bans[a.account] = a.client.banned

    async def close(self) -> None:
        for task in list(self.reactions):
            task.cancel()
        for a in self.agents or []:
            if a.client is not None:
                with contextlib.suppress(Exception):
                    await a.client.close()


async def _sleep(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep unless stopped; True when it is time to stop."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
        return True
    except TimeoutError:
        return stop.is_set()


# -- behaviours ---------------------------------------------------------------------------
async def chat(pop: Population, a: Agent, stop: asyncio.Event, until: float | None = None) -> None:
    """Ordinary life: a message to a (mostly close) contact every few seconds; now and then
    someone new, added as a contact first."""
    rng = pop.rng
    while not stop.is_set() and (until is None or time.monotonic() < until):
        pause = rng.expovariate(1.0 / a.gap_s)
        if until is not None and time.monotonic() + pause >= until:
            await _sleep(stop, until - time.monotonic())
            return
        if await _sleep(stop, pause):
            return
        if not a.usable:
            return
        if rng.random() < 0.03:
            new = pop.strangers(a, 1)
            if new:
                await pop.act(a, a.client.add_contact(new[0].account))  # type: ignore[union-attr]
                a.contacts.add(new[0].index)
        target = pop.contact(a)
        if target is None:
            continue
        a.turns[target.index] = rng.randint(2, 8)
        for _ in range(1 + (rng.random() < 0.3)):
            await pop.send(a, target)


async def spam_to(pop: Population, a: Agent, stop: asyncio.Event, gap: float, targets: list[Agent],
                  burst: int = 1) -> None:
    for target in targets:
        if stop.is_set() or not a.usable:
            return
        for _ in range(burst):
            await pop.send(a, target, spam=True)
        if await _sleep(stop, pop.rng.uniform(0.5, 1.5) * gap):
            return


async def behave(pop: Population, a: Agent, stop: asyncio.Event, host: str, port: int) -> None:
    rng = pop.rng
    role = a.role
    try:
        if role == "farm" or role == "new_user_onboarding":
            await _sleep(stop, rng.uniform(1.0, 3.0) if role == "farm" else rng.uniform(5.0, 20.0))
            if stop.is_set():
                return
            kind = ClientKind.mobile if role == "new_user_onboarding" else ClientKind.sdk
            if await pop.act(a, pop.join(a, kind)) is None and a.account is None:
                return
        if role == "normal":
            await chat(pop, a, stop)
        elif role == "hijacked":
            takeover = time.monotonic() + rng.uniform(2.0, 6.0)
            await chat(pop, a, stop, until=takeover)
            known = [pop.agents[i] for i in a.contacts]
            await spam_to(pop, a, stop, 1.0, known + pop.strangers(a, 200))
        elif role == "blaster":
            await _sleep(stop, rng.uniform(0.5, 3.0))
            await spam_to(pop, a, stop, 0.25, pop.strangers(a, 400))
        elif role == "slow_drip":
            await _sleep(stop, rng.uniform(1.0, 4.0))
            await spam_to(pop, a, stop, 3.0, pop.strangers(a, 400))
        elif role == "farm":
            await spam_to(pop, a, stop, 1.5, pop.strangers(a, 400))
        elif role == "ring":
            await _ring(pop, a, stop)
        elif role == "conversational_scam":
            await _sleep(stop, rng.uniform(1.0, 4.0))
            await spam_to(pop, a, stop, 3.0, pop.strangers(a, 400))
        elif role == "group_spam":
            await _group_spam(pop, a, stop)
        elif role == "small_business":
            await _business(pop, a, stop)
        elif role == "teacher":
            await _teacher(pop, a, stop)
        elif role == "community_admin":
            await _admin(pop, a, stop)
        elif role == "new_user_onboarding":
            await _onboard(pop, a, stop)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("live %s %s stopped", role, a.account)


async def _ring(pop: Population, a: Agent, stop: asyncio.Event) -> None:
    rng = pop.rng
    if not pop.ring_queue:
        pop.ring_queue = [t.index for t in pop.strangers(a, 300)]
    mates = [m for m in pop.agents if m.role == "ring" and m is not a and m.account]
    for m in mates:
        await pop.act(a, a.client.add_contact(m.account))  # type: ignore[union-attr]
        a.contacts.add(m.index)
    await _sleep(stop, rng.uniform(1.0, 4.0))
    while not stop.is_set() and a.usable:
        if mates and rng.random() < 0.15:
            await pop.send(a, rng.choice(mates))  # chatter among members
        target = pop.next_ring_target()
        if target is None:
            return
        await pop.send(a, target, spam=True)
        if await _sleep(stop, rng.uniform(0.8, 2.0)):
            return


async def _group_spam(pop: Population, a: Agent, stop: asyncio.Event) -> None:
    rng = pop.rng
    await _sleep(stop, rng.uniform(1.0, 4.0))
    while not stop.is_set() and a.usable:
        members = pop.strangers(a, 15)
        gid = await pop.act(a, a.client.create_group([m.account for m in members]))  # type: ignore[union-attr]
        if gid is None:
            return
        for _ in range(5):
            if not a.usable:
                return
            if a.account not in pop.result.first_spam_ms:
                pop.result.first_spam_ms[a.account] = int(time.time() * 1000)  # type: ignore[index]
            mid = await pop.act(a, a.client.send_group(gid, os.urandom(rng.randint(80, 300))))  # type: ignore[union-attr]
            if mid is not None:
                pop.result.sent += 1
            if await _sleep(stop, rng.uniform(1.0, 2.5)):
                return


async def _business(pop: Population, a: Agent, stop: asyncio.Event) -> None:
    """Answers everyone (inbox); every ~30 s a promotion to a third of its customers."""
    rng = pop.rng
    while not stop.is_set() and a.usable:
        if await _sleep(stop, rng.uniform(20.0, 40.0)):
            return
        customers = [pop.agents[i] for i in a.contacts]
        for c in rng.sample(customers, len(customers) // 3):
            await pop.send(a, c)
            await _sleep(stop, rng.uniform(0.1, 0.4))


async def _teacher(pop: Population, a: Agent, stop: asyncio.Event) -> None:
    """Adds 40 parents within seconds and writes to each; again every ~40 s; a class group."""
    rng = pop.rng
    await _sleep(stop, rng.uniform(4.0, 12.0))
    n = pop.scenario.hard_cases.teacher.parents
    parents = pop.strangers(a, n)
    for p in parents:
        if rng.random() < pop.scenario.hard_cases.teacher.add_contacts_first:
            await pop.act(a, a.client.add_contact(p.account))  # type: ignore[union-attr]
            a.contacts.add(p.index)
    gid = await pop.act(a, a.client.create_group([p.account for p in parents]))  # type: ignore[union-attr]
    while not stop.is_set() and a.usable:
        for p in parents:
            await pop.send(a, p)
            p.turns[a.index] = rng.randint(1, 3)
            await _sleep(stop, rng.uniform(0.1, 0.4))
        if gid is not None:
            await pop.act(a, a.client.send_group(gid, os.urandom(120)))  # type: ignore[union-attr]
        if await _sleep(stop, rng.uniform(30.0, 50.0)):
            return


async def _admin(pop: Population, a: Agent, stop: asyncio.Event) -> None:
    """A big group with many strangers; welcomes some directly; posts announcements."""
    rng = pop.rng
    await _sleep(stop, rng.uniform(2.0, 10.0))
    members = [pop.agents[i] for i in a.contacts] + pop.strangers(a, 20)
    gid = await pop.act(a, a.client.create_group([m.account for m in members]))  # type: ignore[union-attr]
    for m in members:
        if m.index not in a.contacts and rng.random() < 0.3:
            await pop.send(a, m)
    while not stop.is_set() and a.usable and gid is not None:
        await pop.act(a, a.client.send_group(gid, os.urandom(rng.randint(40, 400))))  # type: ignore[union-attr]
        speaker = rng.choice(members)
        if speaker.usable and rng.random() < 0.7:
            await pop.act(speaker, speaker.client.send_group(gid, os.urandom(60)))  # type: ignore[union-attr]
        if await _sleep(stop, rng.uniform(5.0, 12.0)):
            return


async def _onboard(pop: Population, a: Agent, stop: asyncio.Event) -> None:
    """A newcomer imports an address book, greets friends, then lives normally."""
    rng = pop.rng
    friends = pop.strangers(a, 20)
    for f in friends:
        await pop.act(a, a.client.add_contact(f.account))  # type: ignore[union-attr]
        a.contacts.add(f.index)
        f.contacts.add(a.index)
    for f in rng.sample(friends, min(8, len(friends))):
        f.turns[a.index] = rng.randint(2, 5)
        await pop.send(a, f)
    await chat(pop, a, stop)


# -- reactions ------------------------------------------------------------------------------
async def inbox_loop(pop: Population, a: Agent, stop: asyncio.Event) -> None:
    """Read what arrives and react like a person (or a scammer) would."""
    while a.client is None and not stop.is_set():
        await _sleep(stop, 0.5)
    if a.client is None:
        return
    while not stop.is_set():
        try:
            r = await asyncio.wait_for(a.client.inbox.get(), timeout=1.0)
        except TimeoutError:
            continue
        a.inbound.setdefault(r.sender, []).append(r.message_id)
        sender = pop.by_account.get(r.sender)
        if sender is None:
            continue
        task = asyncio.ensure_future(_react(pop, a, sender, r, stop))
        pop.reactions.add(task)
        task.add_done_callback(pop.reactions.discard)


async def _react(pop: Population, a: Agent, sender: Agent, r: Received, stop: asyncio.Event) -> None:
    rng = pop.rng
    try:
        if stop.is_set():
            return
        if a.spammer:
            if a.role == "conversational_scam" and r.group is None:
                await asyncio.sleep(rng.uniform(1.0, 3.0))
                await pop.send(a, sender, spam=True)
            return
        if sender.spammer and (sender.role != "hijacked" or sender.account in pop.result.first_spam_ms):
            if sender.account in a.reacted:
                if sender.role == "conversational_scam" and rng.random() < 0.6:
                    await asyncio.sleep(rng.uniform(1.0, 3.0))
                    await pop.send(a, sender)
                return
            a.reacted.add(sender.account)  # type: ignore[arg-type]
            await asyncio.sleep(rng.uniform(1.0, 5.0))
            spec = next((s for s in pop.scenario.spam if s.strategy == sender.role), None)
            response = (spec.response if spec and spec.response else pop.scenario.response)
            reply_share = spec.reply_share if spec else 0.05
            if rng.random() < reply_share and r.group is None:
                await pop.send(a, sender)
            if rng.random() < response.report_probability:
                ids = a.inbound.get(sender.account, [])[-response.messages_named:]  # type: ignore[arg-type]
                reason = ReasonCode.scam if sender.role in ("hijacked", "conversational_scam") else ReasonCode.spam
                await pop.act(a, a.client.report(sender.account, ids, reason))  # type: ignore[union-attr,arg-type]
            if rng.random() < response.block_probability:
                await pop.act(a, a.client.block(sender.account))  # type: ignore[union-attr,arg-type]
            return
        if r.group is not None:
            return
        if a.role == "small_business":
            await asyncio.sleep(rng.uniform(0.5, 3.0))
            await pop.send(a, sender)
            return
        left = a.turns.get(sender.index)
        if left is None:
            left = a.turns[sender.index] = rng.randint(1, 6)
        if left <= 0 or rng.random() > pop.scenario.population.activity.reply_probability:
            return
        a.turns[sender.index] = left - 1
        sender.turns[a.index] = left - 1
        await asyncio.sleep(rng.uniform(0.5, 4.0))
        await pop.send(a, sender)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("live reaction of %s failed", a.account)


async def brigade(pop: Population, stop: asyncio.Event) -> None:
    """False mass reports against an innocent account, naming ids the relay cannot verify."""
    rng = pop.rng
    if not pop.scenario.brigades or await _sleep(stop, rng.uniform(10.0, 20.0)):
        return
    spec = pop.scenario.brigades[0]
    people = [a for a in pop.agents if a.role == "normal" and a.usable]
    if len(people) < 5:
        return
    target = rng.choice(people)
    assert target.account is not None
    pop.result.brigaded.add(target.account)
    reporters = [p for p in people if p is not target and p.index not in target.contacts]
    for p in rng.sample(reporters, min(spec.reporters, len(reporters))):
        fake = [os.urandom(16).hex() for _ in range(max(1, spec.messages_named))]
        await pop.act(p, p.client.report(target.account, fake, ReasonCode.spam))  # type: ignore[union-attr]
        if rng.random() < spec.block_share:
            await pop.act(p, p.client.block(target.account))  # type: ignore[union-attr]
        if await _sleep(stop, rng.uniform(0.2, 1.5)):
            return
