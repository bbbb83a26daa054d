"""The action policy: from (features, rule hits, score) to verdicts — decisions and review cases.

Pure and deterministic, so the online worker and `sealguard evaluate` run the very same policy;
the worker's sink (detection.sink) then writes what it decides through
`moderation.decisions.do_decide` and the cases table. Every verdict records what produced it:
the rule ids, the model version and the score.

* auto-ban: score ≥ `ban_threshold` **and** minimum evidence of abuse that the account's own
  metadata shows: a few messages sent, and either unsolicited outreach (strangers contacted first
  in the last hour or the last day, strangers pulled into groups) or verified reports from its
  recipients. A score alone never bans an account that has barely acted, nor one that only talks
  to people who know it — such an account goes to review (`model_review`) instead;
* an *established* account (older than `established_age_s`) that nobody has objected to yet (no
  block, no verified report) is banned on outreach only once that outreach is older than the
  last hour: a teacher writing to forty new parents looks like a spammer for the first minutes,
  and unlike one once the parents answer. A fresh account (a blaster, a farm) is not given that
  hour unless its outreach is answered (≥ half as many messages received as sent in the day: a new
  user writing to friends it has not saved yet; then talkative outreach does not skip the hour
  either), and one objection is enough for anyone. Between 7 and 30 days old the wait holds only an
  account with a life in the day (≥ 2 direct messages received): a days-old blaster or farm account
  nobody writes to is not given the hour. A brigade's blocks (filed with unverified reports) are not
  objections;
* outreach may also be: blocks standing for strangers (a hijacked account writing to its own
  contacts, who block it), or talkative outreach (≥ 2 strangers contacted first, ≥ 75% of the day's
  recipients, ≥ 3 messages each: a conversational scam; it needs no wait — the conversations are
  their own evidence of time passing, and reaching 2 such strangers is enough — but, being the
  thinnest evidence, a ban score ≥ `talkative_min_score`);
* strangers saved as contacts seconds before the first message to them (`saved_first_contacts_*`:
  the add hides the relay's `first_contact`) count as strangers contacted, everywhere above;
* takeover: an old account that has just moved to a network it never used, after using others (a
  hijacker's /24), is evidence on its own once it reached a few people — a hijacker writes to the
  owner's contacts, no strangers (see `takeover`; the thresholds rest on the simulator's two networks
  per person);
* review case (`model_review`): `review_threshold` ≤ score < ban, priority = score × reach
  (1 + people reached in 24 h), once per account;
* rules: `restrict`/`ban` act (actor = the rule), `review` opens a case;
* `user_reports` case when the account receives a verified report and is not banned;
* a stable sample of auto-bans also opens an `auto_ban_sample` case, for quality review.

The account's standing action and opened queues live in its AccountState (checkpointed with the
features), so nothing is enforced twice across restarts.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detection.features import FEATURE_INDEX, VERIFIED_WEIGHT, AccountState
from detection.rules import Rule
from sealguard.contracts import Action, ReasonCode

QUEUE_BITS = {"model_review": 1, "user_reports": 2, "auto_ban_sample": 4, "rule_review": 8}

_SENDS = FEATURE_INDEX["sends_total"]
_RECIPIENTS_24H = FEATURE_INDEX["recipients_24h"]
_STRANGERS_24H = FEATURE_INDEX["strangers_added_24h"]
_VERIFIED = FEATURE_INDEX["verified_reports_total"]
_REPORTS = FEATURE_INDEX["reports_total"]
_SENDS_1H = FEATURE_INDEX["sends_1h"]
_BLOCKS = FEATURE_INDEX["blocks_total"]
_FIRST_SHARE_1H = FEATURE_INDEX["first_contact_share_1h"]
_FIRST_1H = FEATURE_INDEX["first_contacts_1h"]
_FIRST_24H = FEATURE_INDEX["first_contacts_24h"]
_STRANGERS_1H = FEATURE_INDEX["strangers_added_1h"]
_AGE = FEATURE_INDEX["account_age_s"]
_FIRST_PER_RECIPIENT_24H = FEATURE_INDEX["first_contacts_per_recipient_24h"]
_MESSAGES_PER_RECIPIENT_24H = FEATURE_INDEX["messages_per_recipient_24h"]
_RECEIVED_24H = FEATURE_INDEX["received_24h"]
_RECEIVED_PER_SEND_24H = FEATURE_INDEX["received_per_send_24h"]
# Network features (detection/features: networks_total, network_age_s); a feature list without them
# (an older build) turns the takeover evidence off.
_NETWORKS = FEATURE_INDEX.get("networks_total", -1)
_NETWORK_AGE = FEATURE_INDEX.get("network_age_s", -1)
# Strangers saved as contacts seconds before the first message (detection/features: saved_first_contacts_*).
_SAVED_1H = FEATURE_INDEX.get("saved_first_contacts_1h", -1)
_SAVED_24H = FEATURE_INDEX.get("saved_first_contacts_24h", -1)


_REPORT_COLS = [i for name, i in FEATURE_INDEX.items() if name.startswith("reports_per_recipient_")]
# Block features: a brigade blocks as it reports, so they are discounted with its reports.
_BLOCK_COLS = [i for name, i in FEATURE_INDEX.items()
               if name.startswith(("blocks_per_recipient_", "blocks_per_first_contact_")) or name == "blocks_total"]


def ban_scores(model: Any, rows: np.ndarray, scores: np.ndarray, threshold: float, *,
               brigade_blocks: bool = True) -> np.ndarray:
    """Scores for the ban decision: rows at or above `threshold` are re-scored as if only their
    *verified* reports had been filed.

    A brigade (many accounts falsely mass-reporting an innocent one) files reports whose named
    messages the relay cannot verify. They may raise a review case, never an automatic ban on
    their own: if the score falls below the threshold without them, no auto-ban. A brigade's
    members also block the account as they report, so with `brigade_blocks` the block features are
    scaled by the same verified share (the blocks that came with verified reports are kept)."""
    out = np.array(scores, dtype=np.float64, copy=True)
    if model is None or len(out) == 0:
        return out
    total = rows[:, _REPORTS]
    verified_w = VERIFIED_WEIGHT * rows[:, _VERIFIED]
    idx = np.nonzero((out >= threshold) & (total > verified_w))[0]
    if len(idx) == 0:
        return out
    adjusted = rows[idx].copy()
    keep = np.where(total[idx] > 0, verified_w[idx] / np.maximum(total[idx], 1e-9), 1.0)
    adjusted[:, _REPORT_COLS] *= keep[:, None]
    adjusted[:, _REPORTS] = verified_w[idx]
    if brigade_blocks:
        adjusted[:, _BLOCK_COLS] *= keep[:, None]
    out[idx] = np.minimum(out[idx], model.score(adjusted))
    return out


@dataclass(frozen=True)
class Verdict:
    """One thing the policy wants done: a decision (`action` set) or a case (`queue` set)."""

    account: str
    ts: int
    action: Action | None = None
    queue: str | None = None
    priority: float = 0.0
    reason_code: ReasonCode = ReasonCode.spam
    actor: str = "detection"
    score: float | None = None
    model_version: str | None = None
    rule_ids: tuple[str, ...] = ()

    @property
    def evidence(self) -> dict[str, object]:
        return {"rules": list(self.rule_ids), "score": self.score, "model_version": self.model_version}


@dataclass
class Policy:
    ban_threshold: float = 0.95
    review_threshold: float = 0.5
    min_sends: int = 3  # minimum evidence for a model ban: messages sent ...
    min_recipients: int = 3  # ... reaching at least this many people in 24 h (recipients + strangers added)
    min_outreach: int = 3  # ... of them unsolicited: strangers contacted first (1 h or 24 h) + added to groups (24 h)
    min_verified_reports: int = 2  # ... or this many verified reports from its recipients
    # An established account without objections needs `min_settled_outreach` of it to be older
    # than the last hour (see the module docstring); None turns the rule off.
    established_age_s: float | None = 7 * 86_400.0
    min_settled_outreach: int = 2
    # Between `established_age_s` and `long_established_age_s` the wait holds only an account with a
    # life of its own in the day (≥ `min_received_for_life` direct messages received): a days-old
    # blaster or farm account that nobody writes to is not given the hour (a teacher that young
    # still talks with people). None: every established account waits.
    long_established_age_s: float | None = 30 * 86_400.0
    min_received_for_life: int = 2
    # A younger account waits too once its outreach is answered (≥ `fresh_answered_share` direct
    # messages received per direct message sent in the day, ≥ `min_received_for_life` of them): a
    # new user writing to friends not saved yet, who answer. Blasters and farms are rarely answered.
    # None: a younger account never waits.
    fresh_answered_share: float | None = 0.5
    # Objections as evidence: a recipient's block stands for a stranger contacted (a hijacked account
    # writing to its own contacts reaches few strangers, but its contacts block it) — only while no
    # unverified report hangs on the account (a brigade blocks as it reports). False turns it off.
    blocks_count_as_outreach: bool = True
    # Talkative outreach: ≥ `min_conversation_strangers` strangers contacted first in a day, making up
    # ≥ `min_conversation_share` of its recipients, ≥ `min_messages_per_recipient` messages each (a
    # conversational scam keeps a few strangers talking; a teacher writes once or twice to many
    # parents, most of them saved first). None turns it off.
    min_conversation_strangers: int | None = 2
    min_conversation_share: float = 0.75
    min_messages_per_recipient: float = 3.0
    # Talkative outreach is the thinnest evidence (two strangers kept talking is also a person who
    # met two new people): it counts only under a model ban score of at least this. None: the ban
    # threshold.
    talkative_min_score: float | None = 0.98
    # Takeover: an account older than `takeover_min_age_s` whose latest session comes from a network it
    # first used less than `takeover_window_s` ago, after `takeover_min_networks` - 1 others (a
    # hijacker's sessions move to its own network) — evidence on its own, wait included, once it reached
    # `min_recipients` people (a hijacker writes to the owner's contacts, who know it). None: off.
    takeover_min_networks: int | None = 3
    takeover_window_s: float = 6 * 3600.0
    takeover_min_age_s: float = 30 * 86_400.0
    # Strangers saved as contacts seconds before the first message to them count as strangers
    # contacted (the add hides the relay's `first_contact`): in outreach, the wait and talkative
    # outreach. False: only the relay's first contacts count.
    saved_strangers: bool = True
    # Optional, off by default: a model ban also needs this many objections from recipients (blocks,
    # verified reports). For a model trained on little data (`sealguard up`'s warm-up), whose early
    # scores cannot tell a teacher's first messages to parents from a spammer's.
    min_objections: int = 0
    # Optional, off by default: a ban score that reached the ban threshold stays decisive this many
    # seconds (the account's peak counts, not only the score at the moment). Objections arrive minutes
    # after the messages they object to, while an early model's score of the same account may sink as
    # it keeps acting (`sealguard up`'s warm-up model, with `min_objections`): without it the score and
    # the objections must coincide at one scoring moment.
    recent_score_s: float | None = None
    sample_per_mille: int = 50  # auto-bans also sampled into `auto_ban_sample` (5%)
    stats: dict[str, int] = field(default_factory=lambda: {"bans": 0, "restricts": 0, "cases": 0})

    def decide(self, account: str, st: AccountState, row: Sequence[float], ts: int, score: float | None,
               model_version: str | None, hits: Sequence[Rule], ban_score: float | None = None) -> list[Verdict]:
        """Verdicts for one scoring moment. Marks them on `st` (the sink un-marks one that fails).

        `ban_score` (see `ban_scores`) decides the auto-ban; `score` everything else."""
        if st.action == "ban":
            return []
        out: list[Verdict] = []
        rule_ids = tuple(r.id for r in hits)
        # Reach = distinct direct recipients + strangers pulled into groups (a group spammer reaches
        # people through the groups it stuffs, not one-to-one).
        reach_24h = row[_RECIPIENTS_24H] + row[_STRANGERS_24H]
        decisive = score if ban_score is None else ban_score
        if self.recent_score_s is not None and decisive is not None:
            if decisive >= self.ban_threshold:
                st.peak_ts = ts
            elif st.peak_ts is not None and 0 <= ts - st.peak_ts <= self.recent_score_s * 1000:
                decisive = self.ban_threshold  # its recent peak
        evidence = row[_SENDS] >= self.min_sends and (
            (self.abuse_evidence(row, decisive) and (reach_24h >= self.min_recipients
                                                     or self.talkative(row, decisive)))
            or (reach_24h >= self.min_recipients and self.takeover(row)))
        # 1) the model, with minimum evidence
        if decisive is not None and decisive >= self.ban_threshold and evidence:
            return self._banned(self._ban(account, ts, model_version or "model", ReasonCode.spam, score,
                                          model_version, rule_ids, st), st)
        # 2) rules
        for rule in hits:
            if rule.action == "ban":
                return self._banned(self._ban(account, ts, rule.actor, ReasonCode.rule_hit, score, model_version,
                                              rule_ids, st), st)
        for rule in hits:
            if rule.action == "restrict" and st.action is None:
                st.action = "restrict"
                self.stats["restricts"] += 1
                out.append(Verdict(account, ts, action=Action.restrict, reason_code=ReasonCode.rule_hit,
                                   actor=rule.actor, score=score, model_version=model_version, rule_ids=rule_ids))
                break
        reach = 1.0 + reach_24h
        if any(r.action == "review" for r in hits):
            out += self._case(st, account, ts, "rule_review", (score or 0.5) * reach, score, model_version, rule_ids)
        # 3) review between thresholds
        if score is not None and score >= self.review_threshold:
            out += self._case(st, account, ts, "model_review", score * reach, score, model_version, rule_ids)
        # 4) verified reports
        if row[_VERIFIED] >= 1:
            out += self._case(st, account, ts, "user_reports", row[_REPORTS], score, model_version, rule_ids)
        return out

    def may_act(self, rows: np.ndarray, scores: np.ndarray | None, bans: np.ndarray | None,
                hits: Sequence[Sequence[Rule]]) -> np.ndarray:
        """For a poll's score matrix: False where `decide` returns [] whatever the account's state —
        no ban score at the ban threshold, no rule hit, no score at the review threshold, no verified
        report (each of `decide`'s verdicts needs one of them; the same float64 comparisons, a NaN
        score failing them all as in `decide`). The worker calls `decide` only where True: most
        scoring moments decide nothing. With `recent_score_s` every row may act (`decide` keeps the
        account's peak), so all are True."""
        n = len(rows)
        if self.recent_score_s is not None:
            return np.ones(n, dtype=bool)
        out = rows[:, _VERIFIED] >= 1
        if scores is not None:
            out |= scores >= self.review_threshold
            out |= (scores if bans is None else bans) >= self.ban_threshold
        out |= np.fromiter(map(bool, hits), bool, count=n)
        return out

    def abuse_evidence(self, row: Sequence[float], score: float | None = None) -> bool:
        """Unsolicited outreach, or recipients' objections: what a model ban must rest on.

        Outreach = strangers contacted first (in the last hour, or the last day: a slow or talkative
        spammer contacts one stranger an hour) + strangers added to groups in 24 h, + blocks when no
        unverified report hangs on the account; or ≥ 2 verified reports; or talkative outreach (a
        few strangers, each kept in conversation — see the fields)."""
        strangers = row[_STRANGERS_24H]
        saved_24h, saved_1h = self._saved(row)
        first = max(round(row[_FIRST_SHARE_1H] * row[_SENDS_1H]), row[_FIRST_24H]) + saved_24h
        outreach = first + strangers
        # Blocks count as objections only while no unverified report hangs on the account: a brigade
        # blocks as it falsely reports, so its blocks must not lift the wait nor stand for outreach.
        blocks = row[_BLOCKS] if row[_REPORTS] <= VERIFIED_WEIGHT * row[_VERIFIED] else 0.0
        objections = blocks + row[_VERIFIED]
        if self.min_objections and objections < self.min_objections:
            return False
        if self.blocks_count_as_outreach and outreach >= 1:
            outreach += blocks
        if outreach >= self.min_outreach or row[_VERIFIED] >= self.min_verified_reports:
            pass
        elif self.talkative(row, score):
            return True  # its own evidence of time passing: several messages to each stranger
        else:
            return False
        if self.established_age_s is None or objections >= 1:
            return True
        fresh = row[_AGE] < self.established_age_s
        if fresh:
            waits = (self.fresh_answered_share is not None and row[_RECEIVED_24H] >= self.min_received_for_life
                     and row[_RECEIVED_PER_SEND_24H] >= self.fresh_answered_share)
        else:
            waits = (self.long_established_age_s is None or row[_AGE] >= self.long_established_age_s
                     or row[_RECEIVED_24H] >= self.min_received_for_life)
        if not waits:
            return True
        settled = row[_FIRST_24H] - row[_FIRST_1H] + saved_24h - saved_1h + strangers - row[_STRANGERS_1H]
        # Talkative outreach stands in for the hour on an established account; a fresh one that is
        # answered (a new user chatting with friends it has not saved yet) waits for it.
        return settled >= self.min_settled_outreach or (not fresh and self.talkative(row, score))

    def takeover(self, row: Sequence[float]) -> bool:
        """An old account that has just moved to a network it never used, after using others."""
        return (self.takeover_min_networks is not None and _NETWORKS >= 0
                and row[_NETWORKS] >= self.takeover_min_networks
                and row[_NETWORK_AGE] < self.takeover_window_s and row[_AGE] >= self.takeover_min_age_s
                and not self.min_objections)

    def talkative(self, row: Sequence[float], score: float | None = None) -> bool:
        """A few strangers contacted first, most of the day's recipients, each kept talking (and, with
        `talkative_min_score`, a `score` that high — an unknown score passes)."""
        if self.min_conversation_strangers is None:
            return False
        if self.talkative_min_score is not None and score is not None and score < self.talkative_min_score:
            return False
        saved = self._saved(row)[0]
        first = row[_FIRST_24H] + saved
        share = row[_FIRST_PER_RECIPIENT_24H] if not saved else first / max(1.0, row[_RECIPIENTS_24H])
        return (first >= self.min_conversation_strangers and share >= self.min_conversation_share
                and row[_MESSAGES_PER_RECIPIENT_24H] >= self.min_messages_per_recipient)

    def _saved(self, row: Sequence[float]) -> tuple[float, float]:
        """Strangers saved first (24 h, 1 h), when the policy counts them and the row has them."""
        if not self.saved_strangers or _SAVED_24H < 0 or len(row) <= _SAVED_24H:
            return 0.0, 0.0
        return row[_SAVED_24H], row[_SAVED_1H]

    def _ban(self, account: str, ts: int, actor: str, reason: ReasonCode, score: float | None,
             model_version: str | None, rule_ids: tuple[str, ...], st: AccountState) -> Verdict:
        st.action = "ban"
        self.stats["bans"] += 1
        return Verdict(account, ts, action=Action.ban, reason_code=reason, actor=actor, score=score,
                       model_version=model_version, rule_ids=rule_ids)

    def _banned(self, ban: Verdict, st: AccountState) -> list[Verdict]:
        sample = self.sample_case(ban, st)
        return [ban] if sample is None else [ban, sample]

    def _case(self, st: AccountState, account: str, ts: int, queue: str, priority: float, score: float | None,
              model_version: str | None, rule_ids: tuple[str, ...]) -> list[Verdict]:
        bit = QUEUE_BITS[queue]
        if st.cases & bit:
            return []
        st.cases |= bit
        self.stats["cases"] += 1
        return [Verdict(account, ts, queue=queue, priority=float(priority), score=score,
                        model_version=model_version, rule_ids=rule_ids)]

    def sampled(self, account: str) -> bool:
        """Whether an auto-ban of `account` also goes to the `auto_ban_sample` queue (stable per account)."""
        return zlib.crc32(account.encode()) % 1000 < self.sample_per_mille

    def sample_case(self, ban: Verdict, st: AccountState) -> Verdict | None:
        if ban.action is not Action.ban or not self.sampled(ban.account):
            return None
        got = self._case(st, ban.account, ban.ts, "auto_ban_sample", ban.score or 1.0, ban.score,
                         ban.model_version, ban.rule_ids)
        return got[0] if got else None


def queue_of(v: Verdict) -> str:
    """Cases table queue name ('rule_review' cases land in 'model_review', the reviewers' queue)."""
    return "model_review" if v.queue == "rule_review" else (v.queue or "")
