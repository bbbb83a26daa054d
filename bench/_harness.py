"""The platform as real processes, for fault injection, soak runs and the privacy canaries.

Why processes and not coroutines: a `kill -9` must really kill the relay (no `finally`, no flush),
its RSS must be read from /proc, and every component must write the log files the canary search
reads. `Platform` starts the embedded broker (Tansu) in this process's control, and the relay and
the detection worker as `python -m sealguard relay|detect` children with the same environment
`sealguard up` gives them; each child's stdout and stderr go to `state_dir/logs/NAME.log`.

    with Platform(state_dir) as p:          # broker; relay on a fixed port (kills keep the address)
        p.start_relay(); p.start_detect()
        p.kill_relay(); p.start_relay()     # kill -9 and come back on the same port
        p.restart_broker()                  # the log is lost (Tansu is memory-only)
        p.terminate_db_connections()        # PostgreSQL only: pg_terminate_backend on every session

Children die with us (PR_SET_PDEATHSIG) and `stop()` kills whatever is left, so nothing outlives a run.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import IO, TypeVar

from sealguard.broker import EmbeddedBroker
from sealguard.net import free_port
from sealguard.process import die_with_parent
from sealguard.settings import Settings

log = logging.getLogger("bench.harness")
REPO = Path(__file__).resolve().parent.parent
_RELAY_READY = re.compile(r"relay: listening=(\S+):(\d+) metrics=(\S+)")
_DETECT_READY = re.compile(r"detect: group=(\S+) metrics=(\S+)")


class HarnessError(RuntimeError):
    """A component did not come up; the message names it and where its log is."""


def create_pg_database(admin_url: str) -> str:
    """A fresh PostgreSQL database next to `admin_url`'s; returns its URL (drop it with drop_pg_database)."""
    from sqlalchemy import create_engine, text

    name = f"sg_faults_{secrets.token_hex(4)}"
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop_pg_database(admin_url: str, url: str) -> None:
    from sqlalchemy import create_engine, text

    name = url.rsplit("/", 1)[1]
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name})
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    engine.dispose()


