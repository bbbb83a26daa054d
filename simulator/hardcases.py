"""Legitimate accounts that look like spam from far away — the false bans detection must avoid.

- `small_business`: many customers write first; the shop answers all day and now and then
  sends a promotion to a share of its known customers (a fan-out, with some blocks and reports).
- `teacher`: adds a class's parents (40 by default) and writes to each of them in minutes, plus
  a class group; parents answer.
- `community_admin`: creates large groups, adds many people including ones they do not know,
  welcomes some of them directly, posts announcements; members chat.
- `new_user_onboarding`: a fresh account imports its address book (many contact adds in
  minutes), greets friends who answer, and gets welcomed.
Their ordinary social life (friends, groups) comes from `simulator.normal` like everyone's.
"""

from __future__ import annotations

import numpy as np

from simulator import messages, reactions
from simulator.plan import DAY_MS, HOUR_MS, MIN_MS, Act, Plan, diurnal_times, lognormal
from simulator.population import World
from simulator.scenario import Dist, Diurnal, VictimResponse

WORK_HOURS = Diurnal(peak_hour=14.0, strength=0.9, timezone_spread_h=0.0)
FAST_REPLY = Dist(median=40_000.0, sigma=1.2, max=3 * HOUR_MS)
CUSTOMER_REPLY = Dist(median=180_000.0, sigma=1.0, max=6 * HOUR_MS)


def _people(world: World, count: int, exclude: int) -> np.ndarray:
    pool = world.legit_before(world.start)
    pool = pool[np.array(world.role, dtype=object)[pool] == "normal"]
    pick = world.rng.choice(pool, size=min(count, pool.size), replace=False)
    return pick[pick != exclude]


def _anyone(world: World, count: int) -> np.ndarray:
    """Random ordinary people (with replacement): new customers, strangers."""
    pool = world.legit_before(world.start)
    return pool[world.rng.integers(0, pool.size, count)]


def _span(world: World) -> int:
    return world.end - world.start


def small_business(world: World, plan: Plan, accounts: np.ndarray) -> None:
    spec = world.scenario.hard_cases.small_business
    rng, act = world.rng, world.scenario.population.activity
    days = _span(world) / DAY_MS
    for shop in accounts.tolist():
        customers = _people(world, int(lognormal(rng, spec.customers, 1)[0]), shop)
        # Customers who bought before: they saved the shop, the shop saved most of them.
        past = world.start - (rng.random(customers.size) * 300 * DAY_MS).astype(np.int64)
        past = np.maximum(past, np.array(world.reg_ts)[customers] + MIN_MS)
        plan.add(Act.CONTACT, past, customers, b=shop)
        saved = rng.random(customers.size) < 0.8
        plan.add(Act.CONTACT, past[saved] + 60_000, shop, b=customers[saved])
        # Inquiries: customers write first, the shop answers (business hours).
        n_inq = rng.poisson(lognormal(rng, spec.inquiries_per_day, 1)[0] * days)
        start = diurnal_times(rng, world.start, _span(world), n_inq, WORK_HOURS)
        new = rng.random(n_inq) < spec.new_customer_share
        asker = customers[rng.integers(0, customers.size, n_inq)]
        asker[new] = _anyone(world, int(new.sum()))
        ok = asker != shop
        start, asker = start[ok], asker[ok]
        messages.conversations(world, plan, start, asker, np.full(asker.size, shop), 4.0,
                               rng.random(asker.size) < 0.95, FAST_REPLY, act.message_bytes, 0.15)
        # Promotions: a burst to a share of known customers, over about half an hour.
        n_promo = rng.poisson(spec.promotions_per_day * days)
        for t in diurnal_times(rng, world.start, _span(world), n_promo, WORK_HOURS).tolist():
            reach = customers[saved][rng.random(int(saved.sum())) < spec.promotion_reach]
            ts = t + np.sort((rng.random(reach.size) * 30 * MIN_MS).astype(np.int64))
            keep = ts < world.end
            reach, ts = reach[keep], ts[keep]
            messages.direct(world, plan, ts, np.full(reach.size, shop), reach, act.message_bytes, 0.4)
            response = VictimResponse(block_probability=spec.block_probability,
                                      report_probability=spec.report_probability, messages_named=1)
            reactions.respond(world, plan, np.full(reach.size, shop), reach, ts, np.ones(reach.size, dtype=np.int64),
                              response, spec.reply_share, "spam")


