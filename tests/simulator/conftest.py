"""A small scenario shared by the simulator tests (simulated once per session: it is pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.offline import SimulationResult, simulate
from simulator.scenario import Scenario, load_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "data" / "scenarios"


@pytest.fixture(scope="session")
def small_scenario() -> Scenario:
    return load_scenario(SCENARIOS / "train_small.yaml")


@pytest.fixture(scope="session")
def small_result(small_scenario: Scenario) -> SimulationResult:
    return simulate(small_scenario)
