"""Offline simulation: a scenario in, signals (built by the relay's own `SignalBook`) and truth out.

`simulate` lays out the whole population's plan (numpy, vectorised), then replays it once in
time order through `relay.signals.SignalBook` — the code the relay runs — so first-contact,
contacts and every event's shape are the relay's. What the relay would compute from its own
state is computed here the same way during the replay: who is online (`recipient_online`),
how many messages a report names that the reporter really received from the reported account
(`messages_verified`: only the recipient's reports verify, each message once), and how often a
media blob was fetched.
"""

from __future__ import annotations

import contextlib
import enum
import gc
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from relay.server.limits import RateLimiter
from relay.signals import SignalBook, net_bucket
from sealguard.contracts import EVENTS_BY_NAME, ClientKind, Event, Limit, MessageKind, ReasonCode
from simulator import coordinated, hardcases, normal, reactions, sessions, spam
from simulator.errors import SimulatorError
from simulator.plan import REASONS, Act, Plan
from simulator.population import World, historical_reg_ts, history
from simulator.scenario import CLIENT_KINDS, Scenario

log = logging.getLogger(__name__)

NODE = "sim"

# Strategy name -> generator (hijacked is special: its accounts live in the social graph).
STRATEGIES: dict[str, Callable[..., None]] = {
    "blaster": spam.blaster, "slow_drip": spam.slow_drip, "farm": spam.farm,
    "ring": coordinated.ring, "conversational_scam": coordinated.conversational_scam,
    "group_spam": coordinated.group_spam,
}


class SignalsFileError(SimulatorError):
    """A signals/labels Parquet file that cannot be read back as v1 events."""


@dataclass
class SimulationResult:
    scenario: Scenario
    seed: int
    events: list[Event]
    truth: pd.DataFrame

    @property
    def accounts(self) -> int:
        return len(self.truth)


class _SeededBook(SignalBook):
    """The relay's SignalBook with event ids drawn from the scenario's seed (runs repeat exactly).

    Only the envelope's id source differs; every builder is the relay's.
    """

    def __init__(self, ids: str) -> None:
        super().__init__(NODE, clock=lambda: 0)
        self._ids = ids
        self._next = 0

    def _envelope(self, ts: int | None) -> dict[str, object]:
        i = self._next
        self._next = i + 1
        return {"v": 1, "ts": ts, "id": self._ids[32 * i:32 * i + 32]}


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Pause the cyclic GC while building millions of acyclic events: its generational passes
    over an ever-growing heap cost more than the building (measured: 16 s → 9 s for 666k)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _hex_ids(rng: np.random.Generator, prefix: str, count: int, nbytes: int) -> list[str]:
    raw = rng.bytes(nbytes * count).hex()
    w = 2 * nbytes
    return [prefix + raw[i * w:(i + 1) * w] for i in range(count)]


def build_plan(scenario: Scenario, rng: np.random.Generator) -> tuple[World, dict[str, np.ndarray]]:
    """Lay out every action of the scenario; returns the world and the sorted plan columns."""
    world = World(scenario, rng, scenario.start_ms, scenario.start_ms + scenario.duration_ms)
    plan = Plan()
    pop, hard = scenario.population, scenario.hard_cases
    hijacked_specs = [s for s in scenario.spam if s.strategy == "hijacked"]
    n_hijacked = sum(s.count for s in hijacked_specs)

    # People in the social graph: ordinary users (a few registered during the window), the
    # accounts that will be hijacked (they live normal lives first), and the hard cases.
    n_normal = pop.normal
    reg = historical_reg_ts(world, n_normal)
    fresh = rng.random(n_normal) < pop.new_accounts_share
    reg[fresh] = world.start + (rng.random(int(fresh.sum())) * (world.end - world.start) * 0.8).astype(np.int64)
    world.alloc("normal", n_normal, 0, reg)
    hij = world.alloc("hijacked", n_hijacked, 1, historical_reg_ts(world, n_hijacked))
    hard_accounts: dict[str, np.ndarray] = {}
    for role in ("small_business", "teacher", "community_admin"):
        count = getattr(hard, role).count
        hard_accounts[role] = world.alloc(role, count, 0, historical_reg_ts(world, count))
    graph = np.arange(world.n, dtype=np.int64)
    history(world, plan, graph)

    normal.generate(world, plan, graph)
    hardcases.generate(world, plan, hard_accounts)

    offset = 0
    for spec in scenario.spam:
        if spec.strategy == "hijacked":
            spam.hijacked(world, plan, spec, hij[offset:offset + spec.count])
            offset += spec.count
        else:
            STRATEGIES[spec.strategy](world, plan, spec)
    for b in scenario.brigades:
        reactions.brigade(world, plan, b)

    sessions.generate(world, plan, plan.raw())
    return world, plan.columns()