def teacher(world: World, plan: Plan, accounts: np.ndarray) -> None:
    spec = world.scenario.hard_cases.teacher
    rng, act = world.rng, world.scenario.population.activity
    days = _span(world) / DAY_MS
    for t_acc in accounts.tolist():
        comm = world.community[t_acc]
        local = world.random_in_community(np.full(spec.parents * 2, max(comm, 0)))
        parents = np.unique(np.concatenate([local, _people(world, spec.parents, t_acc)]))
        parents = rng.permutation(parents[(parents != t_acc)])[:spec.parents]
        first = world.start + int(rng.uniform(0.05, 0.4) * _span(world))
        added = rng.random(parents.size) < spec.add_contacts_first
        add_ts = first + np.sort((rng.random(parents.size) * 20 * MIN_MS).astype(np.int64))
        plan.add(Act.CONTACT, add_ts[added], t_acc, b=parents[added])
        # Broadcasts: the first right after adding the class, then `broadcasts_per_day`.
        n_more = rng.poisson(spec.broadcasts_per_day * max(days - 0.5, 0))
        more = diurnal_times(rng, first + HOUR_MS, max(world.end - first - HOUR_MS, 1), n_more, WORK_HOURS)
        for k, t0 in enumerate([first + 21 * MIN_MS, *more.tolist()]):
            ts = t0 + np.sort((rng.random(parents.size) * (15 + 15 * (k == 0)) * MIN_MS).astype(np.int64))
            keep = ts < world.end
            init = np.full(int(keep.sum()), t_acc)
            messages.conversations(world, plan, ts[keep], init, parents[keep], 2.5,
                                   rng.random(int(keep.sum())) < spec.reply_share, CUSTOMER_REPLY,
                                   act.message_bytes, 0.1)
        back = rng.random(parents.size) < 0.7
        plan.add(Act.CONTACT, first + 30 * MIN_MS + (rng.random(int(back.sum())) * 6 * HOUR_MS).astype(np.int64),
                 parents[back], b=t_acc)
        if spec.class_group:
            gid = world.new_groups(1)[0]
            g_ts = first + 25 * MIN_MS
            if g_ts < world.end:
                plan.add(Act.GROUP_CREATE, np.array([g_ts]), t_acc, b=gid)
                plan.add(Act.GROUP_ADD, g_ts + 1000 + np.arange(parents.size) * 800, t_acc, b=gid, x=parents)
                n_msg = rng.poisson(6 * days)
                ts = g_ts + HOUR_MS + (rng.random(n_msg) * max(world.end - g_ts - HOUR_MS, 1)).astype(np.int64)
                who = np.where(rng.random(n_msg) < 0.3, t_acc, parents[rng.integers(0, parents.size, n_msg)])
                keep = ts < world.end
                messages.group(world, plan, ts[keep], who[keep], np.full(int(keep.sum()), gid), act.message_bytes, 0.1)


def community_admin(world: World, plan: Plan, accounts: np.ndarray) -> None:
    spec = world.scenario.hard_cases.community_admin
    rng, act = world.rng, world.scenario.population.activity
    days = _span(world) / DAY_MS
    for admin in accounts.tolist():
        for _ in range(spec.groups):
            size = int(lognormal(rng, spec.group_size, 1)[0])
            strangers = rng.random(size) < spec.stranger_share
            comm = world.community[admin]
            friendly = world.random_contact(np.full(size, admin))
            friendly = np.where(friendly >= 0, friendly, world.random_in_community(np.full(size, max(comm, 0))))
            member = np.where(strangers, _anyone(world, size), friendly)
            member = np.unique(member[member != admin])
            gid = world.new_groups(1)[0]
            created = world.start + int(rng.uniform(0.0, 0.5) * _span(world))
            plan.add(Act.GROUP_CREATE, np.array([created]), admin, b=gid)
            # People join over a few hours (the admin adds them as they ask).
            add_ts = created + np.sort((lognormal(rng, Dist(median=40 * MIN_MS, sigma=1.0, max=8 * HOUR_MS),
                                                  member.size)).astype(np.int64))
            keep = add_ts < world.end
            member, add_ts = member[keep], add_ts[keep]
            plan.add(Act.GROUP_ADD, add_ts, admin, b=gid, x=member)
            welcome = rng.random(member.size) < spec.direct_welcomes
            messages.conversations(world, plan, add_ts[welcome] + 30_000, np.full(int(welcome.sum()), admin),
                                   member[welcome], 2.5, rng.random(int(welcome.sum())) < 0.6, FAST_REPLY,
                                   act.message_bytes, 0.0)
            if member.size == 0:
                continue
            n_ann = rng.poisson(spec.announcements_per_day * days)
            n_chat = rng.poisson(spec.member_messages_per_day * days)
            ts = np.concatenate([diurnal_times(rng, created, max(world.end - created, 1), n_ann, act.diurnal),
                                 diurnal_times(rng, created, max(world.end - created, 1), n_chat, act.diurnal)])
            who = np.concatenate([np.full(n_ann, admin), member[rng.integers(0, member.size, n_chat)]])
            ok = ts > created + MIN_MS
            if n_chat:
                joined = np.concatenate([np.full(n_ann, created), add_ts[np.searchsorted(member, who[n_ann:])
                                                                          .clip(0, member.size - 1)]])
                ok &= ts > joined
            messages.group(world, plan, ts[ok], who[ok], np.full(int(ok.sum()), gid), act.message_bytes, 0.15)
            leave = rng.random(member.size) < 0.03
            lt = add_ts[leave] + lognormal(rng, Dist(median=2 * HOUR_MS, sigma=1.0), int(leave.sum())).astype(np.int64)
            fine = lt < world.end
            plan.add(Act.GROUP_REMOVE, lt[fine], member[leave][fine], b=gid, x=member[leave][fine])


