"""Parity: every streaming operator against a batch (pandas/numpy) computation of the same feature.

The batch side is written from the feature's definition (docs/detection.md), not from the
operator code: events in the window = bucket(ts) within the last `buckets` buckets of the row's
time, up to and including the row's event. If training and serving ever disagree, this fails.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from detection.features import FEATURE_NAMES, VERIFIED_WEIGHT, WINDOWS, build_feature_table

from .synth import Synth

WIN = {w.name: w for w in WINDOWS}


@pytest.fixture(scope="module")
def stream() -> Synth:
    return with_saved_strangers(with_sessions(Synth(seed=11).population(normal=15, blasters=1, drips=1, farm=3,
                                                                        minutes=75, gap_ms=(2000, 20000)))
                                ).strictly_increasing()


def with_sessions(s: Synth, per_account: int = 6) -> Synth:
    """Sessions for every account over the stream's span, from one to four networks each (a home, a
    mobile, and for some a network they move to late — a hijacker's), merged in time order."""
    rng = s.rng
    accounts = [*s.normal, *s.spammers]
    start, end = s.events[0].ts, s.events[-1].ts
    extra = []
    for i, a in enumerate(accounts):
        nets = [f"n{(i * 7 + k) % 23:012x}" for k in range(1 + i % 4)]  # some networks shared
        for _ in range(per_account):
            t = rng.randrange(start, end)
            # the last network only in the stream's second half: a move to a network never used
            net = nets[-1] if t > (start + end) // 2 and rng.random() < 0.7 else rng.choice(nets[:-1] or nets)
            extra.append(s.book.session_opened(a, net, ts=t))
    s.events = sorted([*s.events, *extra], key=lambda ev: ev.ts)
    return s


def with_saved_strangers(s: Synth) -> Synth:
    """Contact adds followed by a first message: strangers (new accounts) and acquaintances (who may
    have written first), saved 0.5 s to 5 minutes before the message (both sides of the 2-minute
    bound), some written to twice, some added and never written to; merged in time order."""
    from sealguard.contracts import MessageKind, new_account_id

    rng = s.rng
    start, end = s.events[0].ts + 400_000, s.events[-1].ts
    extra = []
    for i, a in enumerate([*s.spammers, *s.normal[:6]]):
        for _ in range(3 + i % 4):
            t = rng.randrange(start, end)
            x = new_account_id() if rng.random() < 0.7 else rng.choice(s.normal)
            if x == a:
                continue
            d = rng.choice([500, 30_000, 119_000, 121_000, 300_000])
            extra.append(s.book.contact_added(a, x, ts=t - d))
            if rng.random() < 0.85:
                extra.append(s.book.message_sent(a, x, 100, MessageKind.text, True, ts=t))
                if rng.random() < 0.3:
                    extra.append(s.book.message_sent(a, x, 100, MessageKind.text, True, ts=t + 5_000))
    s.events = sorted([*s.events, *extra], key=lambda ev: ev.ts)
    return s


@pytest.fixture(scope="module")
def table(stream: Synth) -> pd.DataFrame:
    return build_feature_table(stream.events, "every")


@pytest.fixture(scope="module")
def frame(stream: Synth) -> pd.DataFrame:
    rows = []
    for ev in stream.events:
        d = ev.model_dump()
        rows.append({"type": ev.type, "ts": ev.ts, "sender": d.get("sender"), "recipient": d.get("recipient"),
                     "first_contact": bool(d.get("first_contact", False)), "blocked": d.get("blocked"),
                     "reported": d.get("reported"), "verified": d.get("messages_verified", 0) or 0,
                     "actor": d.get("actor"), "member": d.get("member"),
                     "member_is_contact": bool(d.get("member_is_contact", False)),
                     "account": d.get("account"), "net_bucket": d.get("net_bucket"),
                     "contact": d.get("contact")})
    return pd.DataFrame(rows)


