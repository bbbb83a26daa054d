"""Streaming features over windows of 1 minute, 1 hour and 24 hours.

`FEATURE_NAMES` is the column order every model is trained and served with;
`build_feature_table(events)` is the batch entry point (training, evaluation) and runs the same
operators the online worker runs (`FeatureEngine`, `ScoreSchedule`).
"""

from detection.features.operators import FEATURE_INDEX, FEATURE_NAMES, OPERATORS, VERIFIED_WEIGHT, feature_row
from detection.features.state import AccountState, FeatureEngine, NetBook, NetView, ScoreSchedule
from detection.features.table import build_feature_table, iter_snapshots
from detection.features.windows import WINDOWS, RollingDistinct, RollingVector, Window

__all__ = [
    "FEATURE_INDEX", "FEATURE_NAMES", "OPERATORS", "VERIFIED_WEIGHT", "WINDOWS", "AccountState", "FeatureEngine",
    "NetBook", "NetView", "RollingDistinct", "RollingVector", "ScoreSchedule", "Window", "build_feature_table",
    "feature_row", "iter_snapshots",
]
