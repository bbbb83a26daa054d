"""The action policy: minimum evidence before a model ban, cases once per account, rules, samples."""

from __future__ import annotations

from detection.features import FEATURE_INDEX, FEATURE_NAMES, AccountState
from detection.policy import Policy
from detection.rules import parse_rules
from sealguard.contracts import Action

A = "a" + "1" * 20


def row(**values: float) -> list[float]:
    r = [0.0] * len(FEATURE_NAMES)
    for k, v in values.items():
        r[FEATURE_INDEX[k]] = v
    return r


def test_no_model_ban_for_an_account_that_only_talks_to_people_who_know_it() -> None:
    p, st = Policy(), AccountState(0)
    out = p.decide(A, st, row(sends_total=50, recipients_24h=20, sends_1h=20, first_contact_share_1h=0.0), 1, 0.99,
                   "lgbm-1", [])
    assert [v.queue for v in out] == ["model_review"]


def test_high_score_without_evidence_does_not_ban() -> None:
    p, st = Policy(), AccountState(0)
    out = p.decide(A, st, row(sends_total=1, recipients_24h=1), 1, 0.99, "lgbm-1", [])
    assert not any(v.action is Action.ban for v in out)
    assert [v.queue for v in out] == ["model_review"], "it goes to review instead"


def test_ban_with_evidence_records_what_produced_it_and_never_twice() -> None:
    p, st = Policy(), AccountState(0)
    out = p.decide(A, st, row(sends_total=5, recipients_24h=5, sends_1h=5, first_contact_share_1h=1.0), 1, 0.99,
                   "lgbm-1", [])
    ban = out[0]
    assert ban.action is Action.ban and ban.actor == "lgbm-1"
    assert ban.evidence == {"rules": [], "score": 0.99, "model_version": "lgbm-1"}
    assert st.action == "ban"
    assert p.decide(A, st, row(sends_total=9, recipients_24h=9), 2, 0.999, "lgbm-1", []) == []


def test_review_case_priority_is_score_times_reach_and_opens_once() -> None:
    p, st = Policy(), AccountState(0)
    (case,) = p.decide(A, st, row(sends_total=5, recipients_24h=9), 1, 0.6, "lgbm-1", [])
    assert case.queue == "model_review" and abs(case.priority - 0.6 * 10) < 1e-9
    assert p.decide(A, st, row(sends_total=6, recipients_24h=9), 2, 0.7, "lgbm-1", []) == []


def test_restrict_rule_and_user_reports_case() -> None:
    rules = parse_rules("""
rules:
  - {id: r1, description: x, action: restrict, when: {sends_1m: {gte: 10}}}
""")
    p, st = Policy(), AccountState(0)
    r = row(sends_1m=12, verified_reports_total=1, reports_total=3)
    out = p.decide(A, st, r, 1, 0.1, "lgbm-1", [x for x in rules if x.matches(r)])
    assert [(v.action, v.queue) for v in out] == [(Action.restrict, None), (None, "user_reports")]
    assert out[0].actor == "rule:r1" and out[0].rule_ids == ("r1",)
    assert p.decide(A, st, r, 2, 0.1, "lgbm-1", [x for x in rules if x.matches(r)]) == []


def test_auto_ban_sample_is_stable_per_account() -> None:
    p = Policy(sample_per_mille=1000)
    st = AccountState(0)
    out = p.decide(A, st, row(sends_total=5, recipients_24h=5, sends_1h=5, first_contact_share_1h=1.0), 1, 0.99,
                   "lgbm-1", [])
    assert [v.queue for v in out] == [None, "auto_ban_sample"]
    assert Policy(sample_per_mille=0).sampled(A) is False


def test_group_spam_reach_counts_as_evidence() -> None:
    """A group spammer reaches people through the strangers it adds, not through direct recipients."""
    p, st = Policy(), AccountState(0)
    out = p.decide(A, st, row(sends_total=10, recipients_24h=0, strangers_added_24h=40), 1, 0.99, "lgbm-1", [])
    assert out[0].action is Action.ban


