"""Bring-your-own table: `sealguard train --table FILE.csv --label COLUMN [--id COLUMN]`.

A data scientist arrives with a labelled account-feature table from somewhere else. We take every
usable column, say on stderr what we did with the others, and cross-validate LightGBM (the same
search and calibration as the served models, see `models.boosting`) against a scikit-learn
RandomForest on the *same folds*, so the comparison is fair.

Each outer fold is cross-fitted: an inner 3-fold split of the fold's training rows trains three
boosters per candidate with early stopping; the candidate with the best out-of-fold AUC wins, its
three boosters are averaged on the test rows, and its out-of-fold predictions fit the isotonic
calibration. The test rows of a fold are never seen by the search, the stopping or the calibration.

Column handling (every decision is reported as a note):
- the label column must hold exactly two values; rows without a label are dropped;
- the id column (if given) is not a feature; repeated ids keep their rows in one fold;
- booleans → 0/1; numbers stay; text that is ≥ 95 % numeric is parsed as numbers;
- text with ≤ 20 distinct values → one-hot; mostly unique text (identifier-like) → dropped;
  other text → replaced by the frequency of its value; dates and constant columns → dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from models.boosting import SEARCH_SPACE, Calibrator, auc, base_params, threads_for, train_one
from models.errors import TableError

log = logging.getLogger(__name__)

POSITIVE_NAMES = {"1", "true", "yes", "y", "t", "spam", "abusive", "abuse", "positive", "pos", "malicious",
                  "fraud", "bad", "bot", "scam"}
ONE_HOT_MAX = 20
MIN_PER_CLASS = 10


@dataclass
class PreparedTable:
    """A table ready for training: float features, 0/1 labels, optional groups, and what was done."""

    X: pd.DataFrame
    y: np.ndarray
    groups: np.ndarray | None
    positive_label: object
    notes: list[str] = field(default_factory=list)

    @property
    def feature_names(self) -> list[str]:
        return list(self.X.columns)


@dataclass
class CVResult:
    rows: int
    folds: int
    cv_auc: float
    cv_f1: float
    baseline_cv_auc: float
    baseline_cv_f1: float
    seconds: float
    fold_auc: list[float]
    fold_baseline_auc: list[float]
    chosen: list[dict[str, object]]

    def figures(self) -> dict[str, object]:
        return {"rows": self.rows, "seconds": round(self.seconds, 2), "cv_auc": self.cv_auc, "cv_f1": self.cv_f1,
                "baseline_cv_auc": self.baseline_cv_auc}


def load_table(path: Path) -> pd.DataFrame:
    """Read a CSV (or Parquet) file, turning every way it can be unreadable into a TableError."""
    if not path.exists():
        raise TableError(f"table {path} does not exist")
    if path.is_dir():
        raise TableError(f"table {path} is a directory; pass a CSV file (or use --dataset DIR)")
    if path.stat().st_size == 0:
        raise TableError(f"table {path} is empty (0 bytes)")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, low_memory=False)
    except pd.errors.EmptyDataError as exc:
        raise TableError(f"table {path} has no columns: {exc}") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise TableError(f"table {path} cannot be parsed: {exc}") from exc
    if df.empty:
        raise TableError(f"table {path} has a header but no rows")
    return df


def _binary_labels(raw: pd.Series, column: str, notes: list[str]) -> tuple[np.ndarray, object]:
    values = list(pd.unique(raw))
    if len(values) == 1:
        raise TableError(f"label column {column!r} has one class only ({values[0]!r}); both classes are needed")
    if len(values) > 2:
        shown = ", ".join(repr(v) for v in values[:5]) + (" …" if len(values) > 5 else "")
        raise TableError(f"label column {column!r} is not binary: {len(values)} distinct values ({shown})")
    by_text = {str(v).strip().lower(): v for v in values}
    known = [by_text[t] for t in by_text if t in POSITIVE_NAMES]
    if len(known) == 1:
        positive = known[0]
    else:
        try:
            positive = sorted(values)[1]
        except TypeError:
            positive = sorted(values, key=str)[1]
        notes.append(f"label {column!r}: {positive!r} taken as the positive class (the larger of the two values)")
    return (raw == positive).to_numpy(dtype=np.int8), positive


def _encode_text(name: str, col: pd.Series, n: int, out: dict[str, pd.Series], notes: list[str]) -> None:
    parsed = pd.to_numeric(col, errors="coerce")
    present = col.notna().sum()
    if present and parsed.notna().sum() >= 0.95 * present:
        notes.append(f"column {name!r}: text parsed as numbers")
        out[name] = parsed.astype(float)
        return
    distinct = col.nunique(dropna=True)
    if distinct <= ONE_HOT_MAX:
        dummies = pd.get_dummies(col.astype("string"), prefix=name, dummy_na=False, dtype=float)
        notes.append(f"column {name!r}: {distinct} categories one-hot encoded")
        for c in dummies.columns:
            out[str(c)] = dummies[c]
        return
    if distinct > 0.5 * n:
        notes.append(f"column {name!r}: dropped (text with {distinct} distinct values in {n} rows looks like an id)")
        return
    freq = col.map(col.value_counts(normalize=True)).astype(float)
    notes.append(f"column {name!r}: {distinct} categories encoded as their frequency")
    out[name] = freq


def prepare(df: pd.DataFrame, label: str, id_column: str | None = None) -> PreparedTable:
    """Validate the label, choose and encode the features; every choice is recorded in `notes`."""
    if label not in df.columns:
        raise TableError(f"label column {label!r} not in the table; columns are: {', '.join(map(str, df.columns))}")
    if id_column is not None and id_column not in df.columns:
        raise TableError(f"id column {id_column!r} not in the table; columns are: {', '.join(map(str, df.columns))}")
    notes: list[str] = []
    missing = int(df[label].isna().sum())
    if missing:
        notes.append(f"label {label!r}: {missing} rows without a label dropped")
        df = df[df[label].notna()]
    if df.empty:
        raise TableError(f"label column {label!r} is empty in every row")
    y, positive = _binary_labels(df[label], label, notes)
    counts = np.bincount(y, minlength=2)
    if counts.min() < MIN_PER_CLASS:
        raise TableError(f"label column {label!r} has only {int(counts.min())} rows of one class; "
                         f"cross-validation needs at least {MIN_PER_CLASS} of each")
    groups = None
    if id_column is not None:
        ids = df[id_column]
        if ids.isna().any():
            raise TableError(f"id column {id_column!r} has {int(ids.isna().sum())} empty values")
        if ids.duplicated().any():
            notes.append(f"id {id_column!r}: repeated ids kept together in one fold")
            groups = pd.factorize(ids)[0]
    n = len(df)
    out: dict[str, pd.Series] = {}
    for name in df.columns:
        if name in (label, id_column):
            continue
        col = df[name]
        key = str(name)
        if pd.api.types.is_bool_dtype(col):
            out[key] = col.astype(float)
        elif pd.api.types.is_numeric_dtype(col):
            out[key] = col.astype(float).replace([np.inf, -np.inf], np.nan)
        elif pd.api.types.is_datetime64_any_dtype(col):
            notes.append(f"column {key!r}: dropped (a date; time columns leak across folds)")
        else:
            _encode_text(key, col, n, out, notes)
    X = pd.DataFrame(out, index=df.index)
    constant = [c for c in X.columns if X[c].nunique(dropna=True) <= 1]
    if constant:
        notes.append(f"dropped {len(constant)} constant column(s): {', '.join(constant[:10])}")
        X = X.drop(columns=constant)
    if X.shape[1] == 0:
        raise TableError(f"no usable feature column besides the label {label!r}"
                         + (f" and id {id_column!r}" if id_column else ""))
    # LightGBM refuses some characters in feature names; keep them readable and unique.
    clean = [_safe_name(c, i) for i, c in enumerate(X.columns)]
    X.columns = clean
    return PreparedTable(X=X.reset_index(drop=True), y=y, groups=groups, positive_label=positive, notes=notes)


def _safe_name(name: str, index: int) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in name).strip("_") or f"f{index}"
    return f"{cleaned}__{index}" if cleaned[0].isdigit() else cleaned


def _splitter(y: np.ndarray, groups: np.ndarray | None, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    if groups is not None:
        return list(StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(y, y, groups))
    return list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def _fit_fold(X: np.ndarray, y: np.ndarray, groups: np.ndarray | None, X_test: np.ndarray, *, seed: int,
              num_threads: int, names: list[str]) -> tuple[np.ndarray, dict[str, object]]:
    """Cross-fitted search inside one outer fold; returns calibrated test probabilities."""
    inner = _splitter(y, groups, 3, seed + 1)
    best: tuple[float, dict[str, object], np.ndarray, np.ndarray] | None = None
    for shape in SEARCH_SPACE:
        params = {**base_params(num_threads=num_threads, seed=seed), **shape}
        oof = np.zeros(len(y))
        test = np.zeros(len(X_test))
        rounds = []
        for tr, va in inner:
            booster = train_one(params, X[tr], y[tr], X[va], y[va], feature_names=names)
            oof[va] = booster.predict(X[va], num_iteration=booster.best_iteration)
            test += booster.predict(X_test, num_iteration=booster.best_iteration) / len(inner)
            rounds.append(int(booster.best_iteration))
        score = auc(y, oof)
        if best is None or score > best[0]:
            best = (score, {**shape, "rounds": rounds, "inner_auc": round(score, 4)}, oof, test)
    assert best is not None
    _, chosen, oof, test = best
    calibrated = Calibrator.fit(oof, y).apply(test)
    # Keep the ranking of the averaged boosters: isotonic steps create ties, so break them by
    # the raw average (a tiny, order-preserving nudge that never crosses a step).
    return calibrated + 1e-9 * test, chosen


def cross_validate(table: PreparedTable, *, folds: int = 5, seed: int = 0, num_threads: int = 2,
                   on_fold: Callable[[int, int], None] | None = None) -> CVResult:
    """LightGBM vs RandomForest on the same stratified (grouped) folds; mean of per-fold figures."""
    started = time.perf_counter()
    X = table.X.to_numpy(dtype=np.float64)
    y = table.y.astype(int)
    names = table.feature_names
    splits = _splitter(y, table.groups, folds, seed)
    boost_threads = threads_for(len(y), num_threads)
    fold_auc, fold_f1, base_auc, base_f1, chosen = [], [], [], [], []
    for i, (tr, te) in enumerate(splits):
        groups = table.groups[tr] if table.groups is not None else None
        proba, params = _fit_fold(X[tr], y[tr], groups, X[te], seed=seed, num_threads=boost_threads, names=names)
        fold_auc.append(auc(y[te], proba))
        fold_f1.append(float(f1_score(y[te], proba >= 0.5, zero_division=0)))
        chosen.append(params)
        forest = RandomForestClassifier(n_estimators=300, n_jobs=num_threads, random_state=seed)
        forest.fit(X[tr], y[tr])
        rf = forest.predict_proba(X[te])[:, 1]
        base_auc.append(auc(y[te], rf))
        base_f1.append(float(f1_score(y[te], rf >= 0.5, zero_division=0)))
        log.debug("fold %d: lgbm auc %.4f, forest auc %.4f, chosen %s", i, fold_auc[-1], base_auc[-1], params)
        if on_fold is not None:
            on_fold(i + 1, len(splits))
    return CVResult(
        rows=len(y), folds=len(splits),
        cv_auc=float(np.nanmean(fold_auc)), cv_f1=float(np.mean(fold_f1)),
        baseline_cv_auc=float(np.nanmean(base_auc)), baseline_cv_f1=float(np.mean(base_f1)),
        seconds=time.perf_counter() - started, fold_auc=fold_auc, fold_baseline_auc=base_auc, chosen=chosen,
    )
