"""`sealguard bench cluster` runs end to end at a tiny size and prints the issue's figures line.

Shape and the books only (lost=0, every node applied every ban): figures are measured by the
benchmark itself, never asserted on time here.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KEYS = ("nodes", "msgs_per_s", "cross_node_share", "server_cpu_us_per_msg", "single_node_cpu_us_per_msg", "p99_ms",
        "lost", "ban_all_nodes_p99_ms")
NUMBER = r"(?:-?\d+(?:\.\d+)?(?:e[+-]?\d+)?|nan|inf)"


@pytest.mark.postgres
def test_cluster_bench_line_shape(broker_bootstrap: str) -> None:
    env = dict(os.environ)
    env["SEALGUARD_KAFKA"] = broker_bootstrap
    proc = subprocess.run([sys.executable, "-m", "sealguard", "bench", "cluster", "--nodes", "3", "--users", "24",
                           "--messages", "300", "--inflight", "30", "--kill-users", "9", "--kill-rate", "20",
                           "--kill-seconds", "3", "--bans", "10", "--ban-rate", "20", "--settle-s", "15"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=280, check=False)
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    line = proc.stdout.strip().splitlines()[-1]
    m = re.match("^bench cluster: " + " ".join(f"{k}=({NUMBER})" for k in KEYS) + "$", line)
    assert m, f"the last line does not have the issue's shape:\n{line}"
    f = {k: float(v) for k, v in zip(KEYS, m.groups())}
    assert f["nodes"] == 3
    assert f["lost"] == 0, line
    assert 0.3 < f["cross_node_share"] <= 1.0, line  # users spread over the nodes: most messages cross
    for key in ("msgs_per_s", "server_cpu_us_per_msg", "single_node_cpu_us_per_msg", "p99_ms",
                "ban_all_nodes_p99_ms"):
        assert math.isfinite(f[key]) and f[key] >= 0, (key, line)


def test_bad_arguments_are_named() -> None:
    proc = subprocess.run([sys.executable, "-m", "sealguard", "bench", "cluster", "--nodes", "1"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert "--nodes must be at least 2" in proc.stderr
