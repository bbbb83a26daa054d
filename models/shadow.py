"""Shadow agreement: how the challenger's scores compare with the champion's on live traffic.

Detection scores every stored moment with both models: the champion's row (`shadow=False`) is
acted on, the challenger's (`shadow=True`, same account and ts) is only stored. Pairing them by
(account, ts) answers what a data scientist asks before promoting: would the challenger have
banned the same accounts? how far apart are the scores? The moderation API serves this dict to
the console (`GET /models/shadow` or wherever the API puts it); it only reads the scores table.

Thresholds are detection's production policy (`Policy.ban_threshold`, `review_threshold`), so
"would ban" means what it means in the worker (minus the minimum-evidence check, which does not
depend on the model).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select

from sealguard.storage import Database, ScoreRow


def _thresholds() -> tuple[float, float]:
    try:
        from detection.policy import Policy

        policy = Policy()
        return float(policy.ban_threshold), float(policy.review_threshold)
    except Exception:  # noqa: BLE001 - the figures still make sense with the documented defaults
        return 0.95, 0.5


def _nan(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def agreement(db: Database, since_ms: int | None = None) -> dict[str, Any]:
    """Agreement of the latest challenger with the champion over score pairs since `since_ms`.

    Keys: champion, challenger (versions, None when absent), pairs, accounts, ban_threshold,
    review_threshold, ban_agreement, review_agreement (share of pairs on the same side),
    champion_bans / challenger_bans / both_ban / only_champion_bans / only_challenger_bans (accounts
    whose highest score crosses the ban threshold), mean_abs_diff, spearman, since_ms, first_ts, last_ts.
    JSON-safe: undefined figures are None.
    """
    ban_t, review_t = _thresholds()
    stmt = select(ScoreRow.account, ScoreRow.model_version, ScoreRow.score, ScoreRow.shadow, ScoreRow.ts)
    if since_ms is not None:
        stmt = stmt.where(ScoreRow.ts >= since_ms)
    with db.session() as s:
        rows = s.execute(stmt).all()
    frame = pd.DataFrame(rows, columns=["account", "version", "score", "shadow", "ts"])
    empty: dict[str, Any] = {
        "champion": None, "challenger": None, "pairs": 0, "accounts": 0, "ban_threshold": ban_t,
        "review_threshold": review_t, "ban_agreement": None, "review_agreement": None, "champion_bans": 0,
        "challenger_bans": 0, "both_ban": 0, "only_champion_bans": 0, "only_challenger_bans": 0,
        "mean_abs_diff": None, "spearman": None, "since_ms": since_ms, "first_ts": None, "last_ts": None,
    }
    if frame.empty:
        return empty
    frame["shadow"] = frame["shadow"].astype(bool)
    shadow, served = frame[frame.shadow], frame[~frame.shadow]
    champion = str(served.sort_values("ts").version.iloc[-1]) if not served.empty else None
    challenger = str(shadow.sort_values("ts").version.iloc[-1]) if not shadow.empty else None
    out = {**empty, "champion": champion, "challenger": challenger}
    if challenger is None or champion is None:
        return out
    pairs = served[served.version == champion].merge(
        shadow[shadow.version == challenger], on=["account", "ts"], suffixes=("_champion", "_challenger"))
    if pairs.empty:
        return out
    a, b = pairs.score_champion.to_numpy(), pairs.score_challenger.to_numpy()
    per_account = pairs.groupby("account").agg(a=("score_champion", "max"), b=("score_challenger", "max"))
    ban_a, ban_b = per_account.a >= ban_t, per_account.b >= ban_t
    spearman = float("nan")
    if len(pairs) > 1 and np.std(a) > 0 and np.std(b) > 0:
        spearman = float(pd.Series(a).rank().corr(pd.Series(b).rank()))
    out.update({
        "pairs": len(pairs), "accounts": len(per_account),
        "ban_agreement": float(np.mean((a >= ban_t) == (b >= ban_t))),
        "review_agreement": float(np.mean((a >= review_t) == (b >= review_t))),
        "champion_bans": int(ban_a.sum()), "challenger_bans": int(ban_b.sum()), "both_ban": int((ban_a & ban_b).sum()),
        "only_champion_bans": int((ban_a & ~ban_b).sum()), "only_challenger_bans": int((~ban_a & ban_b).sum()),
        "mean_abs_diff": float(np.mean(np.abs(a - b))), "spearman": _nan(spearman),
        "first_ts": int(pairs.ts.min()), "last_ts": int(pairs.ts.max()),
    })
    return out