def replay(world: World, cols: dict[str, np.ndarray], ids: list[str],
           rng: np.random.Generator) -> tuple[list[Event], np.ndarray]:
    """Walk the plan in time order through the relay's SignalBook and rate limiter.

    Returns the events and, per plan action, whether the relay accepted it (refused: the
    recipient blocked the sender, or a rate limit was hit — which emits `limit.breached`).
    """
    scenario = world.scenario
    n = int(cols["ts"].size)
    book = _SeededBook(rng.bytes(16 * n * 2).hex())
    groups = _hex_ids(rng, "g", world.n_groups, 10)
    blobs = _hex_ids(rng, "b", world.n_blobs, 10)
    bucket_names: dict[int, str] = {}

    def bucket(k: int) -> str:
        name = bucket_names.get(k)
        if name is None:
            address = f"{10 + (k >> 16)}.{(k >> 8) & 255}.{k & 255}.{1 + k % 250}"
            name = bucket_names[k] = net_bucket(address, scenario.net_salt)
        return name

    kinds = [ClientKind(k) for k in CLIENT_KINDS]
    reasons = [ReasonCode(r) for r in REASONS]
    text, media = MessageKind.text, MessageKind.media
    now = [0.0]
    limiter = RateLimiter()
    limiter._clock = lambda: now[0]  # the relay's limiter on the simulated clock
    take = limiter.take
    L_SEND, L_FIRST, L_GROUP, L_MEDIA, L_REPORT = (Limit.send, Limit.first_contact, Limit.group_add,
                                                   Limit.media_upload, Limit.report)

    online: dict[int, int] = {}
    blocks: set[tuple[int, int]] = set()         # (blocker, blocked)
    received: dict[tuple[int, int], int] = {}    # (sender, recipient) -> direct messages delivered
    gsent: dict[tuple[int, int], int] = {}       # (sender, group) -> group messages posted
    members: set[tuple[int, int]] = set()        # (group, member), ever: they received the posts
    verified_so_far: dict[tuple[int, int], int] = {}
    fetches: dict[int, int] = {}
    accepted = np.ones(n, dtype=bool)
    events: list[Event] = []
    out = events.append

    def breach(i: int, limit: Limit, a: int, ts: int) -> None:
        accepted[i] = False
        out(book.limit_breached(limit, account=ids[a], ts=ts))

    T, K, A, B, X, Y, S, G = (cols[c].tolist() for c in ("ts", "kind", "a", "b", "x", "y", "spam", "blob"))
    MSG, GMSG, CONTACT, SOPEN, SCLOSE = int(Act.MSG), int(Act.GMSG), int(Act.CONTACT), int(Act.SESSION_OPEN), \
        int(Act.SESSION_CLOSE)
    for i in range(n):
        k, ts, a = K[i], T[i], A[i]
        if k == MSG:
            b = B[i]
            now[0] = ts / 1000.0
            sender, recipient = ids[a], ids[b]
            if not take(L_SEND, sender):
                breach(i, L_SEND, a, ts)
                continue
            if book.is_first_contact(sender, recipient) and not take(L_FIRST, sender):
                breach(i, L_FIRST, a, ts)
                continue
            if (b, a) in blocks:
                accepted[i] = False
                continue
            out(book.message_sent(sender, recipient, X[i], media if Y[i] else text, b in online, ts))
            key = (a, b)
            received[key] = received.get(key, 0) + 1
        elif k == SOPEN:
            online[a] = ts
            out(book.session_opened(ids[a], bucket(X[i]), ts))
        elif k == SCLOSE:
            online.pop(a, None)
            out(book.session_closed(ids[a], bucket(X[i]), Y[i] / 1000.0, ts))
        elif k == CONTACT:
            out(book.contact_added(ids[a], ids[B[i]], ts))
        elif k == GMSG:
            now[0] = ts / 1000.0
            if not take(L_SEND, ids[a]):
                breach(i, L_SEND, a, ts)
                continue
            g = B[i]
            out(book.group_message_sent(ids[a], groups[g], X[i], media if Y[i] else text, ts))
            key = (a, g)
            gsent[key] = gsent.get(key, 0) + 1
        elif k == Act.MEDIA_UP:
            now[0] = ts / 1000.0
            if not take(L_MEDIA, ids[a]):
                breach(i, L_MEDIA, a, ts)
                continue
            out(book.media_uploaded(ids[a], blobs[X[i]], Y[i], ts))
        elif k == Act.MEDIA_FETCH:
            blob = X[i]
            fetches[blob] = count = fetches.get(blob, 0) + 1
            out(book.media_fetched(ids[a], blobs[blob], count, ts))
        elif k == Act.REGISTER:
            out(book.registered(ids[a], bucket(X[i]), kinds[Y[i]], ts))
        elif k == Act.BLOCK:
            pair = (a, B[i])
            if pair in blocks:
                accepted[i] = False
                continue
            blocks.add(pair)
            out(book.blocked(ids[a], ids[B[i]], ts))
        elif k == Act.REPORT:
            now[0] = ts / 1000.0
            if not take(L_REPORT, ids[a]):
                breach(i, L_REPORT, a, ts)
                continue
            b, g = B[i], G[i]
            available = received.get((b, a), 0)
            if g >= 0 and (g, a) in members:
                available += gsent.get((b, g), 0)
            pair = (b, a)
            done = verified_so_far.get(pair, 0)
            named = X[i]
            if S[i]:  # an honest reporter names only messages it received
                named = max(1, min(named, available))
            verified = max(0, min(named, available - done))
            verified_so_far[pair] = done + verified
            out(book.report_filed(ids[a], ids[b], reasons[Y[i]], named, verified, ts))
        elif k == Act.GROUP_CREATE:
            members.add((B[i], a))
            out(book.group_created(groups[B[i]], ids[a], ts))
        elif k == Act.GROUP_ADD:
            now[0] = ts / 1000.0
            if not take(L_GROUP, ids[a]):
                breach(i, L_GROUP, a, ts)
                continue
            members.add((B[i], X[i]))
            out(book.group_member_added(groups[B[i]], ids[a], ids[X[i]], ts))
        elif k == Act.GROUP_REMOVE:
            out(book.group_member_removed(groups[B[i]], ids[a], ids[X[i]], ts))
        else:  # pragma: no cover - a plan kind without a replay is a bug here
            raise SimulatorError(f"no replay for plan action {k}")
    return events, accepted


