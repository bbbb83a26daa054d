"""Evaluation: a scenario played through the same features, rules, model and policy; the figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from detection.evaluate import evaluate_events
from sealguard.settings import REPO_ROOT

from .synth import Synth, truth_of

KEYS = ["accounts", "normal", "spammers", "false_bans", "pr_auc", "recall", "min_strategy_recall", "false_ban_rate",
        "banned_before_report", "spam_msgs_before_ban_p50", "spam_msgs_before_ban_p90"]


def test_figures_on_a_synthetic_stream(tiny_model: Path) -> None:
    s = Synth(seed=21).population(normal=40, blasters=2, drips=2, farm=3, minutes=15)
    figs, detail = evaluate_events(s.events, truth_of(s), tiny_model)
    assert list(figs) == KEYS
    assert figs["spammers"] == 7 and figs["normal"] == 40
    assert figs["false_bans"] == 0 and figs["recall"] >= 0.7
    assert set(detail["recall_per_strategy"]) == {"blaster", "slow_drip", "farm"}
    assert figs["spam_msgs_before_ban_p50"] <= 10


def _small_scenario(tmp_path: Path) -> Path:
    sc = yaml.safe_load((REPO_ROOT / "data" / "scenarios" / "train_small.yaml").read_text())
    sc["population"]["normal"] = 150
    sc["duration_h"] = 3
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(sc))
    return path


@pytest.mark.slow
def test_evaluate_scenario_and_the_command(tiny_model: Path, tmp_path: Path) -> None:
    path = _small_scenario(tmp_path)
    out = subprocess.run([sys.executable, "-m", "sealguard", "evaluate", "--scenario", str(path),
                          "--model", str(tiny_model)], capture_output=True, text=True, timeout=240,
                         env={"SEALGUARD_STATE_DIR": str(tmp_path / "state"), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("evaluate: accounts=")
    assert [kv.split("=")[0] for kv in last.removeprefix("evaluate: ").split()] == KEYS
    assert "recall[" in out.stdout and "false_bans[" in out.stdout
