"""The batch entry points: a feature table built by replaying events through the streaming operators.

Training (models/) and evaluation (detection.evaluate) build their tables here; both entry points run
the very same `FeatureEngine` updates and `ScoreSchedule` the online worker runs, so a row here is
exactly the vector the worker would have scored at that moment. Rows are taken only at those
scoring moments (the schedule subsamples a busy account logarithmically).

* `build_feature_table(events)` / `iter_snapshots(events)` — event objects (contract events or
  anything with the same attribute names) through the engine's two doors, as the worker does.
* `plan_replay(columns)` + `replay_shard(plan, k, n)` + `merge_shards(parts)` — the same
  replay from columns (a pyarrow Table of signals): no Python object per signal, only the doors
  that touch a feature, and shardable by account. Each event goes to the shard of its actor for
  its outbound door and to the shard of its counterpart for its inbound door (the same split the
  worker's partitions make, CRC32 of the account id); every shard also counts *every*
  registration in its NetBook, so registrations per network bucket stay global. Merged in
  (event, door) order, the shards' rows are the single-process table row for row — the parity
  tests compare them value for value.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
import pandas as pd

from detection.features.operators import FEATURE_NAMES, feature_row
from detection.features.state import FeatureEngine, ScoreSchedule

SnapshotMode = Literal["scoring", "every"]

# Called with (account, ts, feature vector) at each snapshot, for callers that act as they go.
SnapshotHook = Callable[[str, int, list[float]], None]


def iter_snapshots(events: Iterable[Any], snapshots: SnapshotMode | ScoreSchedule = "scoring",
                   engine: FeatureEngine | None = None) -> Iterable[tuple[str, int, list[float]]]:
    """Replay ts-ordered events through both doors of the engine; yield (account, ts, vector) at
    every moment the online worker would score (`"scoring"`, the default schedule, or a given
    `ScoreSchedule`) or after every event that touches an account's features (`"every"`)."""
    engine = engine if engine is not None else FeatureEngine()
    schedule = snapshots if isinstance(snapshots, ScoreSchedule) else ScoreSchedule()
    every = snapshots == "every"
    row = feature_row
    accounts = engine.accounts
    for ev in events:
        out = engine.apply_outbound(ev)
        inn = engine.apply_inbound(ev)
        ts = ev.ts
        for account, received in ((out, False), (inn, True)):
            if account is None:
                continue
            st = accounts[account]
            if every or schedule.due(st, ts, received=received):
                schedule.mark(st, ts)
                yield account, ts, row(st, engine, ts)


def _frame(accounts: Sequence[str] | np.ndarray, stamps: Sequence[int] | np.ndarray, matrix: np.ndarray) -> pd.DataFrame:
    df = pd.DataFrame(matrix.reshape(len(stamps), len(FEATURE_NAMES)), columns=list(FEATURE_NAMES))
    df.insert(0, "ts", np.asarray(stamps, dtype=np.int64))
    df.insert(0, "account", pd.Series(np.asarray(accounts, dtype=object), dtype=object))
    return df


def build_feature_table(events: Iterable[Any], snapshots: SnapshotMode | ScoreSchedule = "scoring",
                        *, engine: FeatureEngine | None = None) -> pd.DataFrame:
    """A DataFrame with columns `account`, `ts`, then FEATURE_NAMES — one row per scoring moment.

    `events` must be in ts order (as `simulator` emits them and as the relay timestamps them).
    Pass `engine` to keep the final state (e.g. to inspect it after the replay)."""
    accounts: list[str] = []
    stamps: list[int] = []
    rows = _Rows()
    for account, ts, vec in iter_snapshots(events, snapshots, engine):
        accounts.append(account)
        stamps.append(ts)
        rows.append(vec)
    return _frame(accounts, stamps, rows.matrix())


class _Rows:
    """Feature vectors gathered in float64 blocks (a list of 35 Python floats costs ~1.2 kB a row)."""

    BLOCK = 65_536

    def __init__(self) -> None:
        self.blocks: list[np.ndarray] = []
        self.pending: list[list[float]] = []
        self.append = self.pending.append

    def flush(self) -> None:
        if self.pending:
            self.blocks.append(np.asarray(self.pending, dtype=np.float64))
            self.pending.clear()

    def matrix(self) -> np.ndarray:
        self.flush()
        if not self.blocks:
            return np.zeros((0, len(FEATURE_NAMES)), dtype=np.float64)
        return self.blocks[0] if len(self.blocks) == 1 else np.concatenate(self.blocks)