def test_unverified_reports_alone_never_ban() -> None:
    """A brigade's reports cannot be verified: re-scored without them, the account is not banned."""
    import numpy as np

    from detection.policy import ban_scores

    class ReportsModel:  # scores 0.99 whenever any report weight is present
        def score(self, rows: np.ndarray) -> np.ndarray:
            return np.where(rows[:, FEATURE_INDEX["reports_total"]] > 0, 0.99, 0.1)

    brigaded = row(reports_total=25, verified_reports_total=0, reports_per_recipient_24h=5)
    spammer = row(reports_total=9, verified_reports_total=3, reports_per_recipient_24h=2)
    rows = np.asarray([brigaded, spammer])
    adjusted = ban_scores(ReportsModel(), rows, np.array([0.99, 0.99]), 0.95)
    assert adjusted.tolist() == [0.1, 0.99]
    p, st = Policy(), AccountState(0)
    out = p.decide(A, st, row(sends_total=5, recipients_24h=5, sends_1h=5, first_contact_share_1h=1.0), 1, 0.99,
                   "lgbm-1", [], ban_score=float(adjusted[0]))
    assert [v.queue for v in out] == ["model_review"], "a review case, not a ban"


def test_a_brigades_blocks_are_discounted_with_its_reports() -> None:
    """A brigade blocks as it reports: re-scored for the ban, its blocks go with its unverified reports
    (scaled by the verified share); a spammer's blocks without unverified reports stay."""
    import numpy as np

    from detection.policy import ban_scores

    class BlocksModel:  # scores 0.99 while the account was blocked more than three times
        def score(self, rows: np.ndarray) -> np.ndarray:
            return np.where(rows[:, FEATURE_INDEX["blocks_total"]] > 3, 0.99, 0.1)

    brigaded = row(reports_total=22, verified_reports_total=1, blocks_total=20, blocks_per_recipient_24h=4)
    spammer = row(reports_total=6, verified_reports_total=2, blocks_total=5, blocks_per_recipient_24h=1)
    rows = np.asarray([brigaded, spammer])
    assert ban_scores(BlocksModel(), rows, np.array([0.99, 0.99]), 0.95).tolist() == [0.1, 0.99]
    assert ban_scores(BlocksModel(), rows, np.array([0.99, 0.99]), 0.95, brigade_blocks=False).tolist() == [0.99, 0.99]


def test_min_objections_holds_a_model_ban_until_recipients_object() -> None:
    outreach = dict(sends_total=10, recipients_24h=10, sends_1h=10, first_contact_share_1h=1.0)
    p, st = Policy(min_objections=2), AccountState(0)
    assert [v.queue for v in p.decide(A, st, row(**outreach, blocks_total=1), 1, 0.99, "lgbm-1", [])] == \
        ["model_review"]
    out = p.decide(A, st, row(**outreach, blocks_total=2), 2, 0.99, "lgbm-1", [])
    assert out[0].action is Action.ban


DAY_S = 86_400.0


def test_slow_outreach_over_a_day_is_evidence() -> None:
    """A slow or talkative spammer contacts one stranger an hour: a day's first contacts count."""
    p, st = Policy(), AccountState(0)
    slow = row(sends_total=30, recipients_24h=6, sends_1h=2, first_contact_share_1h=0.5, first_contacts_1h=1,
               first_contacts_24h=5, account_age_s=3 * 3600)
    assert Policy(established_age_s=None).abuse_evidence(slow)
    out = p.decide(A, st, slow, 1, 0.99, "lgbm-1", [])
    assert out[0].action is Action.ban


