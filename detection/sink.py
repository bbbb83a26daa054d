"""Where the worker's verdicts and scores go: decisions through `do_decide`, cases and scores into
the database, scores onto `sg.scores.v1`.

Decisions never bypass moderation's one write path: `do_decide` writes the decision and its audit
row in one transaction, then publishes the enforcement. A double decision (a reviewer banned the
account first, or this worker already did before a restart) comes back as DecisionRejected and
is recorded as the account's standing action — never enforced twice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import insert
from sqlalchemy.exc import SQLAlchemyError

from detection.features import AccountState
from detection.policy import QUEUE_BITS, Verdict, queue_of
from moderation.decisions import DecisionRequest, EnforcementPublisher, active_decision, do_decide
from moderation.errors import DecisionRejected
from sealguard.contracts import Action, Contribution, DecisionSource, Score, encode, new_event_id, now_ms
from sealguard.storage import CaseRow, Database, ScoreRow

log = logging.getLogger(__name__)


@dataclass
class ScoreRecord:
    account: str
    ts: int
    model_version: str
    score: float
    contributions: list[tuple[str, float]]
    shadow: bool


class Sink:
    """Writes verdicts and throttled scores; `producer` (confluent-kafka) carries scores to the topic."""

    def __init__(self, db: Database, publisher: EnforcementPublisher | None, producer: object | None,
                 scores_topic: str) -> None:
        self.db = db
        self.publisher = publisher
        self.producer = producer
        self.scores_topic = scores_topic
        self.counts = {"ban": 0, "restrict": 0, "cases": 0, "rejected": 0, "errors": 0, "scores": 0}
        self.decided_at: dict[str, int] = {}  # account -> ms when its decision committed (bench, tests)
        self.tipped: dict[str, int] = {}  # account -> ts of the signal that tipped its decision

    def apply(self, verdicts: Sequence[Verdict], st: AccountState) -> None:
        for v in verdicts:
            try:
                if v.action is not None:
                    self._decide(v, st)
                elif v.queue is not None:
                    self._case(v)
            except SQLAlchemyError as exc:
                # The database is down or refused: undo the mark so a later scoring retries it.
                self.counts["errors"] += 1
                log.error("could not record %s for %s: %s", v.action or v.queue, v.account, type(exc).__name__)
                if v.action is not None:
                    st.action = None
                elif v.queue is not None:
                    st.cases &= ~QUEUE_BITS[v.queue]

    def _decide(self, v: Verdict, st: AccountState) -> None:
        assert v.action is not None
        if v.action is Action.restrict:
            with self.db.session() as s:
                current = active_decision(s, v.account)
            if current is not None:  # banned or restricted already (perhaps by a reviewer): leave it
                st.action = current.action
                self.counts["rejected"] += 1
                return
        req = DecisionRequest(account=v.account, action=v.action, reason_code=v.reason_code,
                              source=DecisionSource.auto, actor=v.actor, evidence=v.evidence)
        try:
            do_decide(self.db, self.publisher, req, label=None)
        except DecisionRejected:
            st.action = "ban"
            self.counts["rejected"] += 1
            return
        self.decided_at[v.account] = now_ms()
        self.tipped[v.account] = v.ts
        self.counts[v.action.value] = self.counts.get(v.action.value, 0) + 1
        log.info("auto %s %s by %s (score=%s)", v.action.value, v.account, v.actor,
                 f"{v.score:.3f}" if v.score is not None else "none")

    def _case(self, v: Verdict) -> None:
        with self.db.session() as s, s.begin():
            s.add(CaseRow(account=v.account, queue=queue_of(v), priority=v.priority, score=v.score,
                          model_version=v.model_version, rule_ids=list(v.rule_ids) or None, status="open",
                          created_at=now_ms()))
        self.counts["cases"] += 1

    def scores(self, records: Sequence[ScoreRecord]) -> None:
        """Store a batch of scores in one transaction and put them on the scores topic."""
        if not records:
            return
        with self.db.session() as s, s.begin():  # Core executemany: the ORM unit of work costs 10x here
            s.execute(insert(ScoreRow), [
                {"account": r.account, "model_version": r.model_version, "score": r.score,
                 "contributions": [[f, v] for f, v in r.contributions] or None, "shadow": r.shadow, "ts": r.ts}
                for r in records])
        if self.producer is not None:
            for r in records:
                ev = Score.model_construct(
                    type="score", v=1, ts=r.ts, id=new_event_id(), account=r.account, model_version=r.model_version,
                    score=min(1.0, max(0.0, r.score)),
                    contributions=[Contribution.model_construct(feature=f, value=v) for f, v in r.contributions[:16]],
                    shadow=r.shadow)
                self.producer.produce(self.scores_topic, key=r.account, value=encode(ev))  # type: ignore[attr-defined]
        self.counts["scores"] += len(records)

