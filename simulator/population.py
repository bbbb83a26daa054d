"""The world before the window opens: accounts, networks, the social graph, history.

Accounts are integer indices; `World` holds their per-account columns (role, label,
community, registration time, home networks, client kind) and the contact graph in CSR form.
History (registrations, contacts and groups made before the window) goes into the plan with
past timestamps, so the replay's `SignalBook` knows who are contacts exactly as a long-running
relay would, and account age is visible to detection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from simulator.plan import DAY_MS, HOUR_MS, MIN_MS, Act, Plan, lognormal, segment_ids, weighted_choice
from simulator.scenario import CLIENT_KINDS, Dist, Scenario

LEGIT_ROLES = ("normal", "small_business", "teacher", "community_admin", "new_user_onboarding")


@dataclass
class World:
    """Everything behaviours need to know about the population; grows as roles are allocated."""

    scenario: Scenario
    rng: np.random.Generator
    start: int
    end: int
    role: list[str] = field(default_factory=list)
    label: list[int] = field(default_factory=list)
    reg_ts: list[int] = field(default_factory=list)
    community: list[int] = field(default_factory=list)
    home: list[int] = field(default_factory=list)      # home network bucket
    mobile: list[int] = field(default_factory=list)    # mobile network bucket
    client: list[int] = field(default_factory=list)
    tz: list[float] = field(default_factory=list)      # hours of local-time shift
    n_groups: int = 0
    n_blobs: int = 0
    n_buckets: int = 0
    # Set after the graph is built (contacts of graph accounts; CSR over all accounts).
    indptr: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # Hijacked accounts connect from the hijacker's network after the takeover.
    # Communities: members grouped by community (set by build_graph).
    comm_sorted: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    comm_start: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    comm_size: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    takeover: dict[int, tuple[int, int]] = field(default_factory=dict)  # account -> (ts, bucket)
    brigaded: set[int] = field(default_factory=set)
    _bucket_weights: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.role)

    # -- allocation ----------------------------------------------------------------------
    def alloc(self, role: str, count: int, label: int, reg_ts: np.ndarray, community: np.ndarray | int = -1,
              client: np.ndarray | None = None, home: np.ndarray | None = None,
              mobile: np.ndarray | None = None) -> np.ndarray:
        """Add `count` accounts; returns their indices."""
        first = self.n
        idx = np.arange(first, first + count, dtype=np.int64)
        if count == 0:
            return idx
        pop = self.scenario.population
        self.role.extend([role] * count)
        self.label.extend([label] * count)
        self.reg_ts.extend(np.asarray(reg_ts, dtype=np.int64).tolist())
        self.community.extend(np.broadcast_to(np.asarray(community, dtype=np.int64), (count,)).tolist())
        self.home.extend((self.pool_buckets(count) if home is None else np.asarray(home)).tolist())
        self.mobile.extend((self.pool_buckets(count) if mobile is None else np.asarray(mobile)).tolist())
        if client is None:
            client = weighted_choice(self.rng, pop.client_kinds, CLIENT_KINDS, count)
        self.client.extend(np.asarray(client, dtype=np.int64).tolist())
        spread = pop.activity.diurnal.timezone_spread_h
        self.tz.extend(self.rng.normal(0.0, spread, count).tolist() if spread > 0 else [0.0] * count)
        return idx

    def pool_buckets(self, count: int) -> np.ndarray:
        """Shared residential/carrier buckets, Zipf-weighted (a few carriers host many users)."""
        net = self.scenario.population.network
        if self._bucket_weights is None:
            w = 1.0 / np.arange(1, net.buckets + 1) ** net.zipf
            self._bucket_weights = w / w.sum()
            self.n_buckets = max(self.n_buckets, net.buckets)
        return self.rng.choice(net.buckets, size=count, p=self._bucket_weights)

    def new_bucket(self) -> int:
        """A network nobody else in the population uses (a farm's, a hijacker's)."""
        if self._bucket_weights is None:
            self.pool_buckets(0)
        self.n_buckets += 1
        return self.n_buckets - 1

    def new_groups(self, count: int) -> np.ndarray:
        first = self.n_groups
        self.n_groups += int(count)
        return np.arange(first, self.n_groups, dtype=np.int64)

    def new_blobs(self, count: int) -> np.ndarray:
        first = self.n_blobs
        self.n_blobs += int(count)
        return np.arange(first, self.n_blobs, dtype=np.int64)

    # -- lookups -------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        return {"role": np.array(self.role, dtype=object), "label": np.array(self.label, dtype=np.int64),
                "reg_ts": np.array(self.reg_ts, dtype=np.int64), "community": np.array(self.community),
                "tz": np.array(self.tz)}

    def contacts_of(self, account: int) -> np.ndarray:
        if account + 1 >= self.indptr.size:
            return self.indices[:0]
        return self.indices[self.indptr[account]:self.indptr[account + 1]]

    def random_in_community(self, comm: np.ndarray) -> np.ndarray:
        """One random member of each given community."""
        comm = np.asarray(comm, dtype=np.int64)
        off = (self.rng.random(comm.size) * self.comm_size[comm]).astype(np.int64)
        return self.comm_sorted[self.comm_start[comm] + off]

    def random_contact(self, account: np.ndarray, skew: float = 1.0) -> np.ndarray:
        """A contact of each account (-1 when it has none); skew > 1 favours close contacts."""
        account = np.asarray(account, dtype=np.int64)
        deg = self.degree()[account]
        off = (self.rng.random(account.size) ** skew * deg).astype(np.int64)
        base = self.indptr[np.minimum(account, self.indptr.size - 2)]
        out = np.full(account.size, -1, dtype=np.int64)
        has = deg > 0
        out[has] = self.indices[base[has] + off[has]]
        return out

    def degree(self) -> np.ndarray:
        deg = np.diff(self.indptr)
        return np.concatenate([deg, np.zeros(max(0, self.n - deg.size), dtype=np.int64)])

    def legit_before(self, ts: int) -> np.ndarray:
        """Legitimate accounts that exist at `ts` (possible victims)."""
        arr = self.arrays()
        return np.flatnonzero((arr["label"] == 0) & (arr["reg_ts"] <= ts))

    def truth(self, ids: list[str], ts: np.ndarray, kind: np.ndarray, a: np.ndarray,
              spam: np.ndarray) -> pd.DataFrame:
        """Ground truth per account: label, role, first spam message time, brigaded."""
        arr = self.arrays()
        first = np.full(self.n, np.nan)
        sel = (spam == 1) & ((kind == Act.MSG) | (kind == Act.GMSG))
        if sel.any():
            np.fmin.at(first, a[sel], ts[sel].astype(float))
        brigaded = np.zeros(self.n, dtype=bool)
        brigaded[sorted(self.brigaded)] = True
        return pd.DataFrame({"account": pd.Series(ids, dtype="str"), "label": arr["label"],
                             "role": pd.Series(arr["role"].tolist(), dtype="str"), "first_spam_ts": first,
                             "brigaded": brigaded})


def build_graph(world: World, members: np.ndarray) -> list[np.ndarray]:
    """Communities with heavy-tailed sizes and a heavy-tailed degree contact graph over `members`.

    Returns friendship edges (src, dst), undirected, without duplicates or self loops; also
    assigns each member its community.
    """
    rng, pop = world.rng, world.scenario.population
    n = members.size
    # Community sizes: log-normal around the mean, filled until everyone has one.
    sizes: list[int] = []
    while sum(sizes) < n:
        mu = np.log(pop.communities.mean_size) - pop.communities.size_sigma ** 2 / 2
        sizes.extend(np.maximum(2, rng.lognormal(mu, pop.communities.size_sigma, 64)).astype(int).tolist())
    sizes_arr = np.array(sizes)
    sizes_arr = sizes_arr[: np.searchsorted(np.cumsum(sizes_arr), n) + 1]
    sizes_arr[-1] -= sizes_arr.sum() - n
    comm_of_pos = segment_ids(sizes_arr)
    perm = rng.permutation(n)
    community = np.empty(n, dtype=np.int64)
    community[perm] = comm_of_pos
    comm_arr = np.array(world.community)
    comm_arr[members] = community
    world.community = comm_arr.tolist()
    comm_start = np.cumsum(sizes_arr) - sizes_arr
    # perm[p] is the member at grouped position p, so community c is perm[start:start+size].
    world.comm_sorted, world.comm_start, world.comm_size = members[perm], comm_start, sizes_arr

    deg = np.maximum(1, lognormal(rng, pop.contacts, n)).astype(np.int64)
    stubs = np.maximum(1, np.round(deg / 2).astype(np.int64))
    src_pos = segment_ids(stubs)
    m = src_pos.size
    intra = rng.random(m) < pop.intra_community
    dst_pos = np.empty(m, dtype=np.int64)
    c = community[src_pos[intra]]
    dst_local = (rng.random(c.size) * sizes_arr[c]).astype(np.int64)
    dst_pos[intra] = perm[comm_start[c] + dst_local]
    # Across communities: preferential by degree (popular people are known more widely).
    cum = np.cumsum(deg.astype(float))
    far = ~intra
    dst_pos[far] = np.minimum(np.searchsorted(cum, rng.random(int(far.sum())) * cum[-1]), n - 1)
    src, dst = members[src_pos], members[dst_pos]
    keep = src != dst
    lo, hi = np.minimum(src[keep], dst[keep]), np.maximum(src[keep], dst[keep])
    pairs = np.unique(lo * (1 << 31) + hi)
    return [pairs >> 31, pairs & ((1 << 31) - 1)]


def set_contacts(world: World, src: np.ndarray, dst: np.ndarray) -> None:
    """Store directed contact lists (CSR) for later behaviours (partner choice, hijacked targets)."""
    n = world.n
    order = np.lexsort((dst, src))
    src, dst = src[order], dst[order]
    counts = np.bincount(src, minlength=n)
    world.indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    world.indices = dst.astype(np.int64)


def history(world: World, plan: Plan, graph_members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Registrations and contact adds before the window; returns the directed contact pairs."""
    rng, pop = world.rng, world.scenario.population
    arr = world.arrays()
    # Registrations of every account allocated so far that registered before the window.
    reg, before = arr["reg_ts"], arr["reg_ts"] < world.start
    idx = np.flatnonzero(before)
    plan.add(Act.REGISTER, reg[idx], idx, x=np.array(world.home)[idx], y=np.array(world.client)[idx])

    lo, hi = build_graph(world, graph_members)
    # Both sides add each other (mostly), after both accounts exist. Friendships of accounts
    # registered during the window are made during the window (the address-book import).
    t_known = np.maximum(reg[lo], reg[hi])
    past = t_known < world.start
    span = np.maximum(world.start - t_known, 1)
    fresh = t_known + (lognormal(rng, Dist(median=5 * MIN_MS, sigma=1.5, max=DAY_MS), lo.size)).astype(np.int64)
    # Most friendships are made early (the address book at sign-up), a tail over the years.
    t_add = np.where(past, t_known + (rng.random(lo.size) ** 3 * span * 0.95).astype(np.int64), fresh)
    mutual = rng.random(lo.size) < pop.mutual_contacts
    flip = rng.random(lo.size) < 0.5
    first, second = np.where(flip, hi, lo), np.where(flip, lo, hi)
    delay = (rng.random(lo.size) * 2 * HOUR_MS).astype(np.int64)
    t_back = np.where(past, np.maximum(np.minimum(t_add + delay, world.start - MIN_MS), t_add + 1), t_add + delay)
    plan.add(Act.CONTACT, t_add, first, b=second)
    plan.add(Act.CONTACT, t_back[mutual], second[mutual], b=first[mutual])
    src = np.concatenate([first, second[mutual]])
    dst = np.concatenate([second, first[mutual]])
    set_contacts(world, src, dst)
    return src, dst


def historical_reg_ts(world: World, count: int) -> np.ndarray:
    """Registration times of long-standing accounts (account age heavy-tailed, in days)."""
    age = lognormal(world.rng, world.scenario.population.account_age_days, count)
    return world.start - np.maximum(age * DAY_MS, 2 * DAY_MS).astype(np.int64)