def test_established_account_fan_out_waits_an_hour_unless_someone_objects() -> None:
    """A teacher writing to forty new parents: an old account, every stranger contacted in the last
    hour, nobody objecting. No ban on that burst alone; a ban once the outreach is older than the
    hour and still scores high, or at once when a recipient blocks or verifiably reports."""
    burst = dict(sends_total=25, recipients_24h=25, sends_1h=25, first_contact_share_1h=0.5, first_contacts_1h=12,
                 first_contacts_24h=12, account_age_s=400 * DAY_S)
    p, st = Policy(), AccountState(0)
    out = p.decide(A, st, row(**burst), 1, 0.99, "lgbm-1", [])
    assert not any(v.action is Action.ban for v in out)
    assert [v.queue for v in out] == ["model_review"]
    # ... the same account blocked by a recipient
    p, st = Policy(), AccountState(0)
    assert p.decide(A, st, row(**burst, blocks_total=1), 1, 0.99, "lgbm-1", [])[0].action is Action.ban
    # ... or an hour later, its outreach settled and the score still high
    later = dict(burst, sends_1h=0, first_contact_share_1h=0.0, first_contacts_1h=0)
    p, st = Policy(), AccountState(0)
    assert p.decide(A, st, row(**later), 2, 0.99, "lgbm-1", [])[0].action is Action.ban
    # a fresh account (a blaster) is not given the hour
    p, st = Policy(), AccountState(0)
    assert p.decide(A, st, row(**dict(burst, account_age_s=600.0)), 1, 0.99, "lgbm-1", [])[0].action is Action.ban


DAY = 86_400.0


def _banned(p: Policy, r: list[float], score: float = 0.99) -> bool:
    return any(v.action is Action.ban for v in p.decide(A, AccountState(0), r, 1, score, "lgbm-1", []))


def test_blocks_stand_for_outreach_of_an_account_writing_to_its_own_contacts() -> None:
    # A hijacked account: 12 recipients, all but 2 its own contacts, 2 of whom blocked it.
    hijacked = row(sends_total=30, recipients_24h=12, first_contacts_24h=2, blocks_total=2, account_age_s=300 * DAY)
    assert _banned(Policy(), hijacked)
    assert not _banned(Policy(blocks_count_as_outreach=False), hijacked)
    assert not _banned(Policy(), row(sends_total=30, recipients_24h=12, blocks_total=2, account_age_s=300 * DAY)), \
        "blocks alone, with no stranger contacted at all, are not outreach"


def test_brigade_blocks_neither_count_as_outreach_nor_lift_the_wait() -> None:
    # A teacher who just wrote to 4 new parents, brigaded: 14 blocks and 25 unverified report weights.
    teacher = row(sends_total=28, recipients_24h=8, first_contacts_1h=4, first_contacts_24h=4, blocks_total=14,
                  reports_total=25, account_age_s=590 * DAY, messages_per_recipient_24h=1.5,
                  first_contacts_per_recipient_24h=0.5)
    assert not _banned(Policy(), teacher)
    honest = list(teacher)
    honest[FEATURE_INDEX["reports_total"]] = 0.0
    assert _banned(Policy(), honest), "the same blocks with no unverified report do lift the wait"


def test_talkative_outreach_to_a_few_strangers_is_evidence() -> None:
    # A conversational scam: 3 strangers, all its recipients today, 4 messages each, first contacts an hour old.
    scam = row(sends_total=12, recipients_24h=3, first_contacts_24h=3, first_contacts_1h=2,
               first_contacts_per_recipient_24h=1.0, messages_per_recipient_24h=4.0, account_age_s=200 * DAY)
    assert _banned(Policy(), scam)
    assert not _banned(Policy(min_conversation_strangers=None), scam), "the wait held it without the rule"
    parents = list(scam)
    parents[FEATURE_INDEX["first_contacts_per_recipient_24h"]] = 0.5  # most recipients were saved first
    assert not _banned(Policy(), parents)


def test_a_days_old_account_nobody_writes_to_is_not_given_the_hour() -> None:
    # 3 strangers in the last minutes, no objection yet: a 12-day-old blaster vs a 12-day-old teacher.
    fan_out = dict(sends_total=4, recipients_24h=4, first_contacts_1h=3, first_contacts_24h=3, account_age_s=12 * DAY)
    assert _banned(Policy(), row(**fan_out)), "nobody writes to it: no wait"
    assert not _banned(Policy(), row(**fan_out, received_24h=5)), "a life of its own: it waits"
    assert not _banned(Policy(), row(**{**fan_out, "account_age_s": 40 * DAY})), "past 30 days everyone waits"
    assert not _banned(Policy(long_established_age_s=None), row(**fan_out))


