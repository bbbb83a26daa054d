"""`sealguard simulate`: Parquet out and the figures line; a broken scenario is named, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from typer.testing import CliRunner

from sealguard.cli import app

TINY = """
name: tiny
seed: 5
duration_h: 3
population: {normal: 120}
hard_cases: {teacher: {count: 1}}
spam:
  - {strategy: blaster, count: 2}
  - {strategy: farm, farms: 1, accounts_per_farm: 3}
"""


def test_simulate_writes_parquet_and_ends_with_figures(tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(TINY)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["simulate", "--scenario", str(scenario), "--out", str(out)])
    assert result.exit_code == 0, result.output
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("simulate: accounts=126 signals=")
    figures = dict(kv.split("=") for kv in last.split(": ", 1)[1].split())
    assert {"accounts", "signals", "seconds"} <= set(figures)
    assert pq.read_metadata(out / "signals.parquet").num_rows == int(figures["signals"])
    assert pq.read_metadata(out / "labels.parquet").num_rows == 126


def test_broken_scenario_names_file_and_field(tmp_path: Path) -> None:
    scenario = tmp_path / "broken.yaml"
    scenario.write_text(TINY.replace("count: 2", "count: -2"))
    result = CliRunner().invoke(app, ["simulate", "--scenario", str(scenario), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert str(scenario) in result.output
    assert "spam[0].count" in result.output
