"""Starting the Streamlit console as a child process: headless, no telemetry, no browser, on a
given port, pointed at the moderation API by `SEALGUARD_API_URL`.

`sealguard console` and the browser tests both use `Console`, so what the tests drive is what an
operator runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from sealguard.net import free_port, wait_for_port
from sealguard.process import die_with_parent

APP = Path(__file__).resolve().parent / "app.py"


class ConsoleError(RuntimeError):
    """Root of dashboard errors: the console could not start."""


class Console:
    def __init__(self, api_url: str, *, host: str = "127.0.0.1", port: int = 0,
                 log_path: Path | None = None) -> None:
        self.api_url = api_url
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "streamlit", "run", str(APP),
                "--server.headless", "true", "--browser.gatherUsageStats", "false",
                "--server.address", self.host, "--server.port", str(self.port),
                "--server.fileWatcherType", "none", "--server.runOnSave", "false",
                "--global.developmentMode", "false", "--client.toolbarMode", "minimal",
                "--theme.base", "light"]

    def start(self, timeout: float = 60.0) -> Console:
        env = {**os.environ, "SEALGUARD_API_URL": self.api_url, "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(self.argv(), env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                     cwd=str(APP.parent.parent), preexec_fn=die_with_parent)  # noqa: PLW1509
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ConsoleError(f"streamlit exited with {self.proc.returncode} before listening"
                                   + (f"; see {self.log_path}" if self.log_path else ""))
            try:
                wait_for_port(self.host, self.port, timeout=0.5)
                return self
            except TimeoutError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise ConsoleError(f"streamlit did not listen on {self.url} within {timeout:.0f}s") from None

    def wait(self) -> int:
        assert self.proc is not None
        return self.proc.wait()

    def terminate(self) -> None:
        """Ask Streamlit to stop without waiting (safe from a signal handler)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