# -- the columnar replay --------------------------------------------------------------------
# What one door of one event does (0: nothing for the features).
SEND, RECEIVE, SESSION, REGISTER, NET_ONLY, GROUP_ADD, BLOCK, REPORT, SELF, CONTACT = range(1, 11)
_OUT_KIND = {"message.sent": SEND, "account.registered": REGISTER, "session.opened": SESSION,
             "group.member_added": GROUP_ADD, "group.created": GROUP_ADD, "contact.added": CONTACT}
_IN_KIND = {"message.sent": RECEIVE, "contact.blocked": BLOCK, "report.filed": REPORT}

# The columns the replay reads (a file may lack the ones no event of it uses).
REPLAY_COLUMNS = ("type", "ts", "sender", "recipient", "first_contact", "account", "net_bucket", "actor", "member",
                  "member_is_contact", "blocked", "reported", "messages_verified", "contact")


def shard_of(account: str, shards: int) -> int:
    """The shard (and online, the partition) of an account: CRC32 of its id, as Kafka's default partitioner."""
    return zlib.crc32(account.encode()) % shards


@dataclass
class ReplayPlan:
    """Each event's two doors as arrays: what it does, to which account (a code into `names`)."""

    self_events: dict[int, dict[str, Any]]  # events acting on one account through both doors (rare), as rows
    names: np.ndarray  # account ids (object), then None: code -1 reads None
    buckets: np.ndarray  # net buckets (object), then None
    ts: np.ndarray
    out_kind: np.ndarray
    out_acct: np.ndarray
    in_kind: np.ndarray
    in_acct: np.ndarray
    out_flag: np.ndarray  # first_contact (send) / member_is_contact (group add)
    in_flag: np.ndarray  # messages_verified > 0 (report)
    bucket: np.ndarray  # net bucket code (register, session)

    @property
    def events(self) -> int:
        return len(self.ts)

    def shards_of(self, shards: int) -> np.ndarray:
        """Shard of every account code (and -1 → shard of nobody)."""
        out = np.fromiter((shard_of(a, shards) for a in self.names[:-1]), dtype=np.int32, count=len(self.names) - 1)
        return np.append(out, -1)


def _column(table: Any, name: str, n: int) -> Any:
    """One column as a single Array (text columns as utf8; an absent or all-null column as nulls)."""
    import pyarrow as pa

    if name not in table.column_names:
        return pa.nulls(n, pa.string())
    values = table.column(name).combine_chunks()
    if pa.types.is_null(values.type) or pa.types.is_large_string(values.type):
        values = values.cast(pa.string())
    return values


def plan_replay(table: Any) -> ReplayPlan:
    """Plan the replay of a pyarrow Table of ts-ordered signals (columns: REPLAY_COLUMNS, those present)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    col = lambda name: _column(table, name, n)
    types = pc.dictionary_encode(col("type"))
    type_names = types.dictionary.to_pylist()
    type_idx = types.indices.to_numpy(zero_copy_only=False)
    out_kind = np.array([_OUT_KIND.get(t, 0) for t in type_names] + [0], dtype=np.int8)[type_idx]
    in_kind = np.array([_IN_KIND.get(t, 0) for t in type_names] + [0], dtype=np.int8)[type_idx]
    out_str = pc.coalesce(col("sender"), col("actor"), col("account"))
    # (a contact add's contact rides in the inbound column: its inbound door does nothing, and its
    # outbound door reads it as the other account, as a send reads its recipient)
    in_str = pc.coalesce(col("recipient"), col("blocked"), col("reported"), col("contact"))
    both = pc.dictionary_encode(pa.concat_arrays([out_str, in_str]))
    codes = pc.fill_null(both.indices, -1).to_numpy(zero_copy_only=False).astype(np.int32)
    out_acct, in_acct = codes[:n], codes[n:]
    # A door without its account does nothing (a group message has no recipient, an empty group add no member).
    out_kind[out_acct < 0] = 0
    in_kind[in_acct < 0] = 0
    is_group = (out_kind == GROUP_ADD) & pc.is_null(col("member")).to_numpy(zero_copy_only=False)
    out_kind[is_group] = 0
    is_send = out_kind == SEND
    first = pc.fill_null(_bool(col("first_contact")), False).to_numpy(zero_copy_only=False)
    member_is_contact = pc.fill_null(_bool(col("member_is_contact")), False).to_numpy(zero_copy_only=False)
    out_flag = np.where(is_send, first, member_is_contact)
    verified = _column(table, "messages_verified", n)
    if pa.types.is_integer(verified.type):
        in_flag = pc.fill_null(pc.greater(verified, 0), False).to_numpy(zero_copy_only=False)
    else:
        in_flag = np.zeros(n, dtype=bool)
    nets = pc.dictionary_encode(col("net_bucket"))
    bucket = pc.fill_null(nets.indices, -1).to_numpy(zero_copy_only=False).astype(np.int32)
    ts = pc.cast(col("ts"), pa.int64()).to_numpy()
    both_doors = np.flatnonzero((out_kind != 0) & (in_kind != 0) & (out_acct == in_acct))
    self_events = {int(i): table.slice(int(i), 1).to_pylist()[0] for i in both_doors}
    return ReplayPlan(self_events=self_events, names=_with_none(both.dictionary), buckets=_with_none(nets.dictionary),
                      ts=ts,
                      out_kind=out_kind, out_acct=out_acct, in_kind=in_kind, in_acct=in_acct,
                      out_flag=np.asarray(out_flag, dtype=bool), in_flag=np.asarray(in_flag, dtype=bool),
                      bucket=bucket)


def _bool(values: Any) -> Any:
    import pyarrow as pa

    return values if pa.types.is_boolean(values.type) else pa.nulls(len(values), pa.bool_())


def _with_none(dictionary: Any) -> np.ndarray:
    out = np.empty(len(dictionary) + 1, dtype=object)
    out[:-1] = dictionary.to_pylist()
    out[-1] = None
    return out


@dataclass
class ShardRows:
    """One shard's snapshots: the event and door each was taken at (for the merge), then the row."""

    event: np.ndarray  # int64 index of the event in the stream
    door: np.ndarray  # int8: 0 outbound, 1 inbound
    account: np.ndarray  # account ids (object)
    ts: np.ndarray
    matrix: np.ndarray

    def __len__(self) -> int:
        return len(self.event)


