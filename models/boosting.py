"""LightGBM the same way everywhere: a small search with early stopping, then isotonic calibration.

Both training paths (a bring-your-own table, cross-validated; a dataset built from signals, split
by account and time) call `search` and `Calibrator`, so "how we train" is decided in one place.

Why a *small* search: the machine is shared and the tables are small to medium; four candidate
shapes (shallow → deep, with growing leaf minimums) cover what matters for tabular metadata, and
early stopping picks the number of rounds. Candidates are compared by their validation score
(AUC or PR-AUC, the caller says), never on the data the final figures are computed on.

Why isotonic calibration: reviewers and the action policy read scores as probabilities ("ban above
0.97"); boosted trees rank well but their raw outputs are not probabilities, least of all on
imbalanced data. The map is exported as knots (x, y) that detection applies with `numpy.interp`,
so serving needs no scikit-learn.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import average_precision_score, roc_auc_score

log = logging.getLogger(__name__)

# The small search: from a shallow, heavily regularised shape (small tables) to a deeper one
# (hundreds of thousands of accounts). Each runs with early stopping on the validation part.
SEARCH_SPACE: tuple[dict[str, Any], ...] = (
    {"num_leaves": 7, "min_child_samples": 5, "learning_rate": 0.05, "feature_fraction": 0.7, "lambda_l2": 1.0},
    {"num_leaves": 15, "min_child_samples": 10, "learning_rate": 0.05, "feature_fraction": 0.8, "lambda_l2": 1.0},
    {"num_leaves": 31, "min_child_samples": 20, "learning_rate": 0.05, "feature_fraction": 0.9, "lambda_l2": 0.0},
    {"num_leaves": 63, "min_child_samples": 40, "learning_rate": 0.08, "feature_fraction": 0.9, "lambda_l2": 0.0},
)

Scorer = Callable[[np.ndarray, np.ndarray], float]


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC, or nan when only one class is present (a figure, never a crash)."""
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, p))


def pr_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Average precision (area under the PR curve), or nan with one class only."""
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(average_precision_score(y, p))


def threads_for(rows: int, requested: int) -> int:
    """LightGBM threads for a training set of `rows`: one until the data is large.

    Measured here (2 cores shared with other work): 12k rows × 35 features, the 4-candidate search
    took 2.4 s of CPU on one thread and 48 s of CPU (183 s wall) on two — OpenMP's spin-waiting on a
    busy second core costs far more than the trees. Threads pay only on large data.
    """
    return requested if rows >= 500_000 else 1


def base_params(*, num_threads: int = 2, seed: int = 0) -> dict[str, Any]:
    """What every candidate shares. `num_threads` stays small: the machine is shared."""
    return {
        "objective": "binary",
        "metric": "binary_logloss",
        "verbosity": -1,
        "num_threads": num_threads,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "min_sum_hessian_in_leaf": 1e-3,
    }


@dataclass
class Trial:
    params: dict[str, Any]
    best_iteration: int
    score: float


@dataclass
class SearchResult:
    """The winning booster (trained on the training part, stopped on the validation part)."""

    booster: lgb.Booster
    params: dict[str, Any]
    best_iteration: int
    score: float
    valid_pred: np.ndarray
    trials: list[Trial] = field(default_factory=list)


def train_one(
    params: dict[str, Any],
    X_tr: Any,
    y_tr: np.ndarray,
    X_va: Any,
    y_va: np.ndarray,
    *,
    max_rounds: int = 2000,
    patience: int = 50,
    feature_names: Sequence[str] | None = None,
) -> lgb.Booster:
    """One booster with early stopping on the validation part (log loss: smooth, so it stops well)."""
    names = list(feature_names) if feature_names is not None else "auto"
    train_set = lgb.Dataset(X_tr, label=y_tr, feature_name=names, free_raw_data=True)
    valid_set = lgb.Dataset(X_va, label=y_va, reference=train_set, feature_name=names, free_raw_data=True)
    return lgb.train(
        params,
        train_set,
        num_boost_round=max_rounds,
        valid_sets=[valid_set],
        callbacks=[lgb.early_stopping(patience, verbose=False)],
    )


def search(
    X_tr: Any,
    y_tr: np.ndarray,
    X_va: Any,
    y_va: np.ndarray,
    *,
    scorer: Scorer = auc,
    space: Sequence[dict[str, Any]] = SEARCH_SPACE,
    num_threads: int = 2,
    seed: int = 0,
    feature_names: Sequence[str] | None = None,
    on_trial: Callable[[Trial], None] | None = None,
) -> SearchResult:
    """Try each candidate shape; keep the one with the best validation score."""
    best: SearchResult | None = None
    trials: list[Trial] = []
    for shape in space:
        params = {**base_params(num_threads=num_threads, seed=seed), **shape}
        booster = train_one(params, X_tr, y_tr, X_va, y_va, feature_names=feature_names)
        pred = booster.predict(X_va, num_iteration=booster.best_iteration)
        score = scorer(y_va, pred)
        trial = Trial(params=shape, best_iteration=int(booster.best_iteration or booster.current_iteration()),
                      score=score)
        trials.append(trial)
        log.debug("candidate %s: %d rounds, score %.4f", shape, trial.best_iteration, score)
        if on_trial is not None:
            on_trial(trial)
        if best is None or (not np.isnan(score) and (np.isnan(best.score) or score > best.score)):
            best = SearchResult(booster, params, trial.best_iteration, score, pred)
    assert best is not None  # the search space is never empty
    best.trials = trials
    return best


class Calibrator:
    """Isotonic map from the booster's output to a probability, exported as interpolation knots."""

    def __init__(self, x: Sequence[float], y: Sequence[float]) -> None:
        self.x = np.asarray(x, dtype=float)
        self.y = np.asarray(y, dtype=float)

    @classmethod
    def fit(cls, raw: np.ndarray, labels: np.ndarray) -> Calibrator:
        """Fit on predictions the booster did not train on (a validation part or out-of-fold)."""
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True)
        iso.fit(np.asarray(raw, dtype=float), np.asarray(labels, dtype=float))
        x = np.asarray(iso.X_thresholds_, dtype=float)
        y = np.asarray(iso.y_thresholds_, dtype=float)
        if len(x) < 2:  # constant predictions: a flat map at the base rate
            rate = float(np.mean(labels))
            x, y = np.array([0.0, 1.0]), np.array([rate, rate])
        return cls(x, y)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """What detection does at serving time: `numpy.interp(raw, x, y)`."""
        return np.interp(np.asarray(raw, dtype=float), self.x, self.y)

    def to_json(self) -> dict[str, list[float]]:
        return {"x": [float(v) for v in self.x], "y": [float(v) for v in self.y]}

    @classmethod
    def from_json(cls, data: dict[str, Sequence[float]] | None) -> Calibrator | None:
        if data is None:
            return None
        return cls(data["x"], data["y"])
