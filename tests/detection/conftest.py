"""Detection fixtures: a tiny LightGBM artifact trained on a synthetic stream, in the fixed format."""

from __future__ import annotations

from pathlib import Path

import pytest

from detection.quick_model import labelled_table, train_quick_model

from .synth import Synth, truth_of


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    s = Synth(seed=5).population(normal=50, blasters=4, drips=4, farm=4, minutes=12)
    table, y = labelled_table(s.events, truth_of(s))
    return train_quick_model(table, y, tmp_path_factory.mktemp("model") / "lgbm-t1", version="lgbm-t1", rounds=30)