def _in_window(ts: pd.Series, t: int, window: str) -> pd.Series:
    w = WIN[window]
    return (ts <= t) & (ts // w.width_ms > t // w.width_ms - w.buckets)


def expected(f: pd.DataFrame, name: str, a: str, t: int) -> float:
    """The batch definition of feature `name` for account `a` as of time `t`."""
    upto = f[f.ts <= t]
    sends = upto[(upto.type == "message.sent") & (upto.sender == a)]
    direct = sends[sends.recipient.notna()]
    if name == "account_age_s":
        reg = upto[(upto.type == "account.registered") & (upto.account == a)]
        return (t - int(reg.ts.iloc[0])) / 1000.0
    if name == "sends_total":
        return float(len(sends))
    if name == "blocks_total":
        return float(((upto.type == "contact.blocked") & (upto.blocked == a)).sum())
    reps = upto[(upto.type == "report.filed") & (upto.reported == a)]
    if name == "reports_total":
        return float(np.where(reps.verified > 0, VERIFIED_WEIGHT, 1).sum())
    if name == "verified_reports_total":
        return float((reps.verified > 0).sum())
    if name in BEHAVIOUR_CHANGE:
        return expected_behaviour_change(f, name, a, t)
    if name in ("networks_total", "network_age_s"):
        return expected_network(f, name, a, t)
    if name.startswith("saved_first_contacts_"):
        return expected_saved(f, name, a, t)
    window = name.rsplit("_", 1)[1]
    inw = lambda df: df[_in_window(df.ts, t, window)]
    d = inw(direct)
    recipients = float(d.recipient.nunique())
    if name.startswith("sends_"):
        return float(len(inw(sends)))
    if name.startswith("recipients_"):
        return recipients
    if name.startswith("received_"):
        return float(len(inw(upto[(upto.type == "message.sent") & (upto.recipient == a)])))
    if name.startswith("first_contact_share_"):
        return float(d.first_contact.mean()) if len(d) else 0.0
    if name.startswith("reply_share_"):
        if not len(d):
            return 0.0
        inbound = upto[(upto.type == "message.sent") & (upto.recipient == a)]
        first_in = inbound.groupby("sender").ts.min()
        replies = [r in first_in.index and first_in[r] < ts for r, ts in zip(d.recipient, d.ts)]
        return float(np.mean(replies))
    if name.startswith("blocks_per_recipient_"):
        return len(inw(upto[(upto.type == "contact.blocked") & (upto.blocked == a)])) / max(1.0, recipients)
    if name.startswith("reports_per_recipient_"):
        r = inw(reps)
        return float(np.where(r.verified > 0, VERIFIED_WEIGHT, 1).sum()) / max(1.0, recipients)
    if name.startswith("strangers_added_"):
        adds = upto[upto.type.isin(["group.member_added", "group.created"]) & (upto.actor == a)
                    & upto.member.notna() & ~upto.member_is_contact]
        return float(len(inw(adds)))
    if name.startswith("burstiness_"):
        gaps = pd.DataFrame({"ts": sends.ts.iloc[1:].to_numpy(), "gap": np.diff(sends.ts.to_numpy())})
        g = inw(gaps).gap.to_numpy(dtype=float)
        if len(g) < 2:
            return 0.0
        mu, sd = g.mean(), g.std()
        return (sd - mu) / (sd + mu) if sd + mu > 0 else 0.0
    if name.startswith("net_registrations_"):
        regs = upto[upto.type == "account.registered"]
        mine = regs[regs.account == a]
        if not len(mine):
            return 0.0
        return float(len(inw(regs[regs.net_bucket == mine.net_bucket.iloc[0]])))
    raise AssertionError(f"no batch definition for {name}")


@pytest.mark.parametrize("name", FEATURE_NAMES)
def test_operator_matches_batch(name: str, table: pd.DataFrame, frame: pd.DataFrame, stream: Synth) -> None:
    # Every spammer row and a sample of normal rows, enough to cross each window's expiry.
    spam = table[table.account.isin(list(stream.spammers))]
    rows = pd.concat([spam.iloc[:: max(1, len(spam) // 40)], table.sample(n=min(40, len(table)), random_state=3)])
    assert len(rows) > 60
    mismatches = []
    for a, t, got in zip(rows.account, rows.ts, rows[name]):
        want = expected(frame, name, a, int(t))
        if not math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9):
            mismatches.append((a, int(t), got, want))
    assert not mismatches, f"{name}: {len(mismatches)} rows differ, e.g. {mismatches[:3]}"


def test_windows_really_expire(table: pd.DataFrame) -> None:
    """The stream is longer than an hour, so 1-minute and 1-hour counts must drop below lifetime ones."""
    assert (table.sends_1h < table.sends_total).any()
    assert (table.sends_1m < table.sends_1h).any()


def test_table_shape_and_columns(stream: Synth) -> None:
    df = build_feature_table(stream.events)
    assert list(df.columns) == ["account", "ts", *FEATURE_NAMES]
    assert len(df) > 0 and df.ts.is_monotonic_increasing
    assert build_feature_table([]).shape == (0, 2 + len(FEATURE_NAMES))


def test_fused_row_equals_each_operator(stream: Synth) -> None:
    """The fused row function (what the worker and the table run) equals each operator evaluated alone."""
    from detection.features import OPERATORS, FeatureEngine, feature_row

    engine = FeatureEngine()
    for i, ev in enumerate(stream.events):
        for account in engine.apply(ev):
            if account is not None and i % 7 == 0:
                st = engine.accounts[account]
                assert feature_row(st, engine, ev.ts) == [op.get(st, engine, ev.ts) for op in OPERATORS]


# -- rate-free and change-point features (appended with detection/features/operators.py's
# _behaviour_change_operators); each from its definition in docs/detection.md.
BEHAVIOUR_CHANGE = {"first_contacts_1h", "first_contacts_24h", "first_contacts_per_recipient_24h",
                    "unanswered_sends_1h", "unanswered_sends_24h", "messages_per_recipient_24h",
                    "blocks_per_first_contact_24h", "received_per_send_24h", "recipients_1h_of_24h",
                    "first_contacts_1h_of_24h"}


def expected_behaviour_change(f: pd.DataFrame, name: str, a: str, t: int) -> float:
    upto = f[f.ts <= t]
    direct = upto[(upto.type == "message.sent") & (upto.sender == a) & upto.recipient.notna()]
    inbound = upto[(upto.type == "message.sent") & (upto.recipient == a)]
    blocks = upto[(upto.type == "contact.blocked") & (upto.blocked == a)]

    def inw(df: pd.DataFrame, window: str) -> pd.DataFrame:
        return df[_in_window(df.ts, t, window)]

    def first_contacts(window: str) -> float:
        return float(inw(direct, window).first_contact.sum())

    def recipients(window: str) -> float:
        return float(inw(direct, window).recipient.nunique())

    def unanswered(window: str) -> float:
        d = inw(direct, window)
        first_in = inbound.groupby("sender").ts.min()
        return float(sum(not (r in first_in.index and first_in[r] < ts) for r, ts in zip(d.recipient, d.ts)))

    if name == "first_contacts_1h":
        return first_contacts("1h")
    if name == "first_contacts_24h":
        return first_contacts("24h")
    if name == "first_contacts_per_recipient_24h":
        return first_contacts("24h") / max(1.0, recipients("24h"))
    if name == "unanswered_sends_1h":
        return unanswered("1h")
    if name == "unanswered_sends_24h":
        return unanswered("24h")
    if name == "messages_per_recipient_24h":
        return len(inw(direct, "24h")) / max(1.0, recipients("24h"))
    if name == "blocks_per_first_contact_24h":
        return len(inw(blocks, "24h")) / max(1.0, first_contacts("24h"))
    if name == "received_per_send_24h":
        return len(inw(inbound, "24h")) / max(1.0, len(inw(direct, "24h")))
    if name == "recipients_1h_of_24h":
        day = recipients("24h")
        return recipients("1h") / day if day else 0.0
    if name == "first_contacts_1h_of_24h":
        day = first_contacts("24h")
        return first_contacts("1h") / day if day else 0.0
    raise AssertionError(f"no batch definition for {name}")


def expected_network(f: pd.DataFrame, name: str, a: str, t: int) -> float:
    """Networks of the account's registration and sessions up to `t`: how many distinct ones, and the
    seconds since it first used the network of the latest one."""
    mine = f[(f.ts <= t) & f.type.isin(["account.registered", "session.opened"]) & (f.account == a)]
    if name == "networks_total":
        return float(mine.net_bucket.nunique())
    if not len(mine):
        return 0.0
    latest = mine.net_bucket.iloc[-1]
    return (t - int(mine[mine.net_bucket == latest].ts.min())) / 1000.0


def expected_saved(f: pd.DataFrame, name: str, a: str, t: int) -> float:
    """Strangers saved first: direct messages of `a` in the window that are its first message to the
    recipient since its latest add of them, sent at most 120 s after that add, not flagged as a first
    contact, to someone who had never written to `a` before."""
    saved = _saved_sends(f)
    mine = saved[(saved.sender == a) & (saved.ts <= t)]
    return float(_in_window(mine.ts, t, name.rsplit("_", 1)[1]).sum())


_SAVED: dict[int, pd.DataFrame] = {}


def _saved_sends(f: pd.DataFrame) -> pd.DataFrame:
    """The direct messages of the stream that were a saved stranger's first (computed once per frame)."""
    if id(f) in _SAVED:
        return _SAVED[id(f)]
    adds = f[f.type == "contact.added"]
    direct = f[(f.type == "message.sent") & f.recipient.notna()]
    keep = []
    for i, s, r, ts, first in zip(direct.index, direct.sender, direct.recipient, direct.ts, direct.first_contact):
        mine = adds[(adds.account == s) & (adds.contact == r) & (adds.ts <= ts)]
        if not len(mine) or first or ((direct.sender == r) & (direct.recipient == s) & (direct.ts < ts)).any():
            continue
        added = int(mine.ts.max())
        since = (direct.sender == s) & (direct.recipient == r) & (direct.ts >= added) & (direct.ts < ts)
        if ts - added <= 120_000 and not since.any():
            keep.append(i)
    _SAVED[id(f)] = out = direct.loc[keep]
    return out


@pytest.mark.parametrize("name", ["saved_first_contacts_1h", "saved_first_contacts_24h"])
def test_saved_strangers_match_batch_on_every_row_that_has_them(name: str, table: pd.DataFrame,
                                                                frame: pd.DataFrame) -> None:
    """Every row of the accounts that saved someone (the sampled parity test above may miss them): the
    counts are non-trivial (several per account, the 2-minute bound and the window both bite)."""
    savers = set(frame[frame.type == "contact.added"].account) & set(table[table[name] > 0].account)
    rows = table[table.account.isin(savers)]
    assert len(savers) >= 5 and table[name].max() >= 3
    mismatches = [(a, int(t), got, expected_saved(frame, name, a, int(t)))
                  for a, t, got in zip(rows.account, rows.ts, rows[name])]
    mismatches = [m for m in mismatches if not math.isclose(m[2], m[3], abs_tol=1e-9)]
    assert not mismatches, f"{name}: {len(mismatches)} rows differ, e.g. {mismatches[:3]}"


def test_network_features_see_a_move(table: pd.DataFrame, stream: Synth) -> None:
    """The stream has accounts on one to four networks, some moving to a new one late: the operators
    see every count, and a move shows as a network younger than the account's first one."""
    assert set(table.networks_total.astype(int)) >= {1, 2, 3, 4}
    moved = table[table.networks_total >= 3]
    assert (moved.network_age_s < moved.account_age_s).any()


# -- the columnar, sharded replay (training's path) is the event replay, value for value -------------
@pytest.fixture(scope="module")
def columns(stream: Synth):
    from simulator.offline import signals_table

    return signals_table(stream.events)


@pytest.mark.parametrize("shards", [1, 3])
@pytest.mark.parametrize("mode", ["every", "scoring"])
def test_columnar_sharded_replay_equals_the_event_replay(stream: Synth, columns, mode: str,
                                                         shards: int) -> None:
    from detection.features.table import build_feature_table_columns

    want = build_feature_table(stream.events, mode)  # type: ignore[arg-type]
    got = build_feature_table_columns(columns, mode, shards=shards)  # type: ignore[arg-type]
    assert len(want) > 100
    pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_every_shard_counts_every_registration(stream: Synth, columns) -> None:
    """The farm registers from one bucket; its accounts land in different shards, yet each shard's
    net_registrations are the global count (a shard replays every registration into its NetBook)."""
    from detection.features.table import plan_replay, replay_shard

    plan = plan_replay(columns)
    farm = [a for a, kind in stream.spammers.items() if kind == "farm"]
    index = [list(plan.names).index(a) for a in farm]
    # Account ids are random: take the smallest shard count that spreads the farm over shards.
    n = next(n for n in range(3, 64) if len({int(c) for c in plan.shards_of(n)[index]}) > 1)
    where = plan.shards_of(n)
    for k in range(n):
        part = replay_shard(plan, k, n, "every", shard_codes=where)
        mine = np.isin(part.account, farm)
        if mine.any():
            col = list(FEATURE_NAMES).index("net_registrations_24h")
            assert part.matrix[mine, col].max() == len(farm)


def test_columnar_replay_of_a_self_event_matches(stream: Synth) -> None:
    """An event acting on one account through both doors (a message to oneself) takes the slow path."""
    from detection.features.table import build_feature_table_columns
    from sealguard.contracts import MessageKind
    from simulator.offline import signals_table

    a = next(iter(stream.spammers))
    events = list(stream.events[:300])
    for _ in range(3):
        events.append(stream.book.message_sent(a, a, 100, MessageKind.text, True, ts=events[-1].ts))
    want = build_feature_table(events, "every")
    got = build_feature_table_columns(signals_table(events), "every", shards=2)
    pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_record_doors_equal_the_event_doors(stream: Synth) -> None:
    """The worker's doors for decoded records (dicts from `decode_batch`, no event object) update the
    state exactly as the event doors do: every row of the replay is equal, and so are the accounts."""
    from detection.features import FeatureEngine, ScoreSchedule, feature_row
    from sealguard.contracts import encode
    from sealguard.contracts.batch import decode_batch

    records = decode_batch([encode(ev) for ev in stream.events])
    assert all(isinstance(r, dict) for r in records)
    by_event, by_record = FeatureEngine(), FeatureEngine()
    sched_a, sched_b = ScoreSchedule(), ScoreSchedule()
    rows_a: list[tuple[str, int, list[float]]] = []
    rows_b: list[tuple[str, int, list[float]]] = []
    for ev, rec in zip(stream.events, records):
        assert isinstance(rec, dict)
        sides = ((by_event, sched_a, rows_a, (by_event.apply_outbound(ev), by_event.apply_inbound(ev))),
                 (by_record, sched_b, rows_b, (by_record.outbound_record(rec), by_record.inbound_record(rec))))
        for engine, sched, rows, doors in sides:
            for account, received in zip(doors, (False, True)):
                if account is None:
                    continue
                st = engine.accounts[account]
                if sched.due(st, ev.ts, received=received):
                    sched.mark(st, ev.ts)
                    rows.append((account, ev.ts, feature_row(st, engine, ev.ts)))
    assert rows_a == rows_b and len(rows_a) > 100
    assert by_event.accounts.keys() == by_record.accounts.keys()
    for account, st in by_event.accounts.items():
        assert feature_row(st, by_event, stream.now) == feature_row(by_record.accounts[account], by_record, stream.now)


def test_a_checkpointed_account_from_before_the_network_fields_restores() -> None:
    """AccountState pickles as a tuple of its slots; one written before the network slots were appended
    restores with them empty, and then counts networks from its next session."""
    from detection.features import AccountState, FeatureEngine
    from detection.features.state import _restore_account_state

    t0 = 1_800_000_000_000
    engine = FeatureEngine()
    engine.register(t0, "a", "n1")
    st = engine.accounts["a"]
    fn, values = st.__reduce__()
    old = fn(*values[:AccountState.__slots__.index("net_now")])  # the tuple an older build wrote
    assert (old.nets, old.net_now, old.nets_total) == (None, None, 0) and old.registered_ts == t0
    assert (old.added, old.saved) == (None, None)
    assert fn is _restore_account_state  # (`_restore_account` reads checkpoints written before the running sums)
    engine.accounts["a"] = old
    engine.session(t0 + 1_000, "a", "n2")
    assert engine.features("a", t0 + 2_000)[list(FEATURE_NAMES).index("networks_total")] == 1.0


def test_a_window_starts_at_any_time_even_the_epoch() -> None:
    """An empty ring takes its first bucket whatever the time (it once indexed the empty ring)."""
    from detection.features.windows import W24H, RollingVector

    rv = RollingVector(W24H, channels=2)
    rv.add(0, 0, 1.0)
    rv.add(3_600_000, 1, 2.0)
    assert rv.totals(3_600_000) == [1.0, 2.0]
    assert rv.totals(24 * 3_600_000) == [0.0, 2.0]  # bucket 0 left the 24 h window, bucket 1 is in it
