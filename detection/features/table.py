"""The batch entry point: a feature table built by replaying events through the streaming operators.

Training (models/) and evaluation (detection.evaluate) call `build_feature_table`; it runs the
very same `FeatureEngine` and `ScoreSchedule` the online worker runs, so a row here is exactly
the vector the worker would have scored at that moment. Rows are taken only at those scoring
moments (the schedule subsamples a busy account logarithmically), which keeps a 10M-signal
dataset to a few minutes of plain Python.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import numpy as np
import pandas as pd

from detection.features.operators import FEATURE_NAMES, feature_row
from detection.features.state import FeatureEngine, ScoreSchedule

SnapshotMode = Literal["scoring", "every"]

# Called with (account, ts, feature vector) at each snapshot, for callers that act as they go.
SnapshotHook = Callable[[str, int, list[float]], None]


def iter_snapshots(events: Iterable[Any], snapshots: SnapshotMode | ScoreSchedule = "scoring",
                   engine: FeatureEngine | None = None) -> Iterable[tuple[str, int, list[float]]]:
    """Replay ts-ordered events through both doors of the engine; yield (account, ts, vector) at
    every moment the online worker would score (`"scoring"`, the default schedule, or a given
    `ScoreSchedule`) or after every event that touches an account's features (`"every"`)."""
    engine = engine if engine is not None else FeatureEngine()
    schedule = snapshots if isinstance(snapshots, ScoreSchedule) else ScoreSchedule()
    every = snapshots == "every"
    row = feature_row
    accounts = engine.accounts
    for ev in events:
        out = engine.apply_outbound(ev)
        inn = engine.apply_inbound(ev)
        ts = ev.ts
        for account, received in ((out, False), (inn, True)):
            if account is None:
                continue
            st = accounts[account]
            if every or schedule.due(st, ts, received=received):
                schedule.mark(st, ts)
                yield account, ts, row(st, engine, ts)


def build_feature_table(events: Iterable[Any], snapshots: SnapshotMode | ScoreSchedule = "scoring",
                        *, engine: FeatureEngine | None = None) -> pd.DataFrame:
    """A DataFrame with columns `account`, `ts`, then FEATURE_NAMES — one row per scoring moment.

    `events` must be in ts order (as `simulator` emits them and as the relay timestamps them).
    Pass `engine` to keep the final state (e.g. to inspect it after the replay)."""
    accounts: list[str] = []
    stamps: list[int] = []
    rows: list[list[float]] = []
    for account, ts, vec in iter_snapshots(events, snapshots, engine):
        accounts.append(account)
        stamps.append(ts)
        rows.append(vec)
    matrix = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(FEATURE_NAMES))
    df = pd.DataFrame(matrix, columns=list(FEATURE_NAMES))
    df.insert(0, "ts", np.asarray(stamps, dtype=np.int64))
    df.insert(0, "account", pd.Series(accounts, dtype=object))
    return df
