"""Figures for the metrics and model pages.

- queue depth per queue;
- time to decision: case creation to closure (p50, p90) over closed cases;
- automatic vs manual decisions;
- auto-ban precision, estimated from human judgement of automatic bans: a ban confirmed in the
  auto-ban sample or upheld on appeal counts as right; one lifted by a reviewer or overturned
  on appeal counts as wrong. `nan` until someone has judged one;
- score drift: the population stability index (PSI) between the scores of the last window and
  the window before it, over ten equal-width bins (PSI > 0.2 is the usual "investigate" line);
- models: the champion and challenger pointers (`state_dir/models/*.json`) and the shadow
  agreement from `models.shadow.agreement(db)` when the models package provides it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from moderation.cases import queue_depths
from sealguard.contracts import now_ms
from sealguard.storage import AppealRow, CaseRow, Database, DecisionRow, LabelRow, ScoreRow


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def psi(expected: list[float], actual: list[float], bins: int = 10) -> float:
    """Population stability index of `actual` against `expected` (scores in [0, 1])."""
    if not expected or not actual:
        return float("nan")

    def shares(values: list[float]) -> list[float]:
        counts = [0] * bins
        for v in values:
            counts[min(bins - 1, max(0, int(v * bins)))] += 1
        return [max(c / len(values), 1e-4) for c in counts]

    e, a = shares(expected), shares(actual)
    return round(sum((ai - ei) * math.log(ai / ei) for ei, ai in zip(e, a, strict=True)), 4)


def auto_ban_precision(db: Database) -> tuple[float, int]:
    """(precision, number of automatic bans a human has judged)."""
    with db.session() as s:
        autos = {d.id: d for d in s.scalars(select(DecisionRow).where(DecisionRow.source == "auto",
                                                                      DecisionRow.action == "ban"))}
        if not autos:
            return float("nan"), 0
        verdict: dict[str, bool] = {}
        # Sample reviews: a dismissal of an auto-ban sample case labels the ban's decision 1.
        for label in s.scalars(select(LabelRow).where(LabelRow.decision_id.in_(autos), LabelRow.source == "reviewer")):
            verdict[label.decision_id] = label.label == 1  # type: ignore[index]
        for appeal in s.scalars(select(AppealRow).where(AppealRow.decision_id.in_(autos),
                                                        AppealRow.status != "open")):
            verdict[appeal.decision_id] = appeal.status == "upheld"
        # A reviewer lifting an auto ban outside an appeal judges it wrong.
        lifts = s.execute(select(DecisionRow.account, DecisionRow.created_at)
                          .where(DecisionRow.action == "lift", DecisionRow.source == "reviewer",
                                 DecisionRow.reason_code != "appeal_overturned")).all()
        for account, ts in lifts:
            for d in autos.values():
                if d.account == account and d.created_at < ts and d.id not in verdict:
                    verdict[d.id] = False
    if not verdict:
        return float("nan"), 0
    return round(sum(verdict.values()) / len(verdict), 4), len(verdict)


def metrics_page(db: Database, *, claim_ttl_s: int, drift_window_s: int = 3600) -> dict[str, Any]:
    now = now_ms()
    with db.session() as s:
        closed = s.execute(select(CaseRow.queue, CaseRow.created_at, CaseRow.closed_at)
                           .where(CaseRow.status == "closed", CaseRow.closed_at.is_not(None))).all()
        by_source = dict(s.execute(select(DecisionRow.source, func.count()).group_by(DecisionRow.source)).all())
        by_action = {f"{src}:{act}": int(n) for src, act, n in s.execute(
            select(DecisionRow.source, DecisionRow.action, func.count())
            .group_by(DecisionRow.source, DecisionRow.action)).all()}
        w = drift_window_s * 1000
        recent = [float(v) for v in s.scalars(select(ScoreRow.score).where(
            ScoreRow.shadow.is_(False), ScoreRow.ts > now - w).limit(100_000))]
        previous = [float(v) for v in s.scalars(select(ScoreRow.score).where(
            ScoreRow.shadow.is_(False), ScoreRow.ts <= now - w, ScoreRow.ts > now - 2 * w).limit(100_000))]
    durations = [(c - o) / 1000 for _q, o, c in closed if c is not None]
    precision, judged = auto_ban_precision(db)
    hist = [0] * 10
    for v in recent:
        hist[min(9, max(0, int(v * 10)))] += 1
    return {
        "queue_depth": queue_depths(db, claim_ttl_s=claim_ttl_s),
        "time_to_decision_s": {"p50": _quantile(durations, 0.5), "p90": _quantile(durations, 0.9),
                               "closed_cases": len(durations)},
        "decisions": {"auto": int(by_source.get("auto", 0)), "manual": int(by_source.get("reviewer", 0)),
                      "by_action": by_action},
        "auto_ban_precision": {"estimate": precision, "judged": judged},
        "score_drift": {"psi": psi(previous, recent), "window_s": drift_window_s, "recent": len(recent),
                        "previous": len(previous), "recent_histogram": hist},
    }


def _pointer(state_dir: Path, name: str) -> dict[str, Any] | None:
    path = state_dir / "models" / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _card(state_dir: Path, pointer: dict[str, Any] | None) -> dict[str, Any] | None:
    """The pointer plus what its artifact's meta.json says: training time, metrics, feature count."""
    if pointer is None:
        return None
    card = dict(pointer)
    version = str(pointer.get("version", ""))
    model_dir = Path(str(pointer.get("path") or state_dir / "models" / version))
    try:
        meta = json.loads((model_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return card
    if isinstance(meta, dict):
        features = meta.get("features") or []
        card.update(trained_at=meta.get("trained_at"), metrics=meta.get("metrics") or {},
                    features=len(features) if isinstance(features, list) else None,
                    calibrated=meta.get("calibration") is not None)
    return card


def _agreement(db: Database) -> Any:
    try:
        from models.shadow import agreement  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        return agreement(db)
    except Exception as exc:  # noqa: BLE001 - the models page must render even if shadow scoring is new
        return {"error": f"{type(exc).__name__}: {exc}"}


def models_page(db: Database, state_dir: Path) -> dict[str, Any]:
    champion = _card(state_dir, _pointer(state_dir, "champion"))
    challenger = _card(state_dir, _pointer(state_dir, "challenger"))
    with db.session() as s:
        counts = {str(v): int(n) for v, n in s.execute(select(ScoreRow.model_version, func.count())
                                                        .group_by(ScoreRow.model_version)).all()}
        means = {str(v): round(float(m), 4) for v, m in s.execute(select(ScoreRow.model_version,
                                                                          func.avg(ScoreRow.score))
                                                                   .group_by(ScoreRow.model_version)).all()}
    agreement = _agreement(db)
    return {
        "champion": champion, "challenger": challenger,
        "scores_by_version": [{"model_version": v, "scores": n, "mean_score": means.get(v)}
                              for v, n in sorted(counts.items())],
        "shadow_agreement": _jsonable(agreement),
    }


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "__dict__"):
        return _jsonable(dict(vars(value)))
    return str(value)
