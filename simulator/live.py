"""Live mode: a scenario's population as real SDK clients talking E2E-encrypted through a relay.

    result = await run_live(scenario, "127.0.0.1", 7400, duration_s=60, users=200)

One asyncio loop drives every client. Each account connects from its own 127.x.y.z address so
its `net_bucket` is real (a farm's accounts share one /24). Time is compressed: people chat
every few seconds, spammers start within the first ~10 s and spam fast enough for a detector to
catch them in seconds. The relay sees only ciphertext; what it emits is exactly what detection
consumes in production. The result keeps the ground truth (roles, labels, first spam times)
and the delivery books (acked ids per sender, received ids per recipient) so the caller can
check that nothing was lost: undelivered = acked − received − withheld.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Protocol

from sealguard.contracts import ClientKind
from simulator.errors import SimulatorError
from simulator.live_behaviour import Agent, Population, behave, brigade, inbox_loop
from simulator.scenario import STRATEGIES, Scenario

log = logging.getLogger(__name__)

LEGIT_HARD = ("small_business", "teacher", "community_admin", "new_user_onboarding")


class StopFlag(Protocol):
    """asyncio.Event and threading.Event both fit."""

    def is_set(self) -> bool: ...


class LiveError(SimulatorError):
    """The live population could not be started (e.g. the relay is unreachable)."""


@dataclass
class LiveResult:
    """Ground truth and delivery books of one live run (account ids are the relay's)."""

    roles: dict[str, str] = field(default_factory=dict)         # account -> role
    labels: dict[str, int] = field(default_factory=dict)        # account -> 1 spam / 0 legitimate
    first_spam_ms: dict[str, int] = field(default_factory=dict)  # spammer -> ms of its first spam send
    acked_ids: dict[str, set[str]] = field(default_factory=dict)     # sender -> message ids the relay acked
    received_ids: dict[str, set[str]] = field(default_factory=dict)  # recipient -> message ids received
    bans: dict[str, tuple[str, str]] = field(default_factory=dict)   # account -> (decision_id, reason_code)
    brigaded: set[str] = field(default_factory=set)
    sent: int = 0
    refused: int = 0
    started_ms: int = 0
    seconds: float = 0.0

    @property
    def accounts(self) -> dict[str, str]:
        return self.roles

    @property
    def acked(self) -> int:
        return sum(len(v) for v in self.acked_ids.values())

    @property
    def received(self) -> int:
        return sum(len(v) for v in self.received_ids.values())

    def by_role(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for account, role in self.roles.items():
            out.setdefault(role, []).append(account)
        return out

    def undelivered(self) -> set[str]:
        """Acked ids nobody received (subtract what the relay withheld from banned senders)."""
        acked = set().union(*self.acked_ids.values()) if self.acked_ids else set()
        received = set().union(*self.received_ids.values()) if self.received_ids else set()
        return acked - received

    def spammers(self) -> list[str]:
        return [a for a, label in self.labels.items() if label == 1]

    def figures(self) -> dict[str, object]:
        spam = self.spammers()
        return {"accounts": len(self.roles), "spammers": len(spam), "sent": self.sent, "acked": self.acked,
                "received": self.received, "refused": self.refused, "banned": len(self.bans),
                "spammers_banned": sum(1 for a in spam if a in self.bans),
                "legit_banned": sum(1 for a in self.bans if self.labels.get(a) == 0)}


def _mix(scenario: Scenario, users: int, spam_share: float | None) -> list[str]:
    """Roles of `users` live accounts, in the scenario's proportions (every present kind ≥ 1)."""
    hard = scenario.hard_cases
    hard_roles = [r for r in LEGIT_HARD if getattr(hard, r).count > 0]
    strategies = [s for s in STRATEGIES if any(x.strategy == s and x.count > 0 for x in scenario.spam)]
    total = scenario.population.normal + sum(getattr(hard, r).count for r in LEGIT_HARD) + scenario.spammers
    share = spam_share if spam_share is not None else scenario.spammers / max(total, 1)
    n_spam = max(len(strategies) if share > 0 else 0, round(users * share)) if strategies else 0
    weights = {s: sum(x.count for x in scenario.spam if x.strategy == s) for s in strategies}
    spam_roles: list[str] = []
    for s in strategies:
        spam_roles += [s] * max(1, round(n_spam * weights[s] / max(sum(weights.values()), 1)))
    n_hard = {r: max(1, min(getattr(hard, r).count, users // 50)) for r in hard_roles}
    roles = [r for r, c in n_hard.items() for _ in range(c)] + spam_roles
    if users < 4:
        raise LiveError(f"live mode needs at least 4 users, got {users}")
    # Small runs: ordinary people stay the majority; hard cases go first, then spam beyond one each.
    while roles and users - len(roles) < users // 2:
        hard_left = [i for i, r in enumerate(roles) if r in LEGIT_HARD]
        roles.pop(hard_left[-1] if hard_left else -1)
    return ["normal"] * (users - len(roles)) + roles


def _address(i: int, farm: int | None) -> str:
    """Distinct source addresses; a farm's accounts share 127.250.<farm>.x."""
    if farm is not None:
        return f"127.250.{farm}.{i % 250 + 1}"
    return f"127.{10 + i // 250}.{i % 250}.{(i * 7) % 250 + 1}"


async def run_live(scenario: Scenario, relay_host: str, relay_port: int, duration_s: float | None = 60.0,
                   users: int | None = None, spam_share: float | None = None,
                   stop_event: StopFlag | None = None, seed: int | None = None,
                   drain_s: float = 5.0, wave_s: float | None = 60.0) -> LiveResult:
    """Run the live population until `duration_s` passes or `stop_event` is set (None: until set).

    `stop_event` may be an asyncio.Event or a threading.Event (for a caller in another thread).
    After the traffic stops, clients stay connected for up to `drain_s` seconds so messages in
    flight arrive (it ends early once nothing is outstanding or nothing moves for 3 s). Every
    `wave_s` seconds a fresh wave of spam accounts registers (as spam never stops in real life;
    None or 0: no waves).
    """
    rng = random.Random(scenario.seed if seed is None else seed)
    if users is None:
        users = min(200, scenario.population.normal + scenario.spammers +
                    sum(getattr(scenario.hard_cases, r).count for r in LEGIT_HARD))
    roles = _mix(scenario, users, spam_share)
    rng.shuffle(roles)
    result = LiveResult(started_ms=int(time.time() * 1000))
    pop = Population(scenario, rng, result, relay_host, relay_port)
    stop = asyncio.Event()  # stops the traffic; the external flag is watched into it
    started = time.monotonic()

    farm_of: dict[int, int] = {}
    per_farm = next((s.accounts_per_farm for s in scenario.spam if s.strategy == "farm"), 10)
    farm_members = [i for i, r in enumerate(roles) if r == "farm"]
    for k, i in enumerate(farm_members):
        farm_of[i] = k // max(per_farm, 1)
    agents = [Agent(i, role, _address(i, farm_of.get(i)), farm_of.get(i)) for i, role in enumerate(roles)]
    pop.agents = agents

    # Everybody except late registrants (farms, newcomers) registers now, in parallel batches.
    early = [a for a in agents if a.role not in ("farm", "new_user_onboarding")]
    try:
        for k in range(0, len(early), 50):
            await asyncio.gather(*(pop.join(a, _kind(a.role, rng)) for a in early[k:k + 50]))
    except OSError as exc:
        await pop.close()
        raise LiveError(f"cannot reach the relay at {relay_host}:{relay_port}: {exc}") from None
    registered = time.monotonic() - started
    # Spammers do not wait for the social graph (they target strangers); everyone else does.
    first = [a for a in agents if a.spammer and a.role != "hijacked"]
    tasks = [asyncio.create_task(inbox_loop(pop, a, stop)) for a in agents]
    tasks += [asyncio.create_task(behave(pop, a, stop, relay_host, relay_port)) for a in first]
    await pop.befriend(relay_host, relay_port)
    log.info("live: %d accounts registered in %.1fs, befriended in %.1fs (%s)", len(early), registered,
             time.monotonic() - started - registered,
             ", ".join(f"{r}={roles.count(r)}" for r in sorted(set(roles))))
    tasks += [asyncio.create_task(behave(pop, a, stop, relay_host, relay_port)) for a in agents if a not in first]
    tasks.append(asyncio.create_task(brigade(pop, stop)))
    if wave_s and wave_s > 0:
        tasks.append(asyncio.create_task(_waves(pop, stop, tasks, wave_s, relay_host, relay_port)))
    watcher = asyncio.create_task(_watch(stop_event, stop))
    try:
        timeout = None if duration_s is None or duration_s <= 0 else \
            max(0.0, duration_s - (time.monotonic() - started))
        try:
            await asyncio.wait_for(stop.wait(), timeout=timeout)
        except TimeoutError:
            pass
    finally:
        stop.set()
        pop.halted = True
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not (stop_event is not None and stop_event.is_set()):
            await _drain(pop, drain_s)
        watcher.cancel()
        pop.collect()
        await pop.close()
    result.seconds = time.monotonic() - started
    log.info("live: %s", " ".join(f"{k}={v}" for k, v in result.figures().items()))
    return result


async def _waves(pop: Population, stop: asyncio.Event, tasks: list[asyncio.Task[None]], wave_s: float,
                 host: str, port: int) -> None:
    """New spam accounts every `wave_s` seconds, in the strategies the run already has."""
    strategies = sorted({a.role for a in pop.agents if a.spammer and a.role not in ("hijacked", "ring")})
    if not strategies:
        return
    size = max(2, len([a for a in pop.agents if a.spammer]) // 3)
    wave = 0
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=wave_s)
            return
        except TimeoutError:
            pass
        wave += 1
        farm = 100 + wave % 150
        newcomers = []
        for k in range(size):
            role = strategies[(wave + k) % len(strategies)]
            i = len(pop.agents)
            agent = Agent(i, role, _address(i, farm if role == "farm" else None), farm if role == "farm" else None)
            pop.agents.append(agent)
            newcomers.append(agent)
            if role != "farm":
                await pop.act(agent, pop.join(agent, ClientKind.mobile))
        log.info("live: spam wave %d: %s", wave, ", ".join(a.role for a in newcomers))
        for agent in newcomers:
            tasks.append(asyncio.create_task(inbox_loop(pop, agent, stop)))
            tasks.append(asyncio.create_task(behave(pop, agent, stop, host, port)))


async def _watch(flag: StopFlag | None, stop: asyncio.Event) -> None:
    while flag is not None and not stop.is_set():
        if flag.is_set():
            stop.set()
            return
        await asyncio.sleep(0.1)


async def _drain(pop: Population, drain_s: float) -> None:
    """Wait until what was acked has arrived, nothing moves any more, or `drain_s` passes."""
    deadline = time.monotonic() + drain_s
    last, still_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        acked = set().union(*(a.client.acked_ids for a in pop.agents if a.client is not None))
        received = set().union(*(a.client.received_ids for a in pop.agents if a.client is not None))
        outstanding = len(acked - received)
        if outstanding == 0:
            return
        if outstanding != last:
            last, still_since = outstanding, time.monotonic()
        elif time.monotonic() - still_since > 3.0:
            return
        await asyncio.sleep(0.25)


def _kind(role: str, rng: random.Random) -> ClientKind:
    if role in STRATEGIES:
        return rng.choice([ClientKind.mobile, ClientKind.mobile, ClientKind.sdk, ClientKind.desktop])
    return ClientKind.mobile if rng.random() < 0.85 else ClientKind.desktop


__all__ = ["LiveError", "LiveResult", "StopFlag", "run_live"]
