"""`sealguard bench relay` runs end to end at a tiny size and prints the issue's figures line.

Shape only: figures are measured by the benchmark itself, never asserted on time here.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench._proc import cpu_seconds, metric_sum, percentile, rss_bytes, source_address

REPO = Path(__file__).resolve().parents[2]
KEYS = ("users", "msgs", "msgs_per_s", "server_cpu_us_per_msg", "p50_ms", "p99_ms", "half_load_p99_ms",
        "rss_bytes_per_idle_conn", "signals_dropped", "mosquitto_cpu_us_per_msg", "mosquitto_half_load_p99_ms")
NUMBER = r"(?:-?\d+(?:\.\d+)?(?:e[+-]?\d+)?|nan)"


def _bench(args: list[str], kafka: str | None = None, timeout: float = 200) -> tuple[str, str]:
    env = dict(os.environ)
    if kafka:
        env["SEALGUARD_KAFKA"] = kafka
    proc = subprocess.run([sys.executable, "-m", "sealguard", "bench", "relay", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no stdout; stderr:\n{proc.stderr[-4000:]}"
    return lines[-1], proc.stderr


def _figures(line: str) -> dict[str, float]:
    pattern = "^bench relay: " + " ".join(f"{k}=({NUMBER})" for k in KEYS) + "$"
    m = re.match(pattern, line)
    assert m, f"the last line does not have the issue's shape:\n{line}"
    return {k: float(v) for k, v in zip(KEYS, m.groups())}


def _mosquitto_running() -> bool:
    return subprocess.run(["pgrep", "-x", "mosquitto"], capture_output=True, check=False).returncode == 0


def test_relay_and_mosquitto_line_shape(broker_bootstrap: str, tmp_path: Path) -> None:
    mosquitto = _mosquitto_running()  # started by the machine; without it, the relay half still runs
    out = tmp_path / "figures.json"
    line, err = _bench(["--users", "24", "--messages", "400", "--half-messages", "200", "--inflight", "50",
                        "--floor", "--json", str(out), *([] if mosquitto else ["--skip-mosquitto"])],
                       kafka=broker_bootstrap)
    # --floor: the protocol's floor measured in the same run; every phase says who set its tail
    data = json.loads(out.read_text())
    assert data["floor"]["cpu_us_per_msg"] >= 0 and data["floor"]["connected"] == 24
    for key in ("cpu_pressure_pct", "server_preempted_per_s", "half_cpu_pressure_pct", "half_loadavg"):
        assert key in data["relay"], key
    assert isinstance(data["relay"]["idle_thread_cpu_pct"], dict)
    # the closed loop alternates between the servers, three rounds each; each reports its median round
    assert len(data["relay"]["rounds_cpu_us_per_msg"]) == 3
    assert data["relay"]["cpu_us_per_msg"] == sorted(data["relay"]["rounds_cpu_us_per_msg"])[1] or \
        math.isclose(data["relay"]["cpu_us_per_msg"], sorted(data["relay"]["rounds_cpu_us_per_msg"])[1], abs_tol=0.01)
    assert len(data["relay"]["rounds_half_p99_ms"]) == 3
    if mosquitto:
        assert len(data["mosquitto"]["rounds_cpu_us_per_msg"]) == 3
    assert "relay/floor=" in err and "half-load phase: p99_ms=" in err
    f = _figures(line)
    assert f["users"] == 24 and f["msgs"] == 400
    for key in ("msgs_per_s", "server_cpu_us_per_msg", "p50_ms", "p99_ms", "half_load_p99_ms"):
        assert math.isfinite(f[key]) and f[key] >= 0, (key, line)
    assert f["p50_ms"] <= f["p99_ms"]
    assert f["signals_dropped"] == 0, line
    if mosquitto:
        assert math.isfinite(f["mosquitto_cpu_us_per_msg"]), line
        assert math.isfinite(f["mosquitto_half_load_p99_ms"]), line
    assert "timed out" not in err, err[-2000:]


@pytest.mark.skipif(not _mosquitto_running(), reason="mosquitto is not running on this machine")
def test_mosquitto_half_alone() -> None:
    """The harness and the minimal MQTT client, without the relay."""
    line, err = _bench(["--users", "10", "--messages", "300", "--half-messages", "100", "--inflight", "20",
                        "--skip-relay"])
    f = _figures(line)
    assert math.isnan(f["msgs_per_s"]) and math.isnan(f["signals_dropped"])
    assert f["mosquitto_cpu_us_per_msg"] >= 0 and f["mosquitto_half_load_p99_ms"] >= 0
    assert "timed out" not in err, err[-2000:]


def test_bad_arguments_are_named() -> None:
    proc = subprocess.run([sys.executable, "-m", "sealguard", "bench", "relay", "--users", "1"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert "--users must be at least 2" in proc.stderr


def test_proc_readings_of_this_process() -> None:
    assert cpu_seconds(os.getpid()) > 0
    assert rss_bytes(os.getpid()) > 1_000_000


def test_helpers() -> None:
    assert percentile([], 50) != percentile([], 50)  # nan
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert source_address(0) == "127.1.1.1"
    assert source_address(251) == "127.2.2.1"
    assert len({source_address(i).rsplit(".", 1)[0] for i in range(10_000)}) == 10_000  # one /24 each
    with pytest.raises(ValueError, match="62,500"):
        source_address(62_500)
    text = ("# HELP x\nsealguard_relay_signals_dropped_total 3.0\n"
            "sealguard_relay_signals_dropped_created 1.7e9\nother 5\n")
    assert metric_sum(text, "signals_dropped") == 3.0
    assert metric_sum(text, "missing") is None


def test_the_protocol_floor_runs_under_the_benchmark() -> None:
    """bench/_floor_relay.py (message path only) speaks enough of the protocol for the load."""
    line, err = _bench(["--users", "10", "--messages", "200", "--half-messages", "100", "--inflight", "20",
                        "--skip-mosquitto", "--relay-cmd", f"{sys.executable} -m bench._floor_relay"])
    f = _figures(line)
    assert f["server_cpu_us_per_msg"] >= 0 and math.isnan(f["signals_dropped"])
    assert "timed out" not in err, err[-2000:]
