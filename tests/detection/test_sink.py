"""The sink's score path: rows as the Core insert wrote them, on both backends, and `sg.scores.v1`
records that decode to the Score the model would have built."""

from __future__ import annotations

from sqlalchemy import select

from detection.sink import ScoreRecord, Sink, score_record
from sealguard.contracts import Contribution, Score, decode, new_account_id
from sealguard.storage import Database, ScoreRow


class _Producer:
    """Collects what the sink produces (a stand-in for the Kafka producer's `produce` only)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes]] = []

    def produce(self, topic: str, key: str, value: bytes) -> None:
        self.sent.append((topic, key, value))


RECORDS = [
    ScoreRecord(new_account_id(), 1_700_000_000_123, "lgbm-1", 0.123456789, [("sends_1m", 1e-7), ("age_s", -2.5)],
                False),
    ScoreRecord(new_account_id(), 5, "lgbm-1", 1.0000001, [], True),  # clipped to 1
    ScoreRecord(new_account_id(), 6, "m:2.b", -0.0, [(f"f{i}", float(i)) for i in range(20)], False),  # 16 kept
    ScoreRecord(new_account_id(), 7, "lgbm-1", float("nan"), [("x", float("nan")), ("y", 1.0)], False),
]


def test_score_records_decode_to_the_score_the_model_builds() -> None:
    for r in RECORDS[:3]:
        raw = score_record(r, "ab" * 16)
        want = Score(ts=r.ts, id="ab" * 16, account=r.account, model_version=r.model_version,
                     score=min(1.0, max(0.0, r.score)), shadow=r.shadow,
                     contributions=[Contribution(feature=f, value=v) for f, v in r.contributions[:16]])
        assert decode(raw) == want
    odd = decode(score_record(RECORDS[3], "ab" * 16))  # JSON has no NaN: score 0, that contribution left out
    assert isinstance(odd, Score) and odd.score == 0.0 and [c.feature for c in odd.contributions] == ["y"]


def test_flushed_scores_read_back_as_written(db_url: str) -> None:
    db = Database(db_url)
    producer = _Producer()
    sink = Sink(db, None, producer, "sg.scores.v1")
    sink.scores(RECORDS[:3])
    sink.flush_scores()
    assert sink.counts["scores"] == 3 and len(producer.sent) == 3
    assert len({decode(v).id for _, _, v in producer.sent}) == 3
    with db.session() as s:
        rows = s.scalars(select(ScoreRow).order_by(ScoreRow.id)).all()
    assert [(r.account, r.ts, r.model_version, r.score, r.shadow) for r in rows] == [
        (r.account, r.ts, r.model_version, r.score, r.shadow) for r in RECORDS[:3]]
    assert rows[0].contributions == [["sends_1m", 1e-7], ["age_s", -2.5]]
    assert rows[1].contributions is None
    assert len(rows[2].contributions) == 20
