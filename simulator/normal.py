"""Ordinary people: conversations with their contacts, group chats, and a little friction.

Activity is heavy-tailed across people (a log-normal conversation rate) and follows the day
in each person's own time zone. Most conversations are with close contacts and get answered;
a few start with someone new (a friend of a friend), usually after adding them as a contact.
"""

from __future__ import annotations

import numpy as np

from simulator import messages
from simulator.plan import DAY_MS, HOUR_MS, MIN_MS, Act, Plan, diurnal_times, lognormal, segment_ids
from simulator.population import World


def conversations(world: World, plan: Plan, accounts: np.ndarray) -> None:
    rng, act = world.rng, world.scenario.population.activity
    days = (world.end - world.start) / DAY_MS
    rate = lognormal(rng, act.conversations_per_day, accounts.size)
    n_conv = rng.poisson(rate * days)
    init = np.repeat(accounts, n_conv)
    tz = np.array(world.tz)[init]
    start = diurnal_times(rng, world.start, world.end - world.start, init.size, act.diurnal, tz)
    reg = np.array(world.reg_ts)

    partner = world.random_contact(init, skew=2.0)  # close friends get most conversations
    stranger = (rng.random(init.size) < act.stranger_share) | (partner < 0)
    # Someone new: a friend of a friend, else anyone in the community.
    via = world.random_contact(init[stranger])
    fof = np.where(via >= 0, world.random_contact(np.maximum(via, 0)), -1)
    comm = np.array(world.community)[init[stranger]]
    anyone = world.random_in_community(np.maximum(comm, 0))
    partner[stranger] = np.where(fof >= 0, fof, anyone)
    ok = (partner >= 0) & (partner != init) & (start > reg[init] + MIN_MS)
    ok &= start > reg[np.maximum(partner, 0)] + MIN_MS
    init, partner, start, stranger = init[ok], partner[ok], start[ok], stranger[ok]

    adds = stranger & (rng.random(init.size) < act.add_contact_before_stranger)
    plan.add(Act.CONTACT, start[adds] - (5_000 + rng.integers(0, 60_000, int(adds.sum()))), init[adds],
             b=partner[adds])
    replied = rng.random(init.size) < act.reply_probability
    messages.conversations(world, plan, start, init, partner, act.turns_per_conversation, replied, act.reply_delay_s,
                           act.message_bytes, act.media_share)
    # A new acquaintance who answered is often added back.
    back = stranger & replied & (rng.random(init.size) < 0.6)
    plan.add(Act.CONTACT, start[back] + rng.integers(MIN_MS, 2 * HOUR_MS, int(back.sum())), partner[back],
             b=init[back])


def groups(world: World, plan: Plan, accounts: np.ndarray) -> None:
    """Group chats among friends and community members, mostly created before the window."""
    rng, pop = world.rng, world.scenario.population
    spec = pop.groups
    n = round(spec.per_account * accounts.size)
    if n == 0:
        return
    reg = np.array(world.reg_ts)
    owner = accounts[rng.integers(0, accounts.size, n)]
    gid = world.new_groups(n)
    lifetime = np.maximum(world.start - reg[owner], HOUR_MS)
    in_window = rng.random(n) < 0.05
    created = np.where(in_window, world.start + (rng.random(n) * (world.end - world.start) * 0.8).astype(np.int64),
                       reg[owner] + (rng.random(n) * lifetime * 0.9).astype(np.int64))
    created = np.maximum(created, reg[owner] + MIN_MS)
    size = np.maximum(3, lognormal(rng, spec.size, n).astype(np.int64))
    slot_g = segment_ids(size - 1)
    slot_owner = owner[slot_g]
    friend = world.random_contact(slot_owner)
    comm = np.maximum(np.array(world.community)[slot_owner], 0)
    member = np.where((friend >= 0) & (rng.random(slot_g.size) < 0.75), friend, world.random_in_community(comm))
    key = np.unique(slot_g * (1 << 31) + member)
    slot_g, member = key >> 31, key & ((1 << 31) - 1)
    keep = (member != owner[slot_g]) & (reg[member] < created[slot_g])
    slot_g, member = slot_g[keep], member[keep]

    plan.add(Act.GROUP_CREATE, created, owner, b=gid)
    add_ts = created[slot_g] + 1 + rng.integers(0, 30_000, slot_g.size)
    plan.add(Act.GROUP_ADD, add_ts, owner[slot_g], b=gid[slot_g], x=member)

    # Messages: per-group rate, senders among the group's people (owner included).
    days = (world.end - world.start) / DAY_MS
    rate = lognormal(rng, spec.messages_per_day, n)
    counts = rng.poisson(rate * days)
    msg_g = segment_ids(counts)
    ts = diurnal_times(rng, world.start, world.end - world.start, msg_g.size, pop.activity.diurnal)
    everyone_g = np.concatenate([np.arange(n), slot_g])
    order = np.argsort(everyone_g, kind="stable")
    people = np.concatenate([owner, member])[order]
    people_count = np.bincount(everyone_g, minlength=n)
    people_start = np.cumsum(people_count) - people_count
    pick = people_start[msg_g] + (rng.random(msg_g.size) * people_count[msg_g]).astype(np.int64)
    sender = people[pick]
    ok = ts > created[msg_g] + MIN_MS
    messages.group(world, plan, ts[ok], sender[ok], gid[msg_g[ok]], pop.activity.message_bytes,
                   pop.activity.media_share)


def noise(world: World, plan: Plan, accounts: np.ndarray) -> None:
    """Blocks and reports among legitimate users: the false-positive floor detection must live with."""
    rng, pop = world.rng, world.scenario.population
    days = (world.end - world.start) / DAY_MS
    for kind, per_day in ((Act.BLOCK, pop.noise.blocks_per_account_day),
                          (Act.REPORT, pop.noise.reports_per_account_day)):
        n = rng.poisson(per_day * accounts.size * days)
        if n == 0:
            continue
        actor = accounts[rng.integers(0, accounts.size, n)]
        target = world.random_contact(actor)
        ok = (target >= 0)
        actor, target = actor[ok], target[ok]
        ts = diurnal_times(rng, world.start, world.end - world.start, actor.size, pop.activity.diurnal)
        if kind == Act.BLOCK:
            plan.add(Act.BLOCK, ts, actor, b=target)
        else:
            reason = rng.choice(np.array([2, 3, 4]), actor.size)  # harassment, impersonation, other_policy
            plan.add(Act.REPORT, ts, actor, b=target, x=1 + rng.poisson(0.5, actor.size), y=reason)


def generate(world: World, plan: Plan, accounts: np.ndarray) -> None:
    """Everything ordinary the given accounts do during the window."""
    conversations(world, plan, accounts)
    groups(world, plan, accounts)
    noise(world, plan, accounts)
