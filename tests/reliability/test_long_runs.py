"""The long runs behind docs/reliability.md, as `-m slow` tests (excluded from the default suite):
the full fault run (≥ 100k acknowledged messages, ten relay kills, PostgreSQL) and a soak.
`sealguard bench faults` / `sealguard bench soak` run the same code and print the figures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench._harness import create_pg_database, drop_pg_database
from bench.faults import FaultsConfig, run_faults
from bench.soak import SoakConfig, run_soak

pytestmark = pytest.mark.slow
PG_ADMIN = os.environ.get("SEALGUARD_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def test_full_fault_run(tmp_path: Path) -> None:
    url = create_pg_database(PG_ADMIN)
    try:
        cfg = FaultsConfig(messages=100_000, rate=400, users=60, db_url=url, state_dir=tmp_path / "state")
        figures = run_faults(cfg)
    finally:
        drop_pg_database(PG_ADMIN, url)
    assert figures["acked"] >= 100_000 and figures["relay_kills"] == 10
    assert figures["duplicates"] == 0 and figures["double_enforced"] == 0 and figures["bans_intact"] is True
    assert figures["lost"] == 0, (figures, cfg.details)


def test_soak(tmp_path: Path) -> None:
    minutes = float(os.environ.get("SEALGUARD_SOAK_MINUTES", "30"))
    figures = run_soak(SoakConfig(minutes=minutes, state_dir=tmp_path / "state"))
    assert figures["rss_growth_pct"] <= 5, figures
