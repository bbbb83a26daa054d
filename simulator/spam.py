"""Spam strategies, each a function of its parameters (see `simulator.scenario`).

They share one campaign engine: an account spams at its own rate during its own window,
mostly to strangers drawn from the legitimate population, sometimes several messages per
target, sometimes adding the target as a contact first (which hides `first_contact`), reusing
a few media blobs. Victims then react (`simulator.reactions`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator import messages, reactions
from simulator.plan import (
    HOUR_MS,
    MIN_MS,
    Act,
    Plan,
    lognormal,
    segment_ids,
    segment_positions,
    uniform,
    weighted_choice,
)
from simulator.population import World
from simulator.scenario import (
    CLIENT_KINDS,
    Blaster,
    Dist,
    Farm,
    Hijacked,
    SlowDrip,
    _Spam,
)

DAY_MS = 24 * HOUR_MS


@dataclass
class Campaign:
    """Distinct (spammer, victim) pairs reached, for reactions."""

    spammer: np.ndarray
    victim: np.ndarray
    first_ts: np.ndarray
    n_msgs: np.ndarray


def window_times(world: World, t0: np.ndarray, dur: np.ndarray, counts: np.ndarray, diurnal: bool) -> np.ndarray:
    """`counts[i]` times in [t0[i], t0[i]+dur[i]), sorted per account, optionally following the day."""
    rng = world.rng
    owner = segment_ids(counts)
    u = rng.random(owner.size)
    if diurnal:
        # Rejection on the owner's own window: draw many, keep the accepted in order.
        spec = world.scenario.population.activity.diurnal
        ts = t0[owner] + (u * dur[owner]).astype(np.int64)
        for _ in range(8):
            hour = (ts / HOUR_MS) % 24.0
            dens = 1.0 + spec.strength * np.cos(2 * np.pi * (hour - spec.peak_hour) / 24.0)
            redo = rng.random(ts.size) * (1.0 + spec.strength) > dens
            if not redo.any():
                break
            ts[redo] = t0[owner[redo]] + (rng.random(int(redo.sum())) * dur[owner[redo]]).astype(np.int64)
    else:
        ts = t0[owner] + (u * dur[owner]).astype(np.int64)
    order = np.lexsort((ts, owner))
    return ts[order]


def new_spammers(world: World, plan: Plan, spec: _Spam, role: str, count: int, spam_start: np.ndarray,
                 home: np.ndarray | None = None, reg_ts: np.ndarray | None = None) -> np.ndarray:
    """Allocate and register spam accounts `age_days` before they start spamming."""
    rng = world.rng
    if reg_ts is None:
        age = uniform(rng, spec.age_days, count) * DAY_MS
        fresh = age < 5 * MIN_MS
        age = np.where(fresh, lognormal(rng, Dist(median=3 * MIN_MS, sigma=0.6, max=30 * MIN_MS), count), age)
        reg_ts = (spam_start - age).astype(np.int64)
    client = weighted_choice(rng, spec.client_kinds, CLIENT_KINDS, count)
    idx = world.alloc(role, count, 1, reg_ts, client=client, home=home, mobile=home)
    plan.add(Act.REGISTER, reg_ts, idx, x=np.array(world.home)[idx], y=client)
    return idx


def campaign(world: World, plan: Plan, spec: _Spam, accounts: np.ndarray, t0: np.ndarray, dur_ms: np.ndarray,
             victims: np.ndarray, known: list[np.ndarray] | None = None, rate_scale: float = 1.0,
             emit: bool = True) -> Campaign:
    """Messages from each account to its targets; returns the pairs reached."""
    rng = world.rng
    n = accounts.size
    rate = lognormal(rng, spec.rate_per_hour, n) * rate_scale
    end = np.minimum(t0 + dur_ms, world.end)
    dur_ms = np.maximum(end - t0, 0)
    counts = rng.poisson(rate * dur_ms / HOUR_MS)
    counts = np.where(dur_ms > 0, np.maximum(counts, 1), 0)
    ts = window_times(world, t0, dur_ms, counts, spec.follow_diurnal)
    owner = segment_ids(counts)
    k = segment_positions(counts)
    # Consecutive messages go to the same target `messages_per_target` times on average.
    mpt = np.maximum(1.0, spec.messages_per_target * np.exp(rng.normal(0, 0.3, n)))
    slot = (k / mpt[owner]).astype(np.int64)
    key = owner * (1 << 31) + slot
    uniq, inv = np.unique(key, return_inverse=True)
    t_owner = uniq >> 31
    nt = uniq.size
    target = victims[rng.integers(0, victims.size, nt)] if victims.size else np.zeros(nt, dtype=np.int64)
    # Targets the spammer already knows: its contacts (hijacked) or a bought list it imported.
    is_known = rng.random(nt) < (1.0 - spec.stranger_share)
    if known is not None:
        for i in np.flatnonzero(is_known):
            pool = known[t_owner[i]]
            if pool.size:
                target[i] = pool[rng.integers(0, pool.size)]
            else:
                is_known[i] = False
    else:
        import_ts = np.array(world.reg_ts)[accounts[t_owner[is_known]]] + 60_000
        plan.add(Act.CONTACT, import_ts + np.arange(int(is_known.sum())) % 50 * 300, accounts[t_owner[is_known]],
                 b=target[is_known])
    sender = accounts[owner]
    recipient = target[inv]
    # Evasion: add a stranger as a contact just before the first message.
    first_of_slot = np.ones(ts.size, dtype=bool)
    first_of_slot[1:] = key[1:] != key[:-1]
    adds = first_of_slot & ~is_known[inv] & (rng.random(ts.size) < spec.add_contact_share)
    plan.add(Act.CONTACT, ts[adds] - 3000, sender[adds], b=recipient[adds])
    # Media spam reuses a handful of blobs per account.
    media = rng.random(ts.size) < spec.media_share
    blob_base = world.new_blobs(3 * n)
    blob = np.where(media, blob_base[np.minimum(owner * 3 + rng.integers(0, 3, ts.size), blob_base.size - 1)]
                    if blob_base.size else -1, -1)
    if emit:
        messages.direct(world, plan, ts, sender, recipient, spec.message_bytes, spec.media_share, spam=1,
                        blob=blob.astype(np.int64))
    # Pairs reached (first message time and message count per pair).
    pair = sender * (1 << 31) + recipient
    upair, first_idx, n_msgs = np.unique(pair, return_index=True, return_counts=True)
    return Campaign(upair >> 31, upair & ((1 << 31) - 1), ts[first_idx], n_msgs)


def _start(world: World, spec: _Spam, count: int) -> tuple[np.ndarray, np.ndarray]:
    t0 = world.start + (uniform(world.rng, spec.start_h, count) * HOUR_MS).astype(np.int64)
    dur = (uniform(world.rng, spec.duration_h, count) * HOUR_MS).astype(np.int64)
    return t0, dur


def _react(world: World, plan: Plan, spec: _Spam, c: Campaign) -> None:
    reactions.respond(world, plan, c.spammer, c.victim, c.first_ts, c.n_msgs, spec.response or
                      world.scenario.response, spec.reply_share, spec.reason)


def blaster(world: World, plan: Plan, spec: Blaster) -> None:
    t0, dur = _start(world, spec, spec.count)
    acc = new_spammers(world, plan, spec, "blaster", spec.count, t0)
    _react(world, plan, spec, campaign(world, plan, spec, acc, t0, dur, world.legit_before(world.start)))


def slow_drip(world: World, plan: Plan, spec: SlowDrip) -> None:
    t0, dur = _start(world, spec, spec.count)
    acc = new_spammers(world, plan, spec, "slow_drip", spec.count, t0)
    _react(world, plan, spec, campaign(world, plan, spec, acc, t0, dur, world.legit_before(world.start)))


def farm(world: World, plan: Plan, spec: Farm) -> None:
    """Each farm registers its accounts in a burst from one /24, then they all spam."""
    rng = world.rng
    for _ in range(spec.farms):
        n = spec.accounts_per_farm
        bucket = world.new_bucket()
        burst_start = world.start + int(uniform(rng, spec.start_h, 1)[0] * HOUR_MS)
        age = int(uniform(rng, spec.age_days, 1)[0] * DAY_MS)
        reg = burst_start - age + np.sort((rng.random(n) * spec.burst_minutes * MIN_MS).astype(np.int64))
        t0 = np.maximum(reg + age + lognormal(rng, Dist(median=2 * MIN_MS, sigma=0.8), n).astype(np.int64),
                        world.start)
        _, dur = _start(world, spec, n)
        acc = new_spammers(world, plan, spec, "farm", n, t0, home=np.full(n, bucket), reg_ts=reg)
        _react(world, plan, spec, campaign(world, plan, spec, acc, t0, dur, world.legit_before(world.start)))


def hijacked(world: World, plan: Plan, spec: Hijacked, accounts: np.ndarray) -> None:
    """`accounts` already live normal lives (they were allocated with the graph); now they turn."""
    t0, dur = _start(world, spec, accounts.size)
    for account, t in zip(accounts.tolist(), t0.tolist()):
        world.takeover[account] = (int(t) - 5 * MIN_MS, world.new_bucket() if spec.new_network else
                                   int(world.home[account]))
    known = [world.contacts_of(a) for a in accounts.tolist()]
    # Contacts first: the hijacker works through the victim's address book.
    mixed = spec.model_copy(update={"stranger_share": 1.0 - spec.contact_target_share})
    _react(world, plan, spec, campaign(world, plan, mixed, accounts, t0, dur, world.legit_before(world.start),
                                       known=known))
