"""What the cluster tests share: a `sealguard detect` child process they can start, read and kill."""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


class DetectProcess:
    """One `python -m sealguard detect` child: started, its ready line read, /metrics scraped."""

    def __init__(self, name: str, env: dict[str, str], group: str, log_dir: Path, *args: str) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("w")
        cmd = [sys.executable, "-m", "sealguard", "detect", "--group", group, "--metrics-port", "0", *args]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=self._log, text=True)
        self.metrics_url = self._ready(timeout=60)

    def _ready(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                if line.startswith("detect: "):
                    return dict(kv.split("=", 1) for kv in line.split()[1:])["metrics"]
        raise AssertionError(f"{self.name} printed no ready line in {timeout}s: {self.log_path.read_text()[-3000:]}")

    def metric(self, name: str, label: str = "") -> float:
        """The first sample of metric `name` whose line holds `label` (e.g. 'topic="x"'); 0 if none."""
        body = urllib.request.urlopen(self.metrics_url, timeout=5).read().decode()
        for line in body.splitlines():
            head = line.split(" ", 1)[0]
            if (head == name or head.startswith(name + "{")) and label in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def detect_process() -> type[DetectProcess]:
    return DetectProcess