def new_user_onboarding(world: World, plan: Plan) -> None:
    spec = world.scenario.hard_cases.new_user_onboarding
    rng, pop = world.rng, world.scenario.population
    act = pop.activity
    if spec.count == 0:
        return
    reg = world.start + (rng.random(spec.count) * _span(world) * 0.7).astype(np.int64)
    accounts = world.alloc("new_user_onboarding", spec.count, 0, reg)
    plan.add(Act.REGISTER, reg, accounts, x=np.array(world.home)[accounts], y=np.array(world.client)[accounts])
    for acc, t_reg in zip(accounts.tolist(), reg.tolist()):
        n = int(lognormal(rng, spec.contacts, 1)[0])
        # The address book: friends who are mostly in one community, some from elsewhere.
        comm = int(rng.integers(0, world.comm_size.size))
        friends = np.unique(np.concatenate([world.random_in_community(np.full(n, comm)),
                                            _people(world, max(1, n // 4), acc)]))[:n]
        friends = friends[friends != acc]
        add_ts = t_reg + 30_000 + np.sort((rng.random(friends.size) * spec.within_minutes * MIN_MS)
                                          .astype(np.int64))
        plan.add(Act.CONTACT, add_ts, acc, b=friends)
        back = rng.random(friends.size) < 0.8
        back_ts = add_ts[back] + lognormal(rng, Dist(median=20 * MIN_MS, sigma=1.2), int(back.sum())).astype(np.int64)
        plan.add(Act.CONTACT, back_ts, friends[back], b=acc)
        greet = rng.random(friends.size) < spec.greet_share
        g_ts = add_ts[greet] + (rng.random(int(greet.sum())) * 40 * MIN_MS).astype(np.int64)
        messages.conversations(world, plan, g_ts, np.full(g_ts.size, acc), friends[greet], 4.0,
                               rng.random(g_ts.size) < spec.reply_probability, FAST_REPLY, act.message_bytes,
                               act.media_share)
        welcome = rng.random(friends.size) < spec.welcomes_share
        w_ts = add_ts[welcome] + lognormal(rng, Dist(median=30 * MIN_MS, sigma=1.0), int(welcome.sum())).astype(
            np.int64)
        messages.conversations(world, plan, w_ts, friends[welcome], np.full(w_ts.size, acc), 3.0,
                               rng.random(w_ts.size) < 0.9, FAST_REPLY, act.message_bytes, act.media_share)
        # Then ordinary life with the new contacts for the rest of the window.
        rest = max(world.end - t_reg - 2 * HOUR_MS, 0)
        k = rng.poisson(lognormal(rng, act.conversations_per_day, 1)[0] * rest / DAY_MS)
        if k and friends.size:
            ts = t_reg + 2 * HOUR_MS + np.sort((rng.random(k) * rest).astype(np.int64))
            mine = rng.random(k) < 0.5
            other = friends[rng.integers(0, friends.size, k)]
            messages.conversations(world, plan, ts, np.where(mine, acc, other), np.where(mine, other, acc),
                                   act.turns_per_conversation, rng.random(k) < act.reply_probability,
                                   act.reply_delay_s, act.message_bytes, act.media_share)


def generate(world: World, plan: Plan, accounts: dict[str, np.ndarray]) -> None:
    """Hard-case behaviour on top of their ordinary lives (already generated with the graph)."""
    small_business(world, plan, accounts.get("small_business", np.zeros(0, dtype=np.int64)))
    teacher(world, plan, accounts.get("teacher", np.zeros(0, dtype=np.int64)))
    community_admin(world, plan, accounts.get("community_admin", np.zeros(0, dtype=np.int64)))
    new_user_onboarding(world, plan)