class Child:
    """One `python -m sealguard ...` child with its log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log.write(f"\n--- start {name} {time.strftime('%H:%M:%S')} ---\n".encode())
        self._log.flush()
        self._offset = log_path.stat().st_size
        self.proc = subprocess.Popen([sys.executable, "-m", "sealguard", *args], cwd=REPO, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=die_with_parent)  # noqa: PLW1509

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[self._offset:].decode(errors="replace")
            m = pattern.search(text)
            if m:
                return m
            if self.proc.poll() is not None:
                raise HarnessError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}:\n"
                                   f"{text[-3000:]}")
            time.sleep(0.05)
        raise HarnessError(f"{self.name} not ready within {timeout:.0f}s; see {self.log_path}")

    def kill(self) -> None:
        """kill -9: no cleanup of any kind runs in the child."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._log.close()

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class Platform:
    def __init__(self, state_dir: Path, *, db_url: str | None = None, kafka: str | None = None,
                 partitions: int = 2, topic_prefix: str | None = None, relay_limits: list[str] | None = None,
                 ack_timeout_s: float = 5.0) -> None:
        self.state_dir = state_dir
        self.logs = state_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        prefix = topic_prefix or f"f{secrets.token_hex(3)}"
        self.settings = Settings(
            state_dir=state_dir, kafka=kafka, db_url=db_url or f"sqlite:///{state_dir / 'sealguard.db'}",
            partitions=partitions, signals_topic=f"{prefix}.signals", inbound_topic=f"{prefix}.inbound",
            enforcement_topic=f"{prefix}.enforcement", scores_topic=f"{prefix}.scores")
        self.own_broker = kafka is None
        self.broker: EmbeddedBroker | None = None
        self.relay: Child | None = None
        self.detect: Child | None = None
        self.relay_port = free_port("127.0.0.1")
        self.relay_limits = relay_limits or []
        self.ack_timeout_s = ack_timeout_s
        self.metrics_url: str | None = None

    # -- environment -----------------------------------------------------------------------------
    @property
    def kafka(self) -> str:
        if self.settings.kafka is None:
            raise HarnessError("no broker: start() first")
        return self.settings.kafka

    def env(self) -> dict[str, str]:
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEALGUARD_")}
        env.update({"SEALGUARD_STATE_DIR": str(s.state_dir), "SEALGUARD_KAFKA": self.kafka,
                    "SEALGUARD_DB_URL": s.database_url, "SEALGUARD_PARTITIONS": str(s.partitions),
                    "SEALGUARD_SIGNALS_TOPIC": s.signals_topic, "SEALGUARD_INBOUND_TOPIC": s.inbound_topic,
                    "SEALGUARD_ENFORCEMENT_TOPIC": s.enforcement_topic, "SEALGUARD_SCORES_TOPIC": s.scores_topic,
                    "SEALGUARD_RELAY_NATIVE": "1" if s.relay_native else "0",  # the caller's data plane
                    "PYTHONUNBUFFERED": "1"})
        if os.environ.get("SEALGUARD_RELAY_EPOLL"):  # and its I/O layer (relay/server/_plane.c)
            env["SEALGUARD_RELAY_EPOLL"] = os.environ["SEALGUARD_RELAY_EPOLL"]
        return env

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> Platform:
        from sealguard.storage import Database

        if self.own_broker:
            self.broker = EmbeddedBroker(self.settings, log_path=self.logs / "broker.log").start()
            self.settings.kafka = self.broker.bootstrap
        else:
            from sealguard.stream import ensure_topics

            ensure_topics(self.kafka, self.settings.topics, self.settings.partitions)
        Database(self.settings.database_url).dispose()  # migrations once, before any child races to run them
        return self

    def stop(self) -> None:
        for child in (self.detect, self.relay):
            if child is not None:
                child.stop()
        self.detect = self.relay = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def __enter__(self) -> Platform:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # -- relay ----------------------------------------------------------------------------------------
    def start_relay(self, timeout: float = 60.0) -> None:
        args = ["relay", "--host", "127.0.0.1", "--port", str(self.relay_port), "--metrics-port", "0",
                "--ack-timeout", str(self.ack_timeout_s)]
        for spec in self.relay_limits:
            args += ["--limit", spec]
        self.relay = Child("relay", args, self.env(), self.logs / "relay.log")
        m = self.relay.wait_for(_RELAY_READY, timeout)
        self.metrics_url = m.group(3)

    def kill_relay(self) -> None:
        if self.relay is not None:
            self.relay.kill()
            self.relay = None

    # -- detection ---------------------------------------------------------------------------------------
    def start_detect(self, timeout: float = 90.0, group: str | None = None) -> None:
        args = ["detect", "--metrics-port", "0", "--group", group or f"{self.settings.signals_topic}-detect"]
        self.detect = Child("detect", args, self.env(), self.logs / "detect.log")
        self.detect.wait_for(_DETECT_READY, timeout)

    def kill_detect(self) -> None:
        if self.detect is not None:
            self.detect.kill()
            self.detect = None

    # -- broker ----------------------------------------------------------------------------------------
    def restart_broker(self) -> None:
        if self.broker is None:
            raise HarnessError("the broker is not ours to restart (SEALGUARD_KAFKA names a cluster)")
        self.broker.restart()

    # -- database --------------------------------------------------------------------------------------
    @property
    def postgres(self) -> bool:
        return self.settings.database_url.startswith("postgresql")

    def terminate_db_connections(self) -> int:
        """pg_terminate_backend on every session of our database but this one; returns how many."""
        if not self.postgres:
            raise HarnessError("terminating connections needs PostgreSQL (SEALGUARD_DB_URL)")
        from sqlalchemy import create_engine, text

        url = self.settings.database_url
        name = url.rsplit("/", 1)[1]
        engine = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=None)
        try:
            with engine.connect() as conn:
                rows = conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                         "WHERE datname = :n AND pid <> pg_backend_pid()"), {"n": name}).all()
        finally:
            engine.dispose()
        return sum(1 for (ok,) in rows if ok)


T = TypeVar("T")


def run_on_platform(run: Callable[[Platform], Awaitable[T]], *, prefix: str, state_dir: Path | None = None,
                    db_url: str | None = None) -> T:
    """Broker (or `SEALGUARD_KAFKA`), relay and detection as processes; `run(platform)` on uvloop;
    everything stopped afterwards. State lives in `state_dir`, or in a temporary folder removed at the end."""
    import shutil
    import tempfile

    import uvloop

    tmp = state_dir or Path(tempfile.mkdtemp(prefix=prefix))
    platform = Platform(tmp, db_url=db_url, kafka=os.environ.get("SEALGUARD_KAFKA"))
    try:
        platform.start()
        platform.start_relay()
        platform.start_detect()
        return uvloop.run(run(platform))
    finally:
        platform.stop()
        if state_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
