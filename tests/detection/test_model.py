"""Model artifacts: loading, batch scoring with calibration, explanations, references, hot reload."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from detection.features import FEATURE_NAMES
from detection.model import ModelError, ModelSlots, load_model, resolve_model, write_pointer


def test_load_score_and_explain(tiny_model: Path) -> None:
    m = load_model(tiny_model)
    assert m.version == "lgbm-t1" and m.features == list(FEATURE_NAMES)
    rows = np.zeros((3, len(FEATURE_NAMES)))
    rows[1, FEATURE_NAMES.index("sends_1m")] = 60
    p = m.score(rows)
    assert p.shape == (3,) and np.all((p >= 0) & (p <= 1))
    top = m.explain(rows, top=3)
    assert len(top) == 3 and all(len(t) <= 3 for t in top)
    assert all(name in FEATURE_NAMES for t in top for name, _ in t)


def test_explain_is_each_rows_largest_contributions(tiny_model: Path) -> None:
    """`explain` sorts all rows at once; each row's answer is its own contributions' top by magnitude
    (LightGBM pred_contrib, bias left out, zeros dropped), as a row-by-row argsort gives it."""
    m = load_model(tiny_model)
    rows = np.random.default_rng(5).random((40, len(FEATURE_NAMES))) * 50
    rows[::4] = 0.0
    contrib = np.asarray(m.booster.predict(rows, pred_contrib=True, num_threads=1))[:, :-1]
    want = []
    for row in contrib:
        idx = np.argsort(-np.abs(row))[:4]
        want.append([(m.features[i], float(row[i])) for i in idx if row[i] != 0.0])
    assert m.explain(rows, top=4) == want
    assert m.explain(rows[:1], top=4) == want[:1] and m.explain(rows[:0]) == []


def test_a_model_over_a_subset_of_features_is_served(tiny_model: Path, tmp_path: Path) -> None:
    import lightgbm as lgb

    cols = ["sends_1m", "first_contact_share_1h", "account_age_s"]
    x = np.random.default_rng(0).random((200, 3))
    y = (x[:, 0] > 0.5).astype(int)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1}, lgb.Dataset(x, y), 5)
    d = tmp_path / "sub"
    d.mkdir()
    booster.save_model(str(d / "model.txt"))
    (d / "meta.json").write_text(json.dumps({"version": "lgbm-sub", "features": cols, "calibration": None}))
    m = load_model(d)
    rows = np.zeros((2, len(FEATURE_NAMES)))
    rows[0, FEATURE_NAMES.index("sends_1m")] = 0.9
    p = m.score(rows)
    assert p[0] > p[1]


@pytest.mark.parametrize("breakage, needle", [
    ("no_meta", "needs model.txt and meta.json"),
    ("bad_json", "not JSON"),
    ("unknown_feature", "features this build does not compute"),
    ("bad_calibration", "calibration"),
])
def test_broken_artifacts_name_the_problem(tiny_model: Path, tmp_path: Path, breakage: str, needle: str) -> None:
    d = tmp_path / "m"
    shutil.copytree(tiny_model, d)
    meta = json.loads((d / "meta.json").read_text())
    if breakage == "no_meta":
        (d / "meta.json").unlink()
    elif breakage == "bad_json":
        (d / "meta.json").write_text("{")
    elif breakage == "unknown_feature":
        meta["features"][0] = "shoe_size_1h"
        (d / "meta.json").write_text(json.dumps(meta))
    else:
        meta["calibration"] = {"x": [1, 0], "y": [0, 1]}
        (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=needle):
        load_model(d)


def test_references_and_hot_reload(tiny_model: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    served = state / "models" / "lgbm-t1"
    shutil.copytree(tiny_model, served)
    assert resolve_model(str(tiny_model), state) == tiny_model
    assert resolve_model("lgbm-t1", state) == served
    with pytest.raises(ModelError, match="no model 'champion'"):
        resolve_model(None, state)
    slots = ModelSlots(state)
    assert slots.refresh() is False and slots.champion is None
    write_pointer(state, "champion", "lgbm-t1", served)
    assert resolve_model("champion", state) == served.resolve()
    assert slots.refresh() is True and slots.champion is not None and slots.champion.version == "lgbm-t1"
    # A pointer to a broken artifact keeps the previous model.
    broken = state / "models" / "lgbm-bad"
    broken.mkdir()
    write_pointer(state, "challenger", "lgbm-bad", broken)
    write_pointer(state, "champion", "lgbm-bad", broken)
    slots.refresh()
    assert slots.champion is not None and slots.champion.version == "lgbm-t1" and slots.load_errors >= 1
