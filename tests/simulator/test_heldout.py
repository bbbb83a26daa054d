"""The held-out scenarios keep their promises: big enough, every hard case, every strategy, and
each strategy at least as evasive as anywhere in training (docs/scenarios.md, "Held-out rules")."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from simulator.scenario import STRATEGIES, Scenario, load_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "data" / "scenarios"
HELDOUT = sorted((SCENARIOS / "heldout").glob("*.yaml"))


def _training() -> list[Scenario]:
    # validation*.yaml are tuned on, never trained on, and held to the held-out rules themselves.
    return [load_scenario(p) for p in sorted(SCENARIOS.glob("*.yaml")) if p not in VALIDATION]


VALIDATION = sorted(SCENARIOS.glob("validation*.yaml"))


@pytest.mark.parametrize("path", VALIDATION, ids=lambda p: p.name)
def test_validation_is_as_evasive_as_heldout(path: Path) -> None:
    test_heldout_is_more_evasive_than_training(path)


def test_there_are_heldout_scenarios() -> None:
    assert len(HELDOUT) >= 3


@pytest.mark.parametrize("path", HELDOUT, ids=lambda p: p.name)
def test_heldout_is_more_evasive_than_training(path: Path) -> None:
    heldout = load_scenario(path)
    assert heldout.population.normal >= 10_000
    hard = heldout.hard_cases
    for case in ("small_business", "teacher", "community_admin", "new_user_onboarding"):
        assert getattr(hard, case).count >= 1, case
    assert {s.strategy for s in heldout.spam if s.count > 0} == set(STRATEGIES)
    assert heldout.brigades

    min_rate: dict[str, float] = defaultdict(lambda: float("inf"))
    max_reply: dict[str, float] = defaultdict(float)
    for scenario in _training():
        for spec in scenario.spam:
            min_rate[spec.strategy] = min(min_rate[spec.strategy], spec.rate_per_hour.median)
            max_reply[spec.strategy] = max(max_reply[spec.strategy], spec.reply_share)
    for spec in heldout.spam:
        assert spec.rate_per_hour.median <= min_rate[spec.strategy] / 2, spec.strategy
        assert spec.reply_share >= max_reply[spec.strategy], spec.strategy
