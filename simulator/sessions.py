"""Presence: when each account is connected, derived from what it does.

Every action needs its account online, so each action opens an interval around it (a short
lead before, a heavy-tailed linger after); people also open the app just to read (passive
sessions, following the day). Overlapping intervals of one account merge into one session.
The replay tracks who is online from these sessions, which is how `recipient_online` comes out.
"""

from __future__ import annotations

import numpy as np

from simulator.plan import DAY_MS, Act, Plan, diurnal_times, lognormal
from simulator.population import World

_ACTOR_KINDS = (Act.REGISTER, Act.CONTACT, Act.GROUP_CREATE, Act.GROUP_ADD, Act.MEDIA_UP, Act.MSG, Act.GMSG,
                Act.MEDIA_FETCH, Act.BLOCK, Act.REPORT, Act.GROUP_REMOVE)


def generate(world: World, plan: Plan, cols: dict[str, np.ndarray]) -> None:
    """Add SESSION_OPEN/CLOSE to `plan` for the actions in `cols` (plan columns, any order)."""
    rng, act = world.rng, world.scenario.population.activity
    sel = np.isin(cols["kind"], np.array([int(k) for k in _ACTOR_KINDS])) & (cols["ts"] >= world.start)
    acc, t = cols["a"][sel], cols["ts"][sel]
    lead = 2_000 + rng.exponential(20_000, t.size)
    linger = lognormal(rng, act.session_minutes, t.size) * 60_000
    starts, ends = t - lead, t + linger

    legit = np.flatnonzero(np.array(world.label) == 0)
    days = (world.end - world.start) / DAY_MS
    n_passive = rng.poisson(act.passive_sessions_per_day * days, legit.size)
    p_acc = np.repeat(legit, n_passive)
    p_start = diurnal_times(rng, world.start, world.end - world.start, p_acc.size, act.diurnal,
                            np.array(world.tz)[p_acc])
    reg = np.array(world.reg_ts)
    ok = p_start > reg[p_acc]
    p_acc, p_start = p_acc[ok], p_start[ok]
    p_end = p_start + lognormal(rng, act.session_minutes, p_acc.size) * 60_000

    acc = np.concatenate([acc, p_acc])
    starts = np.concatenate([starts, p_start]).astype(np.int64)
    ends = np.concatenate([ends, p_end]).astype(np.int64)
    # A registration is the first thing an account does: nothing of it starts before.
    starts = np.maximum(starts, reg[acc])
    order = np.lexsort((starts, acc))
    acc, starts, ends = acc[order], starts[order], ends[order]
    # Merge per account: running max of ends, offset by account so groups never mix.
    big = np.int64(1 << 40)
    rel_end = ends - world.start + DAY_MS * 400  # positive
    run = np.maximum.accumulate(acc * big + rel_end) - acc * big
    new = np.ones(acc.size, dtype=bool)
    new[1:] = (acc[1:] != acc[:-1]) | (starts[1:] - world.start + DAY_MS * 400 > run[:-1])
    sid = np.cumsum(new) - 1
    s_acc = acc[new]
    s_start = starts[new]
    s_end = np.zeros(s_acc.size, dtype=np.int64)
    np.maximum.at(s_end, sid, ends)
    bucket = _buckets(world, s_acc, s_start)
    plan.add(Act.SESSION_OPEN, s_start, s_acc, x=bucket)
    closed = s_end < world.end
    plan.add(Act.SESSION_CLOSE, s_end[closed], s_acc[closed], x=bucket[closed], y=(s_end - s_start)[closed])


def _buckets(world: World, acc: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Home or mobile network per session; a hijacked account's sessions move to the hijacker's."""
    mobile = world.rng.random(acc.size) < world.scenario.population.network.mobile_share
    bucket = np.where(mobile, np.array(world.mobile)[acc], np.array(world.home)[acc])
    for account, (t0, b) in world.takeover.items():
        bucket[(acc == account) & (ts >= t0)] = b
    return bucket
