"""`sealguard evaluate`: play a scenario through the same feature, rule, model and policy code the
worker runs, and measure what would have happened.

The simulator gives ts-ordered signals and the truth; `iter_snapshots` replays them through the
FeatureEngine at the worker's scoring moments; the model scores all snapshot rows in one batch
(the worker scores in batches too — a score depends only on its row); then the policy walks the
rows in time order exactly as the worker would, deciding bans and cases. Figures:

* recall (spammers banned / spammers), per strategy, and its minimum over strategies;
* false bans (legitimate accounts banned), per legitimate hard case, and false_ban_rate;
* pr_auc over accounts (each account's highest score) — how well the model ranks;
* banned_before_report: share of banned spammers banned before any report against them;
* spam messages before ban (p50, p90): messages a spammer sent from its first spam message up
  to and including the one that tipped the ban; a spammer never banned counts all of them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from detection import DetectionError
from detection.features import FEATURE_NAMES, ScoreSchedule, iter_snapshots
from detection.model import ServedModel, load_model
from detection.policy import Policy, ban_scores
from detection.rules import RuleBook
from sealguard.contracts import Action

log = logging.getLogger(__name__)


class EvaluationError(DetectionError):
    """A scenario could not be evaluated (unreadable scenario, no spammers, ...)."""


class _Standing:
    """What the policy keeps per account (offline stand-in for AccountState's policy fields)."""

    __slots__ = ("action", "cases", "peak_ts")

    def __init__(self) -> None:
        self.action: str | None = None
        self.cases = 0
        self.peak_ts: int | None = None


@dataclass
class Outcome:
    """Per-account result of a replay: when (if ever) it was banned, restricted, and its best score."""

    bans: dict[str, tuple[int, str]]  # account -> (ts, actor)
    restricts: dict[str, int]
    cases: dict[str, list[str]]
    max_score: dict[str, float]
    rows: int


def replay_policy(events: Iterable[Any], model: ServedModel | None, rules: RuleBook, policy: Policy,
                  schedule: ScoreSchedule | None = None, chunk: int = 200_000) -> Outcome:
    """Run features → rules → model → policy over ts-ordered events, as the worker would."""
    bans: dict[str, tuple[int, str]] = {}
    restricts: dict[str, int] = {}
    cases: dict[str, list[str]] = {}
    max_score: dict[str, float] = {}
    standing: dict[str, _Standing] = {}
    n = 0
    buf: list[tuple[str, int, list[float]]] = []

    def flush() -> None:
        if not buf:
            return
        matrix = np.asarray([r[2] for r in buf], dtype=np.float64)
        scores = model.score(matrix) if model is not None else None
        version = model.version if model is not None else None
        decisive = ban_scores(model, matrix, scores, policy.ban_threshold) if scores is not None else None
        for i, (account, ts, row) in enumerate(buf):
            score = float(scores[i]) if scores is not None else None
            if score is not None and score > max_score.get(account, -1.0):
                max_score[account] = score
            st = standing.get(account)
            if st is None:
                st = standing[account] = _Standing()
            if st.action == "ban":
                continue
            for v in policy.decide(account, st, row, ts, score, version, rules.hits(row),  # type: ignore[arg-type]
                                   ban_score=float(decisive[i]) if decisive is not None else None):
                if v.action is Action.ban:
                    bans[account] = (ts, v.actor)
                elif v.action is Action.restrict:
                    restricts.setdefault(account, ts)
                if v.queue:
                    cases.setdefault(account, []).append(v.queue)
        buf.clear()

    # Scores depend only on the row, so batching the model across accounts changes nothing; the
    # policy still walks rows in time order per account.
    for snap in iter_snapshots(events, schedule or ScoreSchedule()):
        buf.append(snap)
        n += 1
        if len(buf) >= chunk:
            flush()
    flush()
    return Outcome(bans, restricts, cases, max_score, n)


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def figures(events: Sequence[Any], truth: pd.DataFrame, out: Outcome) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `evaluate:` figures, and the detail (per strategy, per hard case)."""
    truth = truth.set_index("account")
    spam = truth[truth.label == 1]
    legit = truth[truth.label == 0]
    if spam.empty:
        raise EvaluationError("the scenario has no spammers; recall is undefined")
    first_report: dict[str, int] = {}
    sent: dict[str, list[int]] = {a: [] for a in spam.index}
    for ev in events:
        if ev.type == "message.sent":
            lst = sent.get(ev.sender)
            if lst is not None:
                lst.append(ev.ts)
        elif ev.type == "report.filed" and ev.reported not in first_report:
            first_report[ev.reported] = ev.ts
    banned = set(out.bans)
    per_strategy = {str(role): float(np.mean([a in banned for a in grp.index]))
                    for role, grp in spam.groupby("role")}
    false = [a for a in legit.index if a in banned]
    false_by_role = legit.loc[false].role.value_counts().to_dict() if false else {}
    hard_roles = sorted(set(legit.role) - {"normal"})
    false_per_case = {r: int(false_by_role.get(r, 0)) for r in ["normal", *hard_roles]}
    spam_banned = [a for a in spam.index if a in banned]
    before_report = [out.bans[a][0] < first_report.get(a, math.inf) for a in spam_banned]
    msgs_before = []
    for a, row in spam.iterrows():
        first = row.first_spam_ts if not pd.isna(row.first_spam_ts) else -math.inf
        stamps = [t for t in sent[a] if t >= first]
        if a in banned:
            stamps = [t for t in stamps if t <= out.bans[a][0]]
        msgs_before.append(len(stamps))
    scores = np.array([out.max_score.get(a, 0.0) for a in truth.index])
    labels = truth.label.to_numpy()
    pr_auc = float("nan")
    if out.max_score:
        from sklearn.metrics import average_precision_score

        pr_auc = float(average_precision_score(labels, scores))
    figs = {
        "accounts": len(truth), "normal": len(legit), "spammers": len(spam), "false_bans": len(false),
        "pr_auc": pr_auc, "recall": len(spam_banned) / len(spam),
        "min_strategy_recall": min(per_strategy.values()), "false_ban_rate": len(false) / max(1, len(legit)),
        "banned_before_report": float(np.mean(before_report)) if before_report else float("nan"),
        "spam_msgs_before_ban_p50": _pct(msgs_before, 50), "spam_msgs_before_ban_p90": _pct(msgs_before, 90),
    }
    detail = {"recall_per_strategy": per_strategy, "false_bans_per_case": false_per_case,
              "restricted_legit": sum(1 for a in out.restricts if a in legit.index),
              "snapshot_rows": out.rows,
              "ban_actors": pd.Series([v[1] for v in out.bans.values()]).value_counts().to_dict()}
    return figs, detail


def evaluate_events(events: Sequence[Any], truth: pd.DataFrame, model_dir: str | Path | None = None, *,
                    rules: RuleBook | None = None, policy: Policy | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    model = load_model(model_dir) if model_dir is not None else None
    outcome = replay_policy(events, model, rules if rules is not None else RuleBook(), policy or Policy())
    return figures(events, truth, outcome)


def evaluate_scenario(scenario: str | Path | Any, model_dir: str | Path | None = None, *, seed: int | None = None,
                      rules: RuleBook | None = None, policy: Policy | None = None,
                      detail: dict[str, Any] | None = None) -> dict[str, Any]:
    """Simulate `scenario` (a YAML path or a loaded Scenario) and evaluate it; returns the figures.

    `detail`, when given, is filled with recall per strategy and false bans per legitimate case."""
    from simulator.offline import simulate
    from simulator.scenario import load_scenario

    try:
        sc = load_scenario(Path(scenario)) if isinstance(scenario, (str, Path)) else scenario
    except Exception as exc:  # noqa: BLE001 - the simulator's own error names the problem
        raise EvaluationError(f"cannot load scenario {scenario}: {exc}") from None
    result = simulate(sc, seed)
    log.info("simulated %d events for %d accounts", len(result.events), len(result.truth))
    figs, more = evaluate_events(result.events, result.truth, model_dir, rules=rules, policy=policy)
    if detail is not None:
        detail.update(more)
    return figs


__all__ = [
    "FEATURE_NAMES",
    "EvaluationError",
    "Outcome",
    "evaluate_events",
    "evaluate_scenario",
    "figures",
    "replay_policy",
]
