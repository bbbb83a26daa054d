"""Spam strategies that go beyond one account blasting: rings, conversations, groups.

- `ring`: accounts that know each other (contacts, chatter among themselves to look engaged)
  work one shared target list, rotating senders so each account's own volume stays small
  while every target still hears from several of them.
- `conversational_scam`: opens with small talk to strangers, many of whom answer; the pitch
  comes after a few turns, and reports (if any) come after the pitch.
- `group_spam`: creates groups, fills them with strangers, posts; members leave, block, report.
"""

from __future__ import annotations

import numpy as np

from simulator import messages, reactions
from simulator.plan import HOUR_MS, MIN_MS, Act, Plan, lognormal, segment_ids, segment_positions, uniform
from simulator.population import World
from simulator.scenario import ConversationalScam, Dist, GroupSpam, Ring
from simulator.spam import Campaign, new_spammers, window_times


def _pairs(sender: np.ndarray, recipient: np.ndarray, ts: np.ndarray) -> Campaign:
    pair = sender * (1 << 31) + recipient
    order = np.lexsort((ts, pair))
    upair, first_idx, n_msgs = np.unique(pair[order], return_index=True, return_counts=True)
    return Campaign(upair >> 31, upair & ((1 << 31) - 1), ts[order][first_idx], n_msgs)