def replay_shard(plan: ReplayPlan, shard: int = 0, shards: int = 1,
                 snapshots: SnapshotMode | ScoreSchedule = "scoring", *, engine: FeatureEngine | None = None,
                 shard_codes: np.ndarray | None = None) -> ShardRows:
    """Replay the doors of `plan` whose account falls in `shard` of `shards` (all of them for 1 shard)."""
    n = plan.events
    if shards > 1:
        where = shard_codes if shard_codes is not None else plan.shards_of(shards)
        so, si = where[plan.out_acct], where[plan.in_acct]
        out_sel = (plan.out_kind != 0) & (so == shard)
        net_only = (plan.out_kind == REGISTER) & (so != shard)  # another shard's registration: count it
        in_sel = (plan.in_kind != 0) & (si == shard)
    else:
        out_sel = plan.out_kind != 0
        net_only = np.zeros(n, dtype=bool)
        in_sel = plan.in_kind != 0
    # An event acting on one account through both doors (none in practice) takes the event path.
    self_ev = out_sel & in_sel & (plan.out_acct == plan.in_acct)
    out_rows = np.flatnonzero((out_sel & ~self_ev) | net_only)
    in_rows = np.flatnonzero(in_sel & ~self_ev)
    self_rows = np.flatnonzero(self_ev)
    event = np.concatenate([out_rows, in_rows, self_rows])
    door = np.concatenate([np.zeros(len(out_rows), np.int8), np.ones(len(in_rows), np.int8),
                           np.zeros(len(self_rows), np.int8)])
    kind = np.concatenate([np.where(net_only[out_rows], NET_ONLY, plan.out_kind[out_rows]), plan.in_kind[in_rows],
                           np.full(len(self_rows), SELF, np.int8)])
    acct = np.concatenate([plan.out_acct[out_rows], plan.in_acct[in_rows], plan.out_acct[self_rows]])
    # The other account: a send's recipient, a received message's sender.
    other = np.concatenate([plan.in_acct[out_rows], plan.out_acct[in_rows], plan.in_acct[self_rows]])
    flag = np.concatenate([plan.out_flag[out_rows], plan.in_flag[in_rows], plan.out_flag[self_rows]])
    order = np.argsort(event * 2 + door, kind="stable")
    event, door, kind, acct, other, flag = event[order], door[order], kind[order], acct[order], other[order], flag[order]
    got = _replay(plan, event, kind, acct, other, flag, snapshots, engine if engine is not None else FeatureEngine())
    pos, accounts, stamps, matrix = got
    return ShardRows(event=event[pos].astype(np.int64), door=door[pos],
                     account=plan.names[np.asarray(accounts, np.int64)], ts=np.asarray(stamps, dtype=np.int64), matrix=matrix)


