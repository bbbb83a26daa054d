"""A small LightGBM trainer for detection's own tests and quick checks — not the real trainer.

`sealguard train` (models/) owns training, the registry and promotion. Detection's tests still
need an artifact in the fixed format before and besides that, so this writes one from a feature
table the same way (features from `build_feature_table`, labels from the simulator's truth):
rows of a spammer before its first spam message are left out (a hijacked account's honest past
is not evidence either way).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from detection.features import FEATURE_NAMES, build_feature_table


def labelled_table(events: Iterable[Any], truth: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    table = build_feature_table(events)
    t = truth.set_index("account")
    label = t.label.reindex(table.account).fillna(0).to_numpy(dtype=int)
    first = t.first_spam_ts.reindex(table.account).to_numpy(dtype=float)
    keep = ~((label == 1) & ~np.isnan(first) & (table.ts.to_numpy() < first))
    return table[keep].reset_index(drop=True), label[keep]


def train_quick_model(table: pd.DataFrame, y: np.ndarray, out_dir: Path, version: str = "lgbm-quick",
                      rounds: int = 120, seed: int = 0) -> Path:
    """Fit a small booster on (table, y) and write `model.txt` + `meta.json` with an isotonic map."""
    import lightgbm as lgb
    from sklearn.isotonic import IsotonicRegression

    x = table[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    params = {"objective": "binary", "learning_rate": 0.08, "num_leaves": 15, "min_child_samples": 10,
              "feature_fraction": 0.9, "verbose": -1, "num_threads": 2, "seed": seed, "deterministic": True}
    booster = lgb.train(params, lgb.Dataset(x, label=y, feature_name=list(FEATURE_NAMES)), num_boost_round=rounds)
    raw = booster.predict(x)
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw, y)
    knots_x = np.asarray(iso.X_thresholds_, dtype=float)
    knots_y = np.asarray(iso.y_thresholds_, dtype=float)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(out / "model.txt"))
    meta = {"version": version, "features": list(FEATURE_NAMES),
            "calibration": {"x": knots_x.tolist(), "y": knots_y.tolist()} if len(knots_x) >= 2 else None,
            "trained_at": int(time.time() * 1000), "metrics": {"rows": len(y), "positives": int(y.sum())}}
    (out / "meta.json").write_text(json.dumps(meta))
    return out
