"""Child processes for `sealguard up`: start each service, read the line it prints when ready
(`NAME: key=value ...`), keep its output in a log file, and stop every one of them on exit.

Children get PR_SET_PDEATHSIG, so even a `kill -9` of `up` leaves no orphans behind.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from sealguard.process import die_with_parent, stop_process

log = logging.getLogger(__name__)

class ServiceError(RuntimeError):
    """A service did not start, or died while others depended on it."""


def parse_figures(line: str) -> dict[str, str]:
    """`relay: listening=127.0.0.1:5 node=relay-1` → {'listening': '127.0.0.1:5', 'node': 'relay-1'}."""
    _, _, rest = line.partition(":")
    return dict(part.split("=", 1) for part in rest.split() if "=" in part)


class Service:
    """One child process running a `sealguard` command."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[str] | None = None
        self.ready: dict[str, str] = {}
        self._ready_event = threading.Event()

    def spawn(self) -> Service:
        """Start the process without waiting for it to be ready."""
        logfile = open(self.log_path, "a")  # noqa: SIM115 - kept open for the child's lifetime
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=subprocess.PIPE, stderr=logfile, stdin=subprocess.DEVNULL,
            text=True, bufsize=1, preexec_fn=die_with_parent,  # noqa: PLW1509
        )
        threading.Thread(target=self._pump, args=(logfile,), name=f"{self.name}-stdout", daemon=True).start()
        return self

    def wait_ready(self, timeout: float = 60.0) -> dict[str, str]:
        """Block until the service printed its ready line; raise ServiceError if it died or timed out."""
        assert self.proc is not None, "spawn() first"
        deadline = time.monotonic() + timeout
        while not self._ready_event.wait(0.2):
            if self.proc.poll() is not None:
                raise ServiceError(f"{self.name} exited with {self.proc.returncode} before it was ready; "
                                   f"see {self.log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceError(f"{self.name} was not ready after {timeout:.0f}s; see {self.log_path}")
        log.info("%s ready: %s", self.name, " ".join(f"{k}={v}" for k, v in self.ready.items()))
        return self.ready

    def _pump(self, logfile: object) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            logfile.write(line)  # type: ignore[attr-defined]
            logfile.flush()  # type: ignore[attr-defined]
            if not self._ready_event.is_set() and line.startswith(f"{self.name}:"):
                self.ready = parse_figures(line.strip())
                self._ready_event.set()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if stop_process(self.proc, timeout):
            log.warning("%s did not stop within %.0fs; killed it", self.name, timeout)


class Supervisor:
    """Starts services in order and stops them in reverse order."""

    def __init__(self, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ if env is None else env)
        self.services: list[Service] = []

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> Service:
        """Start `sealguard ARGS...` as the service `name`; call `wait_ready()` on the result."""
        service = Service(name, [sys.executable, "-m", "sealguard", *args], {**self.env, **(env or {})}, self.log_dir)
        self.services.append(service)
        return service.spawn()

    def start(self, name: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60.0) -> dict[str, str]:
        return self.spawn(name, *args, env=env).wait_ready(timeout)

    def check(self) -> None:
        for s in self.services:
            if not s.alive():
                raise ServiceError(f"{s.name} stopped unexpectedly; see {s.log_path}")

    def stop_all(self) -> None:
        for s in reversed(self.services):
            s.stop()