def ring(world: World, plan: Plan, spec: Ring) -> None:
    rng = world.rng
    victims_all = world.legit_before(world.start)
    for _ in range(spec.rings):
        size = spec.ring_size
        t0_ring = world.start + int(uniform(rng, spec.start_h, 1)[0] * HOUR_MS)
        t0 = t0_ring + (rng.random(size) * 20 * MIN_MS).astype(np.int64)
        dur = (uniform(rng, spec.duration_h, size) * HOUR_MS).astype(np.int64)
        acc = new_spammers(world, plan, spec, "ring", size, t0)
        reg = np.array(world.reg_ts)[acc]
        # They know each other: contacts among members, made right after registering.
        a, b = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
        off = a != b
        known_ts = np.maximum(reg[a[off]], reg[b[off]]) + rng.integers(MIN_MS, 30 * MIN_MS, int(off.sum()))
        plan.add(Act.CONTACT, known_ts, acc[a[off]], b=acc[b[off]])
        # Chatter among members: answered conversations, so their reply share looks human.
        days_h = np.minimum(dur, world.end - t0) / HOUR_MS
        n_chat = rng.poisson(spec.intra_ring_messages_per_hour * np.maximum(days_h, 0) / 3.0)
        init = np.repeat(np.arange(size), n_chat)
        if init.size:
            partner = (init + rng.integers(1, size, init.size)) % size
            start = t0[init] + (rng.random(init.size) * np.maximum(dur[init], 1)).astype(np.int64)
            start = np.maximum(start, known_ts.max() + MIN_MS)
            messages.conversations(world, plan, start, acc[init], acc[partner], 3.0, np.ones(init.size, dtype=bool),
                                   Dist(median=60_000.0, sigma=1.0, max=3_600_000.0), spec.message_bytes, 0.0)
        # The shared list, worked in order: consecutive messages of the ring go to the same
        # target until `senders_per_target` members hit it.
        rate = lognormal(rng, spec.rate_per_hour, size)
        end = np.minimum(t0 + dur, world.end)
        span = np.maximum(end - t0, 0)
        counts = np.where(span > 0, np.maximum(rng.poisson(rate * span / HOUR_MS), 1), 0)
        ts = window_times(world, t0, span, counts, spec.follow_diurnal)
        owner = segment_ids(counts)
        order = np.argsort(ts, kind="stable")
        ts, owner = ts[order], owner[order]
        targets = rng.choice(victims_all, size=min(spec.targets_per_ring, victims_all.size), replace=False)
        slot = (np.arange(ts.size) // spec.senders_per_target) % targets.size
        sender, recipient = acc[owner], targets[slot]
        adds = rng.random(ts.size) < spec.add_contact_share
        plan.add(Act.CONTACT, ts[adds] - 3000, sender[adds], b=recipient[adds])
        messages.direct(world, plan, ts, sender, recipient, spec.message_bytes, spec.media_share, spam=1)
        c = _pairs(sender, recipient, ts)
        reactions.respond(world, plan, c.spammer, c.victim, c.first_ts, c.n_msgs, spec.response or
                          world.scenario.response, spec.reply_share, spec.reason)


def conversational_scam(world: World, plan: Plan, spec: ConversationalScam) -> None:
    rng = world.rng
    n = spec.count
    t0 = world.start + (uniform(rng, spec.start_h, n) * HOUR_MS).astype(np.int64)
    dur = (uniform(rng, spec.duration_h, n) * HOUR_MS).astype(np.int64)
    acc = new_spammers(world, plan, spec, "conversational_scam", n, t0)
    # rate_per_hour counts the scammer's own messages; each conversation costs about half its turns.
    per_conv = max(1.0, spec.turns * 0.5 * spec.reply_share + (1 - spec.reply_share))
    rate = lognormal(rng, spec.rate_per_hour, n) / per_conv
    span = np.maximum(np.minimum(t0 + dur, world.end) - t0, 0)
    counts = np.where(span > 0, np.maximum(rng.poisson(rate * span / HOUR_MS), 1), 0)
    start = window_times(world, t0, span, counts, spec.follow_diurnal)
    init = acc[segment_ids(counts)]
    victims = world.legit_before(world.start)
    victim = victims[rng.integers(0, victims.size, init.size)]
    adds = rng.random(init.size) < spec.add_contact_share
    plan.add(Act.CONTACT, start[adds] - 3000, init[adds], b=victim[adds])
    replied = rng.random(init.size) < spec.reply_share
    sent = messages.conversations(world, plan, start, init, victim, spec.turns, replied,
                                  Dist(median=120_000.0, sigma=1.2, max=4 * 3_600_000.0), spec.message_bytes,
                                  spec.media_share, spam_init=1)
    from_scammer = np.isin(sent.sender, acc)
    c = _pairs(sent.sender[from_scammer], sent.recipient[from_scammer], sent.ts[from_scammer])
    # The pitch comes late in the conversation: reactions are timed from the last message.
    pair = sent.sender[from_scammer] * (1 << 31) + sent.recipient[from_scammer]
    last = np.zeros(c.spammer.size, dtype=np.int64)
    np.maximum.at(last, np.searchsorted(c.spammer * (1 << 31) + c.victim, pair), sent.ts[from_scammer])
    reactions.respond(world, plan, c.spammer, c.victim, last, c.n_msgs, spec.response or world.scenario.response,
                      0.0, spec.reason)


def group_spam(world: World, plan: Plan, spec: GroupSpam) -> None:
    rng = world.rng
    n = spec.count
    t0 = world.start + (uniform(rng, spec.start_h, n) * HOUR_MS).astype(np.int64)
    dur = (uniform(rng, spec.duration_h, n) * HOUR_MS).astype(np.int64)
    acc = new_spammers(world, plan, spec, "group_spam", n, t0)
    victims = world.legit_before(world.start)
    response = spec.response or world.scenario.response
    n_groups = np.maximum(1, lognormal(rng, spec.groups_per_account, n).astype(np.int64))
    g_owner = segment_ids(n_groups)
    g_pos = segment_positions(n_groups)
    gid = world.new_groups(g_owner.size)
    size = np.maximum(2, lognormal(rng, spec.group_size, g_owner.size).astype(np.int64))
    posts = np.maximum(1, lognormal(rng, spec.posts_per_group, g_owner.size).astype(np.int64))
    # Work per group = adds + posts, done at the account's rate: groups one after another.
    rate = lognormal(rng, spec.rate_per_hour, n)
    step_ms = HOUR_MS / rate[g_owner]
    work = size + posts
    cw = np.cumsum(work) - work
    work_before = cw - cw[(np.cumsum(n_groups) - n_groups)[g_owner]]
    created = t0[g_owner] + (work_before * step_ms).astype(np.int64) + g_pos * 1000
    keep_g = created < np.minimum(t0[g_owner] + dur[g_owner], world.end)
    plan.add(Act.GROUP_CREATE, created[keep_g], acc[g_owner[keep_g]], b=gid[keep_g])

    m_g = segment_ids(size)
    m_pos = segment_positions(size)
    member = victims[rng.integers(0, victims.size, m_g.size)]
    add_ts = created[m_g] + 500 + (m_pos * step_ms[m_g] * rng.uniform(0.5, 1.5, m_g.size)).astype(np.int64)
    ok = keep_g[m_g] & (add_ts < world.end)
    plan.add(Act.GROUP_ADD, add_ts[ok], acc[g_owner[m_g[ok]]], b=gid[m_g[ok]], x=member[ok])
    adds_done = np.zeros(gid.size, dtype=np.int64)
    np.maximum.at(adds_done, m_g, add_ts)

    p_g = segment_ids(posts)
    p_pos = segment_positions(posts)
    post_ts = adds_done[p_g] + 2000 + (p_pos * step_ms[p_g] * rng.uniform(0.5, 1.5, p_g.size)).astype(np.int64)
    ok_p = keep_g[p_g] & (post_ts < world.end)
    messages.group(world, plan, post_ts[ok_p], acc[g_owner[p_g[ok_p]]], gid[p_g[ok_p]], spec.message_bytes,
                   spec.media_share, spam=1)

    # Members react after the first post: leave, block, report (naming the group's messages).
    first_post = adds_done + 2000
    r = ok & (first_post[m_g] < world.end)
    owner_acc = acc[g_owner[m_g[r]]]
    reactions.respond(world, plan, owner_acc, member[r], first_post[m_g[r]], posts[m_g[r]], response, 0.0,
                      spec.reason, group=gid[m_g[r]])
    leave = r.copy()
    leave[r] = rng.random(int(r.sum())) < spec.leave_probability
    leave_ts = first_post[m_g[leave]] + lognormal(rng, Dist(median=5 * MIN_MS, sigma=1.0), int(leave.sum()))
    leave_ts = leave_ts.astype(np.int64) + 60_000
    fine = leave_ts < world.end
    plan.add(Act.GROUP_REMOVE, leave_ts[fine], member[leave][fine], b=gid[m_g[leave]][fine], x=member[leave][fine])
