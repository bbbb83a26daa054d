"""Messages and conversations, shared by every behaviour.

A conversation is turns between an initiator and a responder: the first turn is the
initiator's; if the responder answers, turns alternate with human reply delays (heavy-tailed),
and each turn is one or a few messages a few seconds apart. Media messages upload a blob
before sending and the recipient fetches it after, as the relay's media path would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.plan import Act, Plan, lognormal, segment_ids, segment_positions
from simulator.population import World
from simulator.scenario import Dist


@dataclass
class Sent:
    """The messages a call produced (after clipping to the window)."""

    ts: np.ndarray
    sender: np.ndarray
    recipient: np.ndarray
    conv: np.ndarray  # index of the conversation each message belongs to (or of the input row)


def direct(world: World, plan: Plan, ts: np.ndarray, sender: np.ndarray, recipient: np.ndarray, nbytes: Dist,
           media_share: float, spam: np.ndarray | int = 0, blob: np.ndarray | None = None) -> None:
    """One-to-one messages; `blob` (per message, -1 = text) lets spammers reuse the same media."""
    rng, act = world.rng, world.scenario.population.activity
    n = ts.size
    if n == 0:
        return
    if blob is None:
        media = rng.random(n) < media_share
        blob = np.full(n, -1, dtype=np.int64)
        blob[media] = world.new_blobs(int(media.sum()))
        upload = media
    else:
        media = blob >= 0
        _, first_use = np.unique(blob, return_index=True)
        upload = np.zeros(n, dtype=bool)
        upload[first_use] = True
        upload &= media
    size = lognormal(rng, nbytes, n)
    size[media] = lognormal(rng, act.media_bytes, int(media.sum()))
    size = np.maximum(size, 1).astype(np.int64)
    plan.add(Act.MEDIA_UP, ts[upload] - 400, sender[upload], x=blob[upload], y=size[upload])
    plan.add(Act.MSG, ts, sender, b=recipient, x=size, y=media.astype(np.int64), spam=spam, blob=blob)
    fetch = ts[media] + lognormal(rng, Dist(median=20_000.0, sigma=1.2, max=3_600_000.0), int(media.sum()))
    plan.add(Act.MEDIA_FETCH, fetch.astype(np.int64), recipient[media], x=blob[media])


def group(world: World, plan: Plan, ts: np.ndarray, sender: np.ndarray, gid: np.ndarray, nbytes: Dist,
          media_share: float, spam: np.ndarray | int = 0) -> None:
    rng, act = world.rng, world.scenario.population.activity
    n = ts.size
    if n == 0:
        return
    media = rng.random(n) < media_share
    size = lognormal(rng, nbytes, n)
    size[media] = lognormal(rng, act.media_bytes, int(media.sum()))
    blob = np.full(n, -1, dtype=np.int64)
    blob[media] = world.new_blobs(int(media.sum()))
    plan.add(Act.MEDIA_UP, ts[media] - 400, sender[media], x=blob[media], y=size[media].astype(np.int64))
    plan.add(Act.GMSG, ts, sender, b=gid, x=np.maximum(size, 1).astype(np.int64), y=media.astype(np.int64),
             spam=spam, blob=blob)


def conversations(world: World, plan: Plan, start: np.ndarray, init: np.ndarray, resp: np.ndarray,
                  turns_mean: float, replied: np.ndarray, reply_delay: Dist, nbytes: Dist, media_share: float,
                  spam_init: int = 0, end: int | None = None, max_turns: int = 400) -> Sent:
    """Back-and-forth conversations; only the initiator's messages carry `spam_init`."""
    rng = world.rng
    end = world.end if end is None else end
    n = start.size
    if n == 0:
        z = np.zeros(0, dtype=np.int64)
        return Sent(z, z, z, z)
    turns = np.where(replied, np.minimum(rng.geometric(1.0 / max(turns_mean, 1.0), n), max_turns), 1)
    turns = np.maximum(turns, np.where(replied, 2, 1))
    conv = segment_ids(turns)
    j = segment_positions(turns)
    gaps = np.where(j == 0, 0.0, lognormal(rng, reply_delay, conv.size))
    cs = np.cumsum(gaps)
    firsts = np.cumsum(turns) - turns
    turn_off = cs - np.repeat(cs[firsts], turns)
    from_init = (j % 2) == 0
    # Each turn: one message, sometimes a few in a row, seconds apart.
    per_turn = 1 + rng.poisson(0.45, conv.size)
    step = 1500.0 + rng.exponential(7000.0, conv.size)
    tid = segment_ids(per_turn)
    pos = segment_positions(per_turn)
    c = conv[tid]
    ts = (start[c] + turn_off[tid] + pos * step[tid]).astype(np.int64)
    fi = from_init[tid]
    sender = np.where(fi, init[c], resp[c])
    recipient = np.where(fi, resp[c], init[c])
    keep = ts < end
    ts, sender, recipient, c, fi = ts[keep], sender[keep], recipient[keep], c[keep], fi[keep]
    direct(world, plan, ts, sender, recipient, nbytes, media_share, spam=np.where(fi, spam_init, 0))
    return Sent(ts, sender, recipient, c)
