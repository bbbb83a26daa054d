"""Each behaviour leaves the metadata trail real users and spammers leave (on train_small)."""

from __future__ import annotations

from collections import Counter, defaultdict

import pandas as pd

from sealguard.contracts import (
    AccountRegistered,
    ContactAdded,
    GroupMemberAdded,
    MessageSent,
    SessionOpened,
)
from simulator.offline import SimulationResult
from simulator.stats import account_summary, role_table


def _roles(result: SimulationResult) -> dict[str, str]:
    return dict(zip(result.truth["account"], result.truth["role"]))


def test_role_table_separates_people_from_spammers(small_result: SimulationResult) -> None:
    table = role_table(account_summary(small_result.events, small_result.truth))
    normal = table.loc["normal"]
    assert normal["reply_share"] >= 0.8 and normal["first_contact_share"] <= 0.02
    for strategy in ("blaster", "slow_drip", "farm", "ring"):
        assert table.loc[strategy, "first_contact_share"] >= 0.4, strategy
        assert table.loc[strategy, "reply_share"] <= 0.3, strategy
    assert table.loc["conversational_scam", "reply_share"] >= 0.25  # it gets answers
    # Hard cases are heavy: many sends and recipients, far above the ordinary median.
    for case in ("small_business", "teacher", "community_admin"):
        assert table.loc[case, "sends"] >= 3 * normal["sends"], case
        assert table.loc[case, "recipients"] >= 3 * normal["recipients"], case
    assert table.loc["teacher", "recipients"] >= 35


def test_farms_register_in_a_burst_from_one_network(small_result: SimulationResult) -> None:
    roles = _roles(small_result)
    farm = [e for e in small_result.events if isinstance(e, AccountRegistered) and roles[e.account] == "farm"]
    assert len(farm) == 10
    assert len({e.net_bucket for e in farm}) == 1
    assert max(e.ts for e in farm) - min(e.ts for e in farm) <= 10 * 60_000
    others = Counter(e.net_bucket for e in small_result.events if isinstance(e, AccountRegistered)
                     and roles[e.account] != "farm")
    assert farm[0].net_bucket not in others


def test_hijacked_accounts_have_history_then_a_new_network(small_result: SimulationResult) -> None:
    truth = small_result.truth.set_index("account")
    hijacked = set(truth.index[truth["role"] == "hijacked"])
    start = small_result.scenario.start_ms
    registered = {e.account: e.ts for e in small_result.events if isinstance(e, AccountRegistered)}
    contacts = Counter(e.account for e in small_result.events if isinstance(e, ContactAdded) and e.ts < start)
    buckets: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for e in small_result.events:
        if isinstance(e, SessionOpened) and e.account in hijacked:
            buckets[e.account].append((e.ts, e.net_bucket))
    for account in hijacked:
        assert registered[account] < start - 2 * 86_400_000  # an old account
        assert contacts[account] >= 1  # with friends
        first_spam = truth.loc[account, "first_spam_ts"]
        before = {b for t, b in buckets[account] if t < first_spam - 10 * 60_000}
        after = {b for t, b in buckets[account] if t >= first_spam - 5 * 60_000}
        assert after - before  # the hijacker's network is new


def test_ring_members_share_targets(small_result: SimulationResult) -> None:
    roles = _roles(small_result)
    hits: dict[str, set[str]] = defaultdict(set)
    for e in small_result.events:
        if isinstance(e, MessageSent) and e.recipient and roles[e.sender] == "ring" and roles[e.recipient] != "ring":
            hits[e.recipient].add(e.sender)
    assert hits
    assert sum(len(s) >= 2 for s in hits.values()) >= 0.5 * len(hits)


def test_group_spam_fills_groups_with_strangers(small_result: SimulationResult) -> None:
    roles = _roles(small_result)
    adds = [e for e in small_result.events if isinstance(e, GroupMemberAdded) and roles[e.actor] == "group_spam"]
    assert len(adds) >= 50
    assert sum(not e.member_is_contact for e in adds) / len(adds) > 0.95
    legit = [e for e in small_result.events if isinstance(e, GroupMemberAdded) and roles[e.actor] == "normal"]
    assert sum(e.member_is_contact for e in legit) / len(legit) > 0.5


def test_onboarding_adds_its_address_book_in_minutes(small_result: SimulationResult) -> None:
    roles = _roles(small_result)
    registered = {e.account: e.ts for e in small_result.events if isinstance(e, AccountRegistered)}
    adds: dict[str, list[int]] = defaultdict(list)
    for e in small_result.events:
        if isinstance(e, ContactAdded) and roles[e.account] == "new_user_onboarding":
            adds[e.account].append(e.ts - registered[e.account])
    assert len(adds) == 5
    for deltas in adds.values():
        early = [d for d in deltas if d <= 31 * 60_000]
        assert len(early) >= 15


def test_spam_activity_is_reported_and_blocked_more_than_people(small_result: SimulationResult) -> None:
    summary = account_summary(small_result.events, small_result.truth)
    spam = summary[summary["label"] == 1]
    people = summary[summary["role"] == "normal"]
    assert spam["blocks_received"].mean() > 20 * max(people["blocks_received"].mean(), 0.01)
    assert spam["verified_received"].sum() > 0
    assert isinstance(summary, pd.DataFrame)
