"""`sealguard bench fuzz` at a small size: the parser in process, a live relay, a pair talking.

Counts, not time: crashes and hangs must be zero and the well-behaved pair unharmed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHORT_RELAY = [sys.executable, str(Path(__file__).with_name("_short_relay.py"))]
LINE = re.compile(r"^fuzz: frames=(\d+) decoder_reached=(\d+) crashes=(\d+) hangs=(\d+) other_clients_ok=([01])$")


def _fuzz(args: list[str], kafka: str | None, tmp_path: Path) -> tuple[dict[str, int], str]:
    env = dict(os.environ)
    if kafka:
        env["SEALGUARD_KAFKA"] = kafka
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "-m", "sealguard", "bench", "fuzz", "--crash-dir", str(tmp_path / "crash"),
                           "--state-dir", str(tmp_path / "state"), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    last = proc.stdout.strip().splitlines()[-1]
    m = LINE.match(last)
    assert m, f"not the issue's line: {last}"
    keys = ("frames", "decoder_reached", "crashes", "hangs", "other_clients_ok")
    return dict(zip(keys, map(int, m.groups()))), proc.stderr


def test_parser_only(tmp_path: Path) -> None:
    f, err = _fuzz(["--frames", "30000", "--no-live"], None, tmp_path)
    assert f["frames"] == 30000
    assert f["decoder_reached"] >= 15000, "mutations must mostly get past the header check"
    assert f["crashes"] == 0 and f["hangs"] == 0, err[-3000:]


def test_live_relay_with_a_pair_talking(broker_bootstrap: str, tmp_path: Path) -> None:
    """Fuzz frames, slow-loris, silent, half-closed and slow-reader connections: no crash, no
    hang, and the pair talking throughout is unharmed."""
    f, err = _fuzz(["--frames", "10000", "--live-frames", "3000", "--slow-readers", "2", "--handshake-timeout", "3",
                    "--relay-cmd", " ".join(SHORT_RELAY)], broker_bootstrap, tmp_path)
    assert f["frames"] == 10000 and f["decoder_reached"] >= 5000
    assert f["crashes"] == 0, err[-4000:]
    assert f["hangs"] == 0, err[-4000:]
    assert f["other_clients_ok"] == 1, err[-4000:]
