"""The spine, end to end, with nothing mocked: `sealguard up --headless` starts a real Tansu broker,
the relay, detection and the API as child processes, drives real E2E clients through the relay,
and reports figures; spammers get banned by the relay, normal users do not, nothing acked is lost.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sealguard.cli.supervisor import parse_figures

pytestmark = pytest.mark.e2e


def _run_up(state_dir: Path, *args: str, timeout: float = 420) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALGUARD_")}
    env["SEALGUARD_STATE_DIR"] = str(state_dir)
    proc = subprocess.run([sys.executable, "-m", "sealguard", "up", "--headless", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("up: "), proc.stdout
    return parse_figures(last)


@pytest.fixture(scope="module")
def trained_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dir whose champion model was trained once (by the first `up`)."""
    return tmp_path_factory.mktemp("state")


def test_headless_run_bans_spammers_and_loses_nothing(trained_state: Path) -> None:
    # 90 s, as the README's headline run: a model ban under up's operating point also needs two
    # recipients' objections, and at 60 s the slower strategies were still collecting them in 1 run of 3.
    figures = _run_up(trained_state, "--duration", "90", "--users", "80", "--spam-share", "0.1")
    users, spammers = int(figures["users"]), int(figures["spammers"])
    assert users >= 80 and spammers >= 4  # newcomers join the population as it runs
    # Most spammers are banned within the run. Which ones varies: a dozen live accounts under up's
    # operating point (a model ban also needs two recipients' objections) gave banned shares from
    # 0.67 to 1.0 between runs at 90 s, and even a farm account was missed once. Detection quality
    # is `evaluate`'s job on held-out scenarios.
    assert int(figures["spammers_banned"]) / spammers >= 0.6, figures
    assert int(figures["normal_banned"]) == 0, figures
    assert int(figures["undelivered"]) == 0, figures
    assert int(figures["delivered"]) > 0
    assert float(figures["ban_latency_p50_s"]) > 0
    assert _processes_with_env(f"SEALGUARD_STATE_DIR={trained_state}") == []  # no orphans


def _processes_with_env(marker: str) -> list[int]:
    """Pids of live processes whose environment holds `marker` (every child of `up` inherits it)."""
    found = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found