def test_talkative_outreach_to_two_strangers_reaches_enough_people() -> None:
    scam = row(sends_total=11, recipients_24h=2, first_contacts_24h=2, first_contacts_1h=1,
               first_contacts_per_recipient_24h=1.0, messages_per_recipient_24h=5.5, account_age_s=120 * DAY)
    assert _banned(Policy(), scam)
    assert not _banned(Policy(), row(sends_total=11, recipients_24h=2, first_contacts_24h=2, account_age_s=DAY,
                                     first_contacts_per_recipient_24h=1.0, messages_per_recipient_24h=1.0)), \
        "two strangers written to once each reach too few people"


def test_a_fresh_account_whose_outreach_is_answered_waits_the_hour() -> None:
    # A new user (11 hours old) chatting with three people it has not saved yet, who answer: three
    # messages each, two of the first contacts in the last hour. A blaster is rarely answered.
    new_user = {"sends_total": 9, "recipients_24h": 3, "first_contacts_24h": 3, "first_contacts_1h": 2,
                "first_contacts_per_recipient_24h": 1.0, "messages_per_recipient_24h": 3.0, "account_age_s": 11 * 3600}
    assert not _banned(Policy(), row(**new_user, received_24h=8, received_per_send_24h=8 / 9))
    assert _banned(Policy(fresh_answered_share=None), row(**new_user, received_24h=8, received_per_send_24h=8 / 9))
    assert _banned(Policy(), row(**new_user, received_24h=1, received_per_send_24h=1 / 9)), "not answered: no wait"
    settled = {**new_user, "first_contacts_1h": 0}
    assert _banned(Policy(), row(**settled, received_24h=8, received_per_send_24h=8 / 9)), "an hour later it may be"
    objected = row(**new_user, received_24h=8, received_per_send_24h=8 / 9, blocks_total=1)
    assert _banned(Policy(), objected), "one objection lifts the wait"


def test_an_old_account_on_a_network_it_never_used_needs_no_strangers() -> None:
    # A hijacked 2-year-old account: its sessions moved 20 minutes ago to a third network; it writes to
    # the owner's contacts (no stranger, nobody objected yet), who know it.
    hijacked = {"sends_total": 12, "recipients_24h": 6, "account_age_s": 700 * DAY, "networks_total": 3,
                "network_age_s": 1200}
    assert _banned(Policy(), row(**hijacked))
    assert not _banned(Policy(takeover_min_networks=None), row(**hijacked)), "no outreach: no ban without it"
    assert not _banned(Policy(), row(**{**hijacked, "networks_total": 2})), "home and mobile: no move"
    assert not _banned(Policy(), row(**{**hijacked, "network_age_s": 7 * 3600})), "moved long ago"
    assert not _banned(Policy(), row(**{**hijacked, "account_age_s": 10 * DAY})), "a young account"
    assert not _banned(Policy(), row(**{**hijacked, "recipients_24h": 2})), "reached too few people"


def test_strangers_saved_seconds_before_the_first_message_count_as_strangers() -> None:
    # A conversational scam on a 100-day-old account: 3 recipients, 1 a first contact, 2 saved as
    # contacts seconds before its first message (the relay's first_contact cannot see them).
    scam = {"sends_total": 12, "recipients_24h": 3, "first_contacts_24h": 1, "first_contacts_1h": 0,
            "first_contacts_per_recipient_24h": 1 / 3, "messages_per_recipient_24h": 4.0, "account_age_s": 100 * DAY,
            "saved_first_contacts_24h": 2, "saved_first_contacts_1h": 1}
    assert _banned(Policy(), row(**scam)), "three strangers, all its recipients, each kept talking"
    assert not _banned(Policy(saved_strangers=False), row(**scam)), "one first contact is not enough"
    # A blaster that saves every target first: fresh, nobody answers, no wait.
    blaster = row(sends_total=6, recipients_24h=6, saved_first_contacts_24h=6, saved_first_contacts_1h=6,
                  account_age_s=3600)
    assert _banned(Policy(), blaster)
    assert not _banned(Policy(saved_strangers=False), blaster)
    # An established account saving new people in the last hour waits it out, as with first contacts.
    recent = row(sends_total=6, recipients_24h=6, saved_first_contacts_24h=6, saved_first_contacts_1h=6,
                 account_age_s=300 * DAY, received_24h=4)
    assert not _banned(Policy(), recent)


