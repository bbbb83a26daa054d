"""Scenario files: every shipped one loads; a broken one names the file, the field and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.scenario import ScenarioError, load_scenario, parse_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "data" / "scenarios"


@pytest.mark.parametrize("path", sorted(SCENARIOS.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_scenario_loads(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.population.normal >= 2


def test_unknown_field_is_named_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\npopulation: {normal: 10, normall: 3}\n")
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    assert str(path) in str(err.value)
    assert "population.normall" in str(err.value)
    assert "not permitted" in str(err.value)


def test_bad_value_in_a_strategy_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\npopulation: {normal: 10}\nspam:\n  - {strategy: blaster, reply_share: 1.5}\n")
    with pytest.raises(ScenarioError, match=r"spam\[0\]\.reply_share: Input should be less than or equal to 1"):
        load_scenario(path)


def test_unknown_strategy_is_named(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"x\.yaml: spam\[0\]"):
        parse_scenario({"name": "x", "population": {"normal": 10}, "spam": [{"strategy": "nope"}]}, "x.yaml")


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(path)
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.yaml")
    path.write_text("- just\n- a list\n")
    with pytest.raises(ScenarioError, match="must be a mapping"):
        load_scenario(path)


def test_ranges_and_distributions_are_checked() -> None:
    with pytest.raises(ScenarioError, match=r"spam\[0\]\.start_h: Value error, max \(1\.0\) is below min"):
        parse_scenario({"name": "x", "population": {"normal": 10},
                        "spam": [{"strategy": "slow_drip", "start_h": {"min": 2, "max": 1}}]})
    with pytest.raises(ScenarioError, match="count must equal farms"):
        parse_scenario({"name": "x", "population": {"normal": 10},
                        "spam": [{"strategy": "farm", "count": 7, "farms": 2, "accounts_per_farm": 3}]})
