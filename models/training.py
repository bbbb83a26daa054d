"""`sealguard train --dataset DIR`: signals → features → a registered, served, calibrated model.

1. Features come from `detection.features.build_feature_table` — the operators the online worker
   runs — over the dataset's ts-ordered signals (read column-checked by `models.signals_io`).
   One row per scoring moment, exactly the vector the worker would have scored then.
2. Labels come from the dataset's labels.parquet (see docs/datasets.md). A spammer's rows before
   its first spam message are left out: a hijacked account's honest past is not evidence either way.
3. The split is by account *and* time, so nothing leaks: accounts are dealt (stratified by label)
   into train / valid / test; train and valid use rows before a time cut, test uses the test
   accounts' rows after it. A model never sees a test account, nor anything after the cut.
4. LightGBM (`models.boosting.search`, early stopping and candidate choice on valid, isotonic
   calibration on valid) next to a logistic-regression baseline on the same rows.
5. Figures are per *account* on the test part (an account's score = its highest row score, as
   the policy acts on the highest): `pr_auc`, `auc`, `baseline_pr_auc`.
6. MLflow gets params, metrics and the artifact; the registry numbers the version `lgbm-N`; the
   artifact is exported to state_dir/models/lgbm-N/; the first version becomes champion, later
   ones become the challenger (scored in shadow) until someone promotes them.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from models.boosting import Calibrator, auc, pr_auc, search, threads_for
from models.errors import DatasetError

log = logging.getLogger(__name__)

TRAIN_SHARE, VALID_SHARE = 0.5, 0.2  # the rest of the accounts are the test part
TIME_CUT_QUANTILE = 0.6
SEARCH_ROWS = 100_000  # the search runs on at most this many training rows (by whole accounts)
REFIT_ROWS = 300_000  # the winner is refit on at most this many training rows (by whole accounts; docs/models.md)
BASELINE_ROWS = 300_000
PARALLEL_SIGNALS = 500_000  # below this the feature replay runs in-process (spawning costs ~2 s of imports)


class Progress(Protocol):
    def stage(self, description: str, total: int | None) -> None: ...

    def advance(self, n: int = 1) -> None: ...


class _Quiet:
    def stage(self, description: str, total: int | None) -> None:
        log.info("%s", description)

    def advance(self, n: int = 1) -> None:
        pass


@dataclass
class Split:
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    cut_ts: int


@dataclass
class TrainResult:
    version: str
    seconds: float
    pr_auc: float
    auc: float
    baseline_pr_auc: float
    artifact: Path
    run_id: str | None
    role: str  # champion | challenger
    metrics: dict[str, Any] = field(default_factory=dict)

    def figures(self) -> dict[str, object]:
        return {"version": self.version, "seconds": round(self.seconds, 1), "pr_auc": self.pr_auc,
                "auc": self.auc, "baseline_pr_auc": self.baseline_pr_auc}


# -- inputs ----------------------------------------------------------------------------------
def read_labels(dataset: Path) -> pd.DataFrame:
    """labels.parquet → one row per account: account, label (0/1), first_spam_ts (ms or NaN), role."""
    path = Path(dataset) / "labels.parquet"
    if not path.is_file():
        raise DatasetError(f"{path} does not exist (a dataset directory needs signals.parquet and labels.parquet)")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a broken file
        raise DatasetError(f"{path}: not a readable Parquet file: {exc}") from None
    for column in ("account", "label"):
        if column not in frame.columns:
            raise DatasetError(f"{path}: no {column!r} column (columns: {', '.join(frame.columns)})")
    labels = pd.to_numeric(frame["label"], errors="coerce")
    bad = ~labels.isin([0, 1])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        value = frame["label"].iloc[[row]].tolist()[0]
        raise DatasetError(f"{path}: row {row}: label {value!r} is not 0 or 1")
    out = pd.DataFrame({"account": frame["account"].astype(str), "label": labels.astype(int)})
    out["first_spam_ts"] = pd.to_numeric(frame["first_spam_ts"], errors="coerce") if "first_spam_ts" in frame \
        else np.nan
    fallback = pd.Series(np.where(out.label == 1, "spam", "legit"), index=out.index)
    out["role"] = frame["role"].where(frame["role"].notna(), fallback).astype(str) if "role" in frame else fallback
    if out.account.duplicated().any():
        dup = out.account[out.account.duplicated()].iloc[0]
        raise DatasetError(f"{path}: account {dup} has more than one label row (build the dataset with "
                           f"`sealguard dataset build`, which resolves them)")
    return out


def build_features(dataset: Path, progress: Progress, *, processes: int = 1,
                   timings: dict[str, float] | None = None) -> tuple[pd.DataFrame, int]:
    """The feature table of the dataset's signals (detection's operators); (table, signals read).

    The replay runs from columns (`detection.features.plan_replay`), in `processes` account shards
    at once when the file holds at least PARALLEL_SIGNALS signals (each process reads the file
    itself and checks its share of the row groups); the merged table is the single-process one."""
    from detection.features.table import REPLAY_COLUMNS, merge_shards, plan_replay, replay_shard
    from models.signals_io import count_signals, read_columns, ts_sorted

    signals = Path(dataset) / "signals.parquet"
    if not signals.is_file():
        raise DatasetError(f"{signals} does not exist (a dataset directory needs signals.parquet)")
    total = count_signals(signals)
    if total == 0:
        raise DatasetError(f"{signals} holds no signals")
    progress.stage("features", total)
    shards = max(1, processes) if total >= PARALLEL_SIGNALS else 1
    timings = timings if timings is not None else {}
    timings["feature_shards"] = shards
    if shards == 1:
        # The replay allocates millions of small, acyclic objects (rows, window buckets): the cyclic
        # collector finds nothing in them and cost 19 % of the CPU at 672k signals (14.3 s → 11.6 s).
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            cpu0 = time.process_time()
            columns = read_columns(signals, REPLAY_COLUMNS)
            if not ts_sorted(columns):
                raise DatasetError(f"{signals} is not in time order; the feature replay needs ts order "
                                   f"(`sealguard dataset build` writes it sorted)")
            cpu1 = time.process_time()
            plan = plan_replay(columns)
            del columns
            cpu2 = time.process_time()
            parts = [replay_shard(plan)]
            cpu3 = time.process_time()
            timings.update(features_read_cpu=cpu1 - cpu0, features_plan_cpu=cpu2 - cpu1,
                           features_replay_cpu=cpu3 - cpu2)
        finally:
            if was_enabled:
                gc.enable()
        progress.advance(total)
    else:
        parts = _parallel_shards(signals, shards, progress, total, timings)
    t0 = time.perf_counter()
    table = merge_shards(parts)
    timings["features_merge_seconds"] = time.perf_counter() - t0
    return table, total


def _parallel_shards(signals: Path, shards: int, progress: Progress, total: int,
                     timings: dict[str, float]) -> list[Any]:
    """Run `models.signals_io.feature_shard` in `shards` spawned processes; their ShardRows."""
    import multiprocessing
    import pickle
    import tempfile
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from models.signals_io import feature_shard

    parts = []
    with tempfile.TemporaryDirectory(prefix="sealguard-features-") as tmp:
        outs = [str(Path(tmp) / f"shard-{k}.pickle") for k in range(shards)]
        # spawn, not fork: the parent has Arrow's thread pools running, which a fork would copy mid-flight.
        with ProcessPoolExecutor(shards, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(feature_shard, str(signals), k, shards, outs[k]): k for k in range(shards)}
            for future in as_completed(futures):
                stats = future.result()  # a DatasetError in a shard is raised here, as it is
                k = futures[future]
                log.info("features shard %d/%d: %d signals → %d rows; read %.1f s, plan %.1f s, replay %.1f s "
                         "CPU; %.1f s wall", k + 1, shards, stats["signals"], stats["rows"], stats["read_cpu"],
                         stats["plan_cpu"], stats["replay_cpu"], stats["wall"])
                for key in ("read_cpu", "plan_cpu", "replay_cpu", "cpu"):
                    timings[f"features_{key}"] = timings.get(f"features_{key}", 0.0) + stats[key]
                progress.advance(total // shards)
        for out in outs:
            with open(out, "rb") as fh:
                parts.append(pickle.load(fh))  # our own files, written just above
    return parts


def labelled_rows(table: pd.DataFrame, labels: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows of labelled accounts, without a spammer's rows from before its first spam."""
    t = labels.set_index("account")
    label = t.label.reindex(table.account)
    known = label.notna().to_numpy()
    first = t.first_spam_ts.reindex(table.account).to_numpy(dtype=float)
    y = label.fillna(0).to_numpy(dtype=int)
    before_spam = (y == 1) & ~np.isnan(first) & (table.ts.to_numpy() < first)
    keep = known & ~before_spam
    dropped_unlabelled = int((~known).sum())
    if dropped_unlabelled:
        log.info("%d rows of %d unlabelled accounts left out", dropped_unlabelled,
                 table.account[~known].nunique())
    return table[keep].reset_index(drop=True), y[keep]


