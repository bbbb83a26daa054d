"""The first model `sealguard up` serves, trained on a recorded, seeded *live* run.

The platform's live population is a freshly launched service: every account registered minutes
ago, chatting through the real relay. A model trained on an offline population with years of
history learns "new account ⇒ suspicious" and would ban ordinary newcomers here. So on a state
directory without a champion, `up` first runs a warm-up population (its own seed, a richer share
of spammers so every strategy is represented) through the real relay with detection off, reads the
signals back from the stream, builds features with detection's operators, and trains, registers and
promotes the result — the same path as `sealguard dataset build` + `sealguard train`.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from pathlib import Path

import pandas as pd

from sealguard.settings import REPO_ROOT, Settings

log = logging.getLogger("sealguard.up")

WARMUP_SEED = 1011  # never the seed of the population `up` then serves (the scenario's own)
WARMUP_SCENARIO = REPO_ROOT / "data" / "scenarios" / "spine_warmup.yaml"  # several of each hard case


def warmup_labels(result: object) -> pd.DataFrame:
    """Ground truth of a live run as the training labels table (account, label, first_spam_ts, role)."""
    roles: dict[str, str] = result.roles  # type: ignore[attr-defined]
    labels: dict[str, int] = result.labels  # type: ignore[attr-defined]
    first: dict[str, int] = result.first_spam_ms  # type: ignore[attr-defined]
    return pd.DataFrame({
        "account": list(roles),
        "label": [labels[a] for a in roles],
        "first_spam_ts": [float(first[a]) if a in first else float("nan") for a in roles],
        "role": list(roles.values()),
    })


def train_from_live_warmup(settings: Settings, relay_host: str, relay_port: int, *,
                           scenario: Path = WARMUP_SCENARIO, seconds: float = 60.0, users: int = 400,
                           spam_share: float = 0.2, seed: int = WARMUP_SEED) -> str:
    """Run the warm-up population, record its signals from the stream, train; the new version."""
    from detection.features import build_feature_table
    from models.datasets import read_stream
    from models.signals_io import iter_events
    from models.training import train_table
    from simulator.live import run_live
    from simulator.scenario import load_scenario

    assert settings.kafka, "the warm-up reads its signals back from the stream"
    started = time.perf_counter()
    log.info("no champion model yet: recording a %.0fs seeded live warm-up (%d users, %.0f%% spammers)",
             seconds, users, 100 * spam_share)
    result = asyncio.run(run_live(load_scenario(scenario), relay_host, relay_port, seconds, users=users,
                                  spam_share=spam_share, seed=seed, drain_s=5.0))
    with tempfile.TemporaryDirectory(dir=settings.state_dir) as tmp:
        path = Path(tmp) / "signals.parquet"
        n_signals, bad = read_stream(settings.kafka, settings.signals_topic, path, idle_s=3.0)
        if bad:
            log.warning("warm-up: %d undecodable records skipped", bad)
        table = build_feature_table(iter_events(path))
    log.info("warm-up recorded %d signals for %d accounts in %.1fs", n_signals, len(result.roles),
             time.perf_counter() - started)
    trained = train_table(settings, table, warmup_labels(result), source=f"live-warmup:{scenario.name}:seed={seed}",
                          signals=n_signals, started=started, seed=seed, run_name=f"up warm-up {scenario.stem}")
    log.info("model %s (%s) trained on the live warm-up in %.1fs: pr_auc=%.3f", trained.version, trained.role,
             time.perf_counter() - started, trained.pr_auc)
    return str(trained.version)