def test_talkative_outreach_needs_a_higher_score() -> None:
    # Two strangers kept talking is also a person who met two new people: it bans only on a high score.
    two = row(sends_total=11, recipients_24h=2, first_contacts_24h=2, first_contacts_1h=1,
              first_contacts_per_recipient_24h=1.0, messages_per_recipient_24h=5.5, account_age_s=120 * DAY)
    assert _banned(Policy(), two, score=0.99)
    assert not _banned(Policy(), two, score=0.96)
    assert _banned(Policy(talkative_min_score=None), two, score=0.96)


def test_a_recent_peak_score_meets_objections_that_arrive_later() -> None:
    """`up`'s operating point: ban score ≥ 0.98 and 2 objections. The score was high at the spammer's
    first messages; the blocks came later, when its score had sunk."""
    early = row(sends_total=5, recipients_24h=5, sends_1h=5, first_contact_share_1h=1.0)
    later = row(sends_total=9, recipients_24h=9, sends_1h=9, first_contact_share_1h=1.0, blocks_total=2)
    for recent, banned in ((None, False), (3600.0, True)):
        p, st = Policy(min_objections=2, ban_threshold=0.98, recent_score_s=recent), AccountState(0)
        assert not any(v.action is Action.ban for v in p.decide(A, st, early, 1_000, 0.99, "m", []))
        out = p.decide(A, st, later, 600_000, 0.6, "m", [])
        assert any(v.action is Action.ban for v in out) is banned
    # ... but not once the peak is older than the window
    p, st = Policy(min_objections=2, ban_threshold=0.98, recent_score_s=3600.0), AccountState(0)
    p.decide(A, st, early, 1_000, 0.99, "m", [])
    assert not any(v.action is Action.ban for v in p.decide(A, st, later, 3_700_000, 0.6, "m", []))


def test_may_act_is_false_only_where_decide_says_nothing() -> None:
    """`Policy.may_act` lets the worker skip `decide` for most rows: wherever it is False, `decide`
    returns nothing, whatever the row's features (random rows around every threshold, NaN scores,
    rule hits); with `recent_score_s` every row may act."""
    import numpy as np

    rng = np.random.default_rng(5)
    rules = parse_rules("""
rules:
  - {id: r_restrict, description: test, action: restrict, when: {sends_1h: {gte: 8}}}
  - {id: r_review, description: test, action: review, when: {blocks_total: {gte: 3}}}
  - {id: r_ban, description: test, action: ban, when: {strangers_added_1h: {gte: 40}}}
""")
    n = 4000
    rows = rng.choice([0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 9.0, 40.0], size=(n, len(FEATURE_NAMES)))
    rows[:, FEATURE_INDEX["account_age_s"]] = rng.choice([60.0, 9 * 86_400.0, 40 * 86_400.0], size=n)
    scores = rng.choice([0.0, 0.1, 0.49, 0.5, 0.7, 0.949, 0.95, 0.97, 0.98, 0.999, float("nan")], size=n)
    bans = np.where(rng.random(n) < 0.2, scores * 0.9, scores)
    hits = [[r for r in rules if r.matches(x)] for x in rows.tolist()]
    for p in (Policy(), Policy(min_objections=1), Policy(review_threshold=0.3, ban_threshold=0.9),
              Policy(review_threshold=1.5)):  # no review cases: the ban threshold alone
        mask = p.may_act(rows, scores, bans, hits)
        assert 0 < mask.sum() < n
        for i in np.flatnonzero(~mask).tolist():
            assert p.decide(A, AccountState(0), rows[i].tolist(), 1, float(scores[i]), "m", hits[i],
                            ban_score=float(bans[i])) == []
        nothing = p.may_act(rows, None, None, [()] * n)  # no model: verified reports and rules only
        for i in np.flatnonzero(~nothing).tolist():
            assert p.decide(A, AccountState(0), rows[i].tolist(), 1, None, None, []) == []
    assert Policy(recent_score_s=3600).may_act(rows, scores, bans, hits).all()