def simulate(scenario: Scenario, seed: int | None = None) -> SimulationResult:
    """Run a scenario offline; deterministic for a seed (default: the scenario's own)."""
    seed = scenario.seed if seed is None else int(seed)
    rng = np.random.default_rng(seed)
    world, cols = build_plan(scenario, rng)
    ids = _hex_ids(np.random.default_rng([seed, 1]), "a", world.n, 10)
    log.info("plan: %d accounts, %d actions", world.n, cols["ts"].size)
    with _no_gc():
        events, accepted = replay(world, cols, ids, np.random.default_rng([seed, 2]))
    # First spam = the first spam message the relay accepted (refused ones never reached anyone).
    truth = world.truth(ids, cols["ts"], cols["kind"], cols["a"], cols["spam"] * accepted)
    return SimulationResult(scenario, seed, events, truth)


# -- Parquet -----------------------------------------------------------------------------
_ARROW_TYPES: dict[str, pa.DataType] = {
    "type": pa.string(), "v": pa.int64(), "ts": pa.int64(), "id": pa.string(), "duration_s": pa.float64(),
    "size_bucket": pa.int64(), "messages_named": pa.int64(), "messages_verified": pa.int64(),
    "fetch_count": pa.int64(), "first_contact": pa.bool_(), "recipient_online": pa.bool_(),
    "member_is_contact": pa.bool_(),
}