def _replay(plan: ReplayPlan, event: np.ndarray, kinds: np.ndarray, acct: np.ndarray, other: np.ndarray,
            flag: np.ndarray, snapshots: SnapshotMode | ScoreSchedule,
            engine: FeatureEngine) -> tuple[np.ndarray, list[int], list[int], np.ndarray]:
    schedule = snapshots if isinstance(snapshots, ScoreSchedule) else ScoreSchedule()
    every = snapshots == "every"
    due, mark, row = schedule.due, schedule.mark, feature_row
    send, receive, session, register = engine.send, engine.receive, engine.session, engine.register
    group_add, block, report, book = engine.group_add, engine.block, engine.report, engine.book
    contact_added = engine.contact_added
    names = plan.names
    ts_all = plan.ts
    buckets = plan.buckets[plan.bucket[event]].tolist()
    pos: list[int] = []
    codes: list[int] = []
    stamps: list[int] = []
    rows = _Rows()
    take_row = rows.append
    flush_at = rows.BLOCK
    j = -1
    for kind, ts, a, o, f, nb, code in zip(kinds.tolist(), ts_all[event].tolist(), names[acct].tolist(),
                                          names[other].tolist(), flag.tolist(), buckets, acct.tolist()):
        j += 1
        if kind == SEND:
            st = send(ts, a, o, f)
            received = False
        elif kind == RECEIVE:
            receive(ts, a, o)
            continue
        elif kind == SESSION:
            session(ts, a, nb)
            continue
        elif kind == NET_ONLY:
            book.register(nb, ts)
            continue
        elif kind == CONTACT:
            contact_added(ts, a, o)
            continue
        elif kind == REGISTER:
            register(ts, a, nb)
            continue
        elif kind == GROUP_ADD:
            st = group_add(ts, a, f)
            if st is None:
                continue
            received = False
        elif kind == BLOCK:
            st = block(ts, a)
            received = True
        elif kind == REPORT:
            st = report(ts, a, f)
            received = True
        else:  # SELF: both doors on one account, through the event path
            for account, vec in _self_event(plan, int(event[j]), engine, schedule, every):
                pos.append(j)
                codes.append(code if account == a else int(np.flatnonzero(names == account)[0]))
                stamps.append(ts)
                take_row(vec)
            continue
        if every or due(st, ts, received=received):
            mark(st, ts)
            pos.append(j)
            codes.append(code)
            stamps.append(ts)
            take_row(row(st, engine, ts))
            if len(rows.pending) >= flush_at:
                rows.flush()
    return np.asarray(pos, dtype=np.int64), codes, stamps, rows.matrix()


def _self_event(plan: ReplayPlan, i: int, engine: FeatureEngine, schedule: ScoreSchedule,
                every: bool) -> list[tuple[str, list[float]]]:
    ev = SimpleNamespace(**{k: None for k in REPLAY_COLUMNS} | plan.self_events[i])
    out, inn = engine.apply_outbound(ev), engine.apply_inbound(ev)
    got = []
    for account, received in ((out, False), (inn, True)):
        if account is None:
            continue
        st = engine.accounts[account]
        if every or schedule.due(st, ev.ts, received=received):
            schedule.mark(st, ev.ts)
            got.append((account, feature_row(st, engine, ev.ts)))
    return got


def merge_shards(parts: Sequence[ShardRows]) -> pd.DataFrame:
    """The shards' rows in (event, door) order: the table `build_feature_table` builds from the same events."""
    event = np.concatenate([p.event for p in parts]) if parts else np.zeros(0, np.int64)
    door = np.concatenate([p.door for p in parts]) if parts else np.zeros(0, np.int8)
    order = np.argsort(event * 2 + door, kind="stable")
    account = np.concatenate([p.account for p in parts])[order] if parts else np.zeros(0, object)
    ts = np.concatenate([p.ts for p in parts])[order] if parts else np.zeros(0, np.int64)
    if not parts:
        matrix = np.zeros((0, len(FEATURE_NAMES)))
    elif len(parts) == 1:
        matrix = parts[0].matrix[order]
    else:
        matrix = np.concatenate([p.matrix for p in parts])[order]
    return _frame(account, ts, matrix)


def build_feature_table_columns(table: Any, snapshots: SnapshotMode | ScoreSchedule = "scoring", *,
                                shards: int = 1) -> pd.DataFrame:
    """`build_feature_table` from a pyarrow Table of ts-ordered signals, replayed in `shards` account
    shards one after the other (in-process; models.training runs the shards in parallel processes)."""
    plan = plan_replay(table)
    where = plan.shards_of(shards) if shards > 1 else None
    parts = [replay_shard(plan, k, shards, snapshots, shard_codes=where) for k in range(shards)]
    return merge_shards(parts)
