"""`ensure_model(settings) -> version`: the champion `sealguard up` serves, trained on first start.

On a fresh state directory there is no model, and detection needs one. Rather than ship a binary
model, `up` trains one: the seeded training scenario (`data/scenarios/train_small.yaml`, never a
held-out one) is simulated offline with the relay's own signal code, its features built with
detection's operators, and the result trained, registered in MLflow and promoted to champion —
the same path as `sealguard train --dataset`, without the Parquet round trip.

When a champion already exists this is two `stat`s and one small JSON read: no LightGBM, no
mlflow import, so `up` starts at once.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from models.artifacts import champion_version

log = logging.getLogger(__name__)

BOOTSTRAP_SCENARIO = Path(__file__).resolve().parent.parent / "data" / "scenarios" / "train_small.yaml"
BOOTSTRAP_SEED = 11


def ensure_model(settings: Any, *, scenario: Path | None = None, seed: int = BOOTSTRAP_SEED) -> str:
    """The champion's version; trains, registers and promotes one first if there is none."""
    existing = champion_version(settings.state_dir)
    if existing is not None:
        return existing
    return bootstrap(settings, scenario=scenario, seed=seed).version


def bootstrap(settings: Any, *, scenario: Path | None = None, seed: int = BOOTSTRAP_SEED) -> Any:
    """Simulate the training scenario, train on it and promote the result (see the module docstring)."""
    from detection.features import build_feature_table
    from models.training import train_table
    from simulator.offline import simulate
    from simulator.scenario import load_scenario

    started = time.perf_counter()
    path = Path(scenario or BOOTSTRAP_SCENARIO)
    log.info("no champion model yet: training one from the seeded scenario %s", path.name)
    sim = simulate(load_scenario(path), seed)
    log.info("simulated %d signals for %d accounts in %.1fs", len(sim.events), len(sim.truth),
             time.perf_counter() - started)
    table = build_feature_table(sim.events)
    labels = sim.truth[["account", "label", "first_spam_ts", "role"]].copy()
    settings.ensure_state_dir()
    result = train_table(settings, table, labels, source=f"scenario:{path.name}:seed={seed}",
                         signals=len(sim.events), started=started, seed=seed, run_name=f"bootstrap {path.stem}")
    if result.role != "champion":  # someone else promoted a champion meanwhile: keep theirs
        log.info("a champion appeared while training; %s stays the challenger", result.version)
    log.info("bootstrap model %s (%s) in %.1fs: pr_auc=%.3f", result.version, result.role, result.seconds,
             result.pr_auc)
    return result