_ENUM_FIELDS = frozenset({"client_kind", "kind", "reason_code", "limit", "action"})


def signals_table(events: list[Event]) -> pa.Table:
    """One row per event: type, v, ts, id + the union of all signal fields (null where absent).

    One pass over the events filling every column; enums become their string values.
    """
    types = {ev.type for ev in events}
    names: list[str] = ["type", "v", "ts", "id"]
    for etype in sorted(types):
        names += [f for f in EVENTS_BY_NAME[etype].model_fields if f not in names]
    names = names[:4] + sorted(names[4:])
    n = len(events)
    cols: dict[str, list[Any]] = {f: [None] * n for f in names}
    for i, ev in enumerate(events):
        for f, v in ev.__dict__.items():
            cols[f][i] = v
    arrays = {}
    for f in names:
        values = cols[f]
        if any(isinstance(v, enum.Enum) for v in values[:1000]) or f in _ENUM_FIELDS:
            values = [v.value if isinstance(v, enum.Enum) else v for v in values]
        arrays[f] = pa.array(values, type=_ARROW_TYPES.get(f, pa.string()))
    return pa.table(arrays)


def signals_frame(events: list[Event]) -> pd.DataFrame:
    return signals_table(events).to_pandas()


def write_parquet(result: SimulationResult, out_dir: str | Path) -> tuple[Path, Path]:
    """out_dir/signals.parquet (one row per event) and out_dir/labels.parquet (the truth)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    signals, labels = out / "signals.parquet", out / "labels.parquet"
    with _no_gc():
        table = signals_table(result.events)
    pq.write_table(table, signals)
    pq.write_table(pa.Table.from_pandas(result.truth, preserve_index=False), labels)
    return signals, labels


def read_signals(out_dir: str | Path, batch_size: int = 65_536) -> Iterator[Event]:
    """Events back from out_dir/signals.parquet, validated through the v1 contracts.

    A broken file raises SignalsFileError naming the file, the row and the problem.
    """
    path = Path(out_dir)
    if path.is_dir():
        path = path / "signals.parquet"
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise SignalsFileError(f"{path}: cannot read signals: {exc}") from None
    row = 0
    for batch in pf.iter_batches(batch_size=batch_size):
        for record in batch.to_pylist():
            clean = {k: v for k, v in record.items() if v is not None}
            etype = clean.get("type")
            cls = EVENTS_BY_NAME.get(etype) if isinstance(etype, str) else None
            if cls is None:
                raise SignalsFileError(f"{path}: row {row}: unknown event type {etype!r}")
            try:
                yield cls.model_validate(clean)
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(event)'}: {e['msg']}" for e in exc.errors())
                raise SignalsFileError(f"{path}: row {row}: invalid {etype}: {problems}") from None
            row += 1


def read_truth(out_dir: str | Path) -> pd.DataFrame:
    path = Path(out_dir)
    if path.is_dir():
        path = path / "labels.parquet"
    try:
        return pq.read_table(path).to_pandas()
    except (OSError, pa.ArrowInvalid) as exc:
        raise SignalsFileError(f"{path}: cannot read labels: {exc}") from None
