"""Shadow agreement from real score rows, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import insert

from models.shadow import agreement
from sealguard.storage import Database, ScoreRow

A, B, C = "a" + "1" * 20, "a" + "2" * 20, "a" + "3" * 20


@pytest.mark.postgres
def test_agreement_pairs_champion_and_challenger_rows(db_url: str) -> None:
    db = Database(db_url)
    try:
        assert agreement(db)["pairs"] == 0
        rows = []
        # (account, ts, champion score, challenger score)
        for account, ts, champ, chall in [(A, 1000, 0.99, 0.98), (A, 2000, 0.97, 0.40), (B, 1500, 0.10, 0.96),
                                          (C, 1200, 0.20, 0.30), (C, 3000, 0.60, 0.20)]:
            rows.append({"account": account, "model_version": "lgbm-1", "score": champ, "shadow": False, "ts": ts})
            rows.append({"account": account, "model_version": "lgbm-2", "score": chall, "shadow": True, "ts": ts})
        rows.append({"account": B, "model_version": "lgbm-1", "score": 0.5, "shadow": False, "ts": 9000})  # unpaired
        with db.session() as s:
            s.execute(insert(ScoreRow), rows)
            s.commit()
        got = agreement(db)
        assert got["champion"] == "lgbm-1" and got["challenger"] == "lgbm-2"
        assert got["pairs"] == 5 and got["accounts"] == 3
        assert got["ban_agreement"] == pytest.approx(3 / 5)  # A@2000 and B@1500 disagree
        assert got["review_agreement"] == pytest.approx(2 / 5)  # A@2000, B@1500 and C@3000 disagree
        assert (got["champion_bans"], got["challenger_bans"], got["both_ban"]) == (1, 2, 1)
        assert (got["only_champion_bans"], got["only_challenger_bans"]) == (0, 1)
        assert got["mean_abs_diff"] == pytest.approx((0.01 + 0.57 + 0.86 + 0.10 + 0.40) / 5)
        assert agreement(db, since_ms=2500)["pairs"] == 1
    finally:
        db.dispose()