def split(table: pd.DataFrame, y: np.ndarray, seed: int) -> Split:
    """Accounts dealt into train/valid/test (stratified by label), rows cut in time."""
    rng = np.random.default_rng(seed)
    accounts = pd.DataFrame({"account": table.account, "y": y}).groupby("account", sort=True).y.max()
    part = pd.Series("train", index=accounts.index)
    for _, group in accounts.groupby(accounts):
        idx = group.index.to_numpy()
        rng.shuffle(idx)
        n_train = round(len(idx) * TRAIN_SHARE)
        n_valid = round(len(idx) * VALID_SHARE)
        part[idx[n_train:n_train + n_valid]] = "valid"
        part[idx[n_train + n_valid:]] = "test"
    cut = int(np.quantile(table.ts.to_numpy(), TIME_CUT_QUANTILE))
    row_part = part.reindex(table.account).to_numpy()
    before = table.ts.to_numpy() < cut
    return Split(train=(row_part == "train") & before, valid=(row_part == "valid") & before,
                 test=(row_part == "test") & ~before, cut_ts=cut)


def per_account(accounts: pd.Series, y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An account's score is its highest row score (the policy acts on the highest)."""
    frame = pd.DataFrame({"account": accounts.to_numpy(), "y": y, "s": scores})
    grouped = frame.groupby("account", sort=False).agg(y=("y", "max"), s=("s", "max"))
    return grouped.y.to_numpy(), grouped.s.to_numpy()


def _sample_accounts(accounts: pd.Series, limit: int, seed: int) -> np.ndarray:
    """A row mask keeping whole accounts, about `limit` rows."""
    if len(accounts) <= limit:
        return np.ones(len(accounts), dtype=bool)
    unique = accounts.unique()
    rng = np.random.default_rng(seed)
    keep = set(rng.choice(unique, size=max(1, int(len(unique) * limit / len(accounts))), replace=False))
    return accounts.isin(keep).to_numpy()


def baseline(X_tr: np.ndarray, y_tr: np.ndarray, X_te: np.ndarray, seed: int) -> np.ndarray:
    """Logistic regression on signed-log1p, standardised features (NaN → 0)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    def squash(x: np.ndarray) -> np.ndarray:
        x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        return np.sign(x) * np.log1p(np.abs(x))

    model = make_pipeline(FunctionTransformer(squash), StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(X_tr, y_tr)
    return np.asarray(model.predict_proba(X_te)[:, 1])


# -- the whole path --------------------------------------------------------------------------
class Stages:
    """Wall and CPU seconds of each stage, logged as each one ends (`stage features: 41.2 s wall, ...`)
    and kept for the MLflow metrics (`<stage>_seconds`, `<stage>_cpu_seconds`)."""

    def __init__(self) -> None:
        self.figures: dict[str, float] = {}
        self._name: str | None = None
        self._wall = self._cpu = 0.0

    def start(self, name: str) -> None:
        self.end()
        self._name, self._wall, self._cpu = name, time.perf_counter(), time.process_time()

    def end(self, extra_cpu: float = 0.0) -> None:
        """End the running stage; `extra_cpu` adds CPU spent in child processes."""
        if self._name is None:
            return
        wall, cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu + extra_cpu
        self.figures[f"{self._name}_seconds"] = wall
        self.figures[f"{self._name}_cpu_seconds"] = cpu
        log.info("stage %s: %.1f s wall, %.1f s CPU", self._name, wall, cpu)
        self._name = None


def train_dataset(settings: Any, dataset: Path, *, seed: int = 0, threads: int = 2,
                  progress: Progress | None = None, promote_first: bool = True,
                  run_name: str | None = None) -> TrainResult:
    """Train on a dataset directory and register + export the result (see the module docstring)."""
    progress = progress or _Quiet()
    started = time.perf_counter()
    dataset = Path(dataset)
    if not dataset.is_dir():
        raise DatasetError(f"dataset {dataset} is not a directory (it needs signals.parquet and labels.parquet)")
    stages = Stages()
    stages.start("labels")
    labels = read_labels(dataset)
    stages.start("features")
    info: dict[str, float] = {}
    table, n_signals = build_features(dataset, progress, processes=threads, timings=info)
    stages.end(extra_cpu=info.get("features_cpu", 0.0))
    stages.figures.update(info)
    return train_table(settings, table, labels, source=str(dataset.resolve()), signals=n_signals, started=started,
                       seed=seed, threads=threads, progress=progress, promote_first=promote_first,
                       run_name=run_name or f"train {dataset.name}", stages=stages)


def train_table(settings: Any, table: pd.DataFrame, labels: pd.DataFrame, *, source: str, signals: int,
                started: float, seed: int = 0, threads: int = 2, progress: Progress | None = None,
                promote_first: bool = True, run_name: str = "train", stages: Stages | None = None) -> TrainResult:
    """Train on a feature table (from `build_feature_table`) and its labels; register and export."""
    from detection.features import FEATURE_NAMES
    from models.artifacts import models_root, write_artifact
    from models.registry import Registry, version_name

    progress = progress or _Quiet()
    stages = stages or Stages()
    n_signals = signals
    feature_seconds = time.perf_counter() - started
    feature_cpu = time.process_time() + stages.figures.get("features_cpu", 0.0)  # reading + features (+ imports)
    stages.start("split")
    table, y = labelled_rows(table, labels)
    if len(np.unique(y)) < 2:
        raise DatasetError(f"{source}: the labelled rows hold one class only ({int(y.sum())} positive of "
                           f"{len(y)}); training needs spam and legitimate accounts")
    parts = split(table, y, seed)
    names = list(FEATURE_NAMES)
    X = table[names].to_numpy(dtype=np.float64)
    for name, mask in (("train", parts.train), ("valid", parts.valid), ("test", parts.test)):
        if len(np.unique(y[mask])) < 2:
            raise DatasetError(f"{source}: the {name} part has one class only; the dataset is too small "
                               f"({int(y.sum())} positive rows of {len(y)})")
    progress.stage("search", 4)
    stages.start("search")
    sub = parts.train.copy()
    sub[parts.train] = _sample_accounts(table.account[parts.train], SEARCH_ROWS, seed)
    # Early stopping evaluates the validation rows at every round: on a sample of them, the search
    # costs what its training rows cost (at 10M signals the full validation part outnumbered them 3:1).
    vsub = parts.valid.copy()
    vsub[parts.valid] = _sample_accounts(table.account[parts.valid], SEARCH_ROWS, seed + 1)
    if len(np.unique(y[vsub])) < 2:
        vsub = parts.valid
    found = search(X[sub], y[sub], X[vsub], y[vsub], scorer=pr_auc,
                   num_threads=threads_for(int(sub.sum()), threads), seed=seed, feature_names=names,
                   on_trial=lambda t: progress.advance())
    booster = found.booster
    refit_rows = parts.train.copy()
    refit_rows[parts.train] = _sample_accounts(table.account[parts.train], REFIT_ROWS, seed + 3)
    if refit_rows.sum() > sub.sum():  # the search saw a sample: refit the winner on (up to REFIT_ROWS) training rows
        from models.boosting import train_one

        progress.stage("refit", 1)
        stages.start("refit")
        booster = train_one({**found.params, "num_threads": threads_for(int(refit_rows.sum()), threads)},
                            X[refit_rows], y[refit_rows], X[parts.valid], y[parts.valid], feature_names=names)
        progress.advance()
    stages.start("calibration")
    valid_raw = booster.predict(X[parts.valid], num_iteration=booster.best_iteration)
    calibrator = Calibrator.fit(valid_raw, y[parts.valid])
    test_p = calibrator.apply(booster.predict(X[parts.test], num_iteration=booster.best_iteration))
    acc_y, acc_s = per_account(table.account[parts.test], y[parts.test], test_p)
    progress.stage("baseline", 1)
    stages.start("baseline")
    base_rows = parts.train.copy()
    base_rows[parts.train] = _sample_accounts(table.account[parts.train], BASELINE_ROWS, seed + 7)
    base_p = baseline(X[base_rows], y[base_rows], X[parts.test], seed)
    progress.advance()
    _, base_acc = per_account(table.account[parts.test], y[parts.test], base_p)
    stages.end()
    metrics: dict[str, Any] = {
        "pr_auc": pr_auc(acc_y, acc_s), "auc": auc(acc_y, acc_s),
        "baseline_pr_auc": pr_auc(acc_y, base_acc), "baseline_auc": auc(acc_y, base_acc),
        "row_pr_auc": pr_auc(y[parts.test], test_p), "row_auc": auc(y[parts.test], test_p),
        "valid_pr_auc": found.score, "signals": n_signals, "rows": len(y), "train_rows": int(parts.train.sum()),
        "search_rows": int(sub.sum()), "search_valid_rows": int(vsub.sum()), "refit_rows": int(max(refit_rows.sum(), sub.sum())),
        "baseline_rows": int(base_rows.sum()),
        "valid_rows": int(parts.valid.sum()), "test_rows": int(parts.test.sum()), "test_accounts": len(acc_y),
        "test_positive_accounts": int(acc_y.sum()), "best_iteration": int(booster.best_iteration or 0),
        "feature_seconds": feature_seconds, "feature_cpu_seconds": feature_cpu,
        **stages.figures,
    }
    progress.stage("registry", 1)
    stages.start("registry")
    registry = Registry(settings)
    params = {"dataset": source, "signals": n_signals, "seed": seed, "threads": threads, "cut_ts": parts.cut_ts,
              "split": f"accounts {TRAIN_SHARE}/{VALID_SHARE}/rest, rows before/after cut",
              **{f"lgbm_{k}": v for k, v in found.params.items() if k not in ("verbosity", "deterministic")},
              "search": [t.params | {"rounds": t.best_iteration, "valid_pr_auc": round(t.score, 4)}
                         for t in found.trials]}
    run_id = registry.start_run(run_name, params)
    ok = False
    try:
        version = version_name(registry.next_number())
        out = models_root(settings.state_dir) / version
        metrics["seconds"] = time.perf_counter() - started
        write_artifact(out, booster, version, names, calibrator.to_json(), metrics,
                       extra={"dataset": source, "run_id": run_id, "params": found.params})
        registry.log_metrics(run_id, metrics)
        registry.log_artifacts(run_id, out, "model")
        version = registry.register(out, run_id)
        role = "challenger"
        if registry.alias("champion") is None and promote_first:
            registry.set_champion(version)
            role = "champion"
        elif promote_first:
            registry.set_challenger(version)
        registry.client.set_tag(run_id, "model_version", version)
        ok = True
    finally:
        registry.finish_run(run_id, ok)
    progress.advance()
    stages.end()
    seconds = time.perf_counter() - started
    return TrainResult(version=version, seconds=seconds, pr_auc=metrics["pr_auc"], auc=metrics["auc"],
                       baseline_pr_auc=metrics["baseline_pr_auc"], artifact=out, run_id=run_id, role=role,
                       metrics=metrics)
