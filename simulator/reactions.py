"""What people do back: replies to messages from strangers, blocks, reports, brigades.

Victims of spam react per distinct sender: some reply ("who is this?"), some block, some report
(naming messages they actually received, so the relay can verify them). Brigades are the
opposite: many reporters who never received anything from their innocent target report it in a
short window, naming message ids the relay cannot verify.
"""

from __future__ import annotations

import numpy as np

from simulator import messages
from simulator.plan import MIN_MS, REASONS, Act, Plan, lognormal, uniform
from simulator.population import World
from simulator.scenario import Brigade, Dist, VictimResponse

REPLY_DELAY = Dist(median=90_000.0, sigma=1.2, max=6 * 3_600_000.0)


def respond(world: World, plan: Plan, spammer: np.ndarray, victim: np.ndarray, first_ts: np.ndarray,
            n_msgs: np.ndarray, response: VictimResponse, reply_share: float, reason: str,
            group: np.ndarray | None = None) -> None:
    """Reactions of each victim to each spammer that reached them (one row per pair)."""
    rng, act = world.rng, world.scenario.population.activity
    n = spammer.size
    if n == 0:
        return
    if group is None:
        replied = rng.random(n) < reply_share
        k = 1 + rng.poisson(0.3, int(replied.sum()))
        idx = np.repeat(np.flatnonzero(replied), k)
        ts = first_ts[idx] + lognormal(rng, REPLY_DELAY, idx.size).astype(np.int64) + np.arange(idx.size) % 3 * 4000
        keep = ts < world.end
        messages.direct(world, plan, ts[keep], victim[idx][keep], spammer[idx][keep], act.message_bytes, 0.0)
    delay = lognormal(rng, response.delay_s, n) * 1000
    blocks = rng.random(n) < response.block_probability
    reports = rng.random(n) < response.report_probability
    t_react = (first_ts + delay).astype(np.int64)
    keep_b, keep_r = blocks & (t_react < world.end), reports & (t_react < world.end)
    # The report comes first when both (the report flow offers blocking afterwards).
    plan.add(Act.BLOCK, t_react[keep_b] + 2000, victim[keep_b], b=spammer[keep_b])
    named = np.minimum(response.messages_named, np.maximum(n_msgs, 1))
    plan.add(Act.REPORT, t_react[keep_r], victim[keep_r], b=spammer[keep_r], x=named[keep_r],
             y=REASONS.index(reason), spam=1, blob=-1 if group is None else group[keep_r])


def brigade(world: World, plan: Plan, spec: Brigade) -> None:
    """False mass reports against innocent accounts of `spec.target_role`."""
    rng = world.rng
    arr = world.arrays()
    candidates = np.flatnonzero((arr["role"] == spec.target_role) & (arr["reg_ts"] < world.start))
    if candidates.size == 0:
        return
    targets = rng.choice(candidates, size=min(spec.targets, candidates.size), replace=False)
    pool = np.flatnonzero((arr["label"] == 0) & (arr["reg_ts"] < world.start))
    for target in targets.tolist():
        world.brigaded.add(target)
        friends = set(world.contacts_of(target).tolist())
        reporters = rng.choice(pool, size=min(spec.reporters * 2, pool.size), replace=False)
        reporters = np.array([r for r in reporters.tolist() if r != target and r not in friends][: spec.reporters])
        t0 = world.start + int(uniform(rng, spec.start_h, 1)[0] * 3_600_000)
        ts = t0 + (rng.random(reporters.size) * spec.window_minutes * MIN_MS).astype(np.int64)
        keep = ts < world.end
        plan.add(Act.REPORT, ts[keep], reporters[keep], b=target, x=spec.messages_named,
                 y=REASONS.index(spec.reason), spam=0)
        blocks = keep & (rng.random(reporters.size) < spec.block_share)
        plan.add(Act.BLOCK, ts[blocks] + 1500, reporters[blocks], b=target)
