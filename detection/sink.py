"""Where the worker's verdicts and scores go: decisions through moderation's `do_decide_many`, cases
and scores into the database, scores onto `sg.scores.v1`.

Decisions never bypass moderation's write path: `do_decide_many` writes a batch's decisions, each
with what `do_decide` writes (audit entry, notices, answered cases), in one transaction, then
publishes the enforcements. A double decision (a reviewer banned the
account first, or this worker already did before a restart) comes back as DecisionRejected and
is recorded as the account's standing action — never enforced twice.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy.exc import SQLAlchemyError

from detection.features import AccountState
from detection.policy import QUEUE_BITS, Verdict, queue_of
from moderation.decisions import DecisionRequest, EnforcementPublisher, active_decision, do_decide_many
from moderation.errors import DecisionRejected
from sealguard.contracts import Action, DecisionSource, now_ms
from sealguard.storage import CaseRow, Database, ScoreRow

log = logging.getLogger(__name__)


class ScoreRecord(NamedTuple):
    account: str
    ts: int
    model_version: str
    score: float
    contributions: list[tuple[str, float]]
    shadow: bool


_SCORE_RECORD = ('{"type":"score","v":1,"ts":%d,"id":"%s","account":"%s","model_version":"%s","score":%r,'
                 '"contributions":[%s],"shadow":%s}')
_CONTRIBUTION = '{"feature":"%s","value":%r}'


def score_record(r: ScoreRecord, event_id: str) -> bytes:
    """The `sg.scores.v1` record of a score — what `encode(Score(...))` writes, the score clipped to
    [0, 1] and at most 16 contributions — without building the model. Account, model version and
    feature names are ids with strict patterns (nothing to escape); a contribution that is not a
    finite number (JSON cannot carry it; LightGBM gives none) is left out. Formatted as text and
    encoded once (ASCII)."""
    account, ts, version, score, contributions, shadow = r
    score = min(1.0, max(0.0, score))  # a NaN becomes 0.0 here
    return (_SCORE_RECORD % (ts, event_id, account, version, float(score),
                             ",".join([_CONTRIBUTION % (f, float(v)) for f, v in contributions[:16] if math.isfinite(v)])
                             if contributions else "", "true" if shadow else "false")).encode()


_INSERT_COLUMNS = "account, model_version, score, contributions, shadow, ts"


def _insert_sql(paramstyle: str) -> str | None:
    marks = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(paramstyle)
    if marks is None:
        return None
    return f"INSERT INTO {_SCORES.name} ({_INSERT_COLUMNS}) VALUES ({', '.join([marks] * 6)})"


class Sink:
    """Writes verdicts and throttled scores; `producer` (confluent-kafka) carries scores to the topic.

    Decisions of one poll go out together at the end of its scoring (`do_decide_many`: one
    transaction, then each published: one by one, each cost 6-8 ms of ORM work, 11% of the
    backlog's CPU at 1M signals); cases of one poll in one transaction, and
    scores are buffered and written `score_batch` rows or `score_flush_s` seconds at a time (one
    transaction each): per-row commits cost more than the whole detection pipeline around them.
    """

    def __init__(self, db: Database, publisher: EnforcementPublisher | None, producer: object | None,
                 scores_topic: str, *, score_batch: int = 5000, score_flush_s: float = 1.0) -> None:
        self.db = db
        self.publisher = publisher
        self.producer = producer
        self.scores_topic = scores_topic
        self.score_batch = score_batch
        self.score_flush_s = score_flush_s
        self.counts = {"ban": 0, "restrict": 0, "cases": 0, "rejected": 0, "errors": 0, "scores": 0}
        self.decided_at: dict[str, int] = {}  # account -> ms when its decision committed (bench, tests)
        self.tipped: dict[str, int] = {}  # account -> ts of the signal that tipped its decision
        self._cases: list[tuple[Verdict, AccountState]] = []  # opened this batch, written by flush_cases
        self._decisions: list[tuple[Verdict, AccountState]] = []  # made this batch, written by flush_decisions
        self._scores: list[ScoreRecord] = []
        self._scores_since = 0.0  # monotonic time of the oldest buffered score

    def apply(self, verdicts: Sequence[Verdict], st: AccountState) -> None:
        """Queue decisions and cases; `flush` writes them at the end of the batch (cases, then decisions)."""
        for v in verdicts:
            if v.action is not None:
                if any(d.account == v.account for d, _ in self._decisions):
                    # one decision per account and batch (a restrict, then a ban): write the cases and
                    # decisions so far; buffered scores wait for their batch (a transaction of their own)
                    self.flush_cases()
                    self.flush_decisions()
                self._decisions.append((v, st))
            elif v.queue is not None:
                self._cases.append((v, st))

    def flush_decisions(self) -> None:
        """The batch's decisions through `do_decide_many`: one transaction for all of them (each is what
        `do_decide` would write), then each published. A ban on an account already banned (a reviewer
        got there first) comes back rejected and is recorded as its standing action; a restriction
        never replaces an active decision. If the database refuses, the marks are undone so a later
        scoring retries."""
        queued, self._decisions = self._decisions, []
        if not queued:
            return
        restricts = [(v, st) for v, st in queued if v.action is Action.restrict]
        if restricts:
            try:
                with self.db.session() as s:
                    current = {v.account: active_decision(s, v.account) for v, _ in restricts}
            except SQLAlchemyError as exc:
                current = {}
                queued = [(v, st) for v, st in queued if v.action is not Action.restrict]
                self._failed(restricts, exc)
            for v, st in restricts:
                cur = current.get(v.account)
                if cur is not None:  # banned or restricted already (perhaps by a reviewer): leave it
                    st.action = cur.action
                    self.counts["rejected"] += 1
            queued = [(v, st) for v, st in queued if current.get(v.account) is None]
        if not queued:
            return
        reqs = [DecisionRequest(account=v.account, action=v.action, reason_code=v.reason_code,  # type: ignore[arg-type]
                                source=DecisionSource.auto, actor=v.actor, evidence=v.evidence) for v, _ in queued]
        try:
            outcomes = do_decide_many(self.db, self.publisher, reqs)
        except SQLAlchemyError as exc:
            self._failed(queued, exc)
            return
        now = now_ms()
        for (v, st), got in zip(queued, outcomes):
            if isinstance(got, DecisionRejected):
                st.action = "ban"
                self.counts["rejected"] += 1
                continue
            assert v.action is not None
            self.decided_at[v.account] = now
            self.tipped[v.account] = v.ts
            self.counts[v.action.value] = self.counts.get(v.action.value, 0) + 1
            log.info("auto %s %s by %s (score=%s)", v.action.value, v.account, v.actor,
                     f"{v.score:.3f}" if v.score is not None else "none")

    def _failed(self, queued: Sequence[tuple[Verdict, AccountState]], exc: Exception) -> None:
        """The database is down or refused: undo the marks so a later scoring retries them."""
        for v, st in queued:
            self.counts["errors"] += 1
            log.error("could not record %s for %s: %s", v.action.value if v.action else "?", v.account,
                      type(exc).__name__)
            st.action = None

    def flush_cases(self) -> None:
        """Write the queued cases in one transaction; if it fails, un-mark them so a later scoring retries."""
        cases, self._cases = self._cases, []
        if not cases:
            return
        now = now_ms()
        try:
            with self.db.session() as s, s.begin():
                s.add_all([CaseRow(account=v.account, queue=queue_of(v), priority=v.priority, score=v.score,
                                   model_version=v.model_version, rule_ids=list(v.rule_ids) or None, status="open",
                                   created_at=now) for v, _ in cases])
        except SQLAlchemyError as exc:
            self.counts["errors"] += len(cases)
            log.error("could not open %d cases: %s", len(cases), type(exc).__name__)
            for v, st in cases:
                st.cases &= ~QUEUE_BITS[v.queue or ""]
            return
        self.counts["cases"] += len(cases)

    def scores(self, records: Sequence[ScoreRecord]) -> None:
        """Buffer scores; written (and published) once `score_batch` rows or `score_flush_s` seconds gathered."""
        if not records:
            return
        if not self._scores:
            self._scores_since = time.monotonic()
        self._scores.extend(records)
        if len(self._scores) >= self.score_batch or time.monotonic() - self._scores_since >= self.score_flush_s:
            self.flush_scores()

    def flush_scores(self) -> None:
        """Store the buffered scores in one transaction and put them on the scores topic.

        Rows go straight to the driver's `executemany` as tuples (the Core insert spent most of its
        time building and processing a dict per row), and each `sg.scores.v1` record is written
        from a template (`score_record`; the contract tests check it decodes to the same Score)."""
        records, self._scores = self._scores, []
        if not records:
            return
        try:
            with self.db.engine.begin() as conn:
                sql = _insert_sql(conn.dialect.paramstyle)
                if sql is None:  # a driver with another parameter style: the Core insert
                    conn.execute(_SCORES.insert(), [
                        {"account": r.account, "model_version": r.model_version, "score": r.score,
                         "contributions": [[f, v] for f, v in r.contributions] or None, "shadow": r.shadow,
                         "ts": r.ts} for r in records])
                else:
                    conn.exec_driver_sql(sql, [
                        (account, version, score,
                         json.dumps([[f, v] for f, v in contributions]) if contributions else "null", shadow, ts)
                        for account, ts, version, score, contributions, shadow in records])
        except SQLAlchemyError as exc:  # a lost score row is not worth stopping detection
            self.counts["errors"] += 1
            log.error("could not store %d scores: %s", len(records), type(exc).__name__)
            return
        if self.producer is not None:
            produce = self.producer.produce  # type: ignore[attr-defined]
            ids = os.urandom(16 * len(records)).hex()  # one random draw for every event id of the flush
            topic = self.scores_topic
            for i, r in enumerate(records):
                produce(topic, key=r[0], value=score_record(r, ids[32 * i:32 * i + 32]))
        self.counts["scores"] += len(records)

    def flush(self) -> None:
        """Everything buffered: cases, decisions (which close the cases they answer), then scores
        (end of a batch, checkpoints, close)."""
        self.flush_cases()
        self.flush_decisions()
        self.flush_scores()


_SCORES = ScoreRow.__table__
