"""Running the API: uvicorn in a thread of the calling process, started and stopped explicitly.

`sealguard api` uses it with the Kafka publisher; the browser tests use it so Streamlit talks
to a real HTTP API on a random port.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType
from typing import Self

import uvicorn

from moderation.app import create_app
from moderation.cases import DEFAULT_CLAIM_TTL_S
from moderation.decisions import EnforcementPublisher
from moderation.errors import ModerationError
from sealguard.net import free_port
from sealguard.settings import Settings
from sealguard.storage import Database

log = logging.getLogger(__name__)


class ApiServer:
    def __init__(self, settings: Settings, db: Database, publisher: EnforcementPublisher | None, *,
                 host: str | None = None, port: int | None = None, claim_ttl_s: int = DEFAULT_CLAIM_TTL_S) -> None:
        self.host = host or settings.api_host
        self.port = port or settings.api_port or free_port(self.host)
        self.app = create_app(settings, db, publisher, claim_ttl_s=claim_ttl_s)
        config = uvicorn.Config(self.app, host=self.host, port=self.port, log_level="warning", access_log=False,
                                lifespan="off")
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> ApiServer:
        self._thread = threading.Thread(target=self.server.run, name="moderation-api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise ModerationError(f"the API could not start on {self.host}:{self.port}")
            if time.monotonic() > deadline:
                raise ModerationError(f"the API did not start on {self.host}:{self.port} within {timeout:.0f}s")
            time.sleep(0.02)
        log.info("api: listening=%s", self.url)
        return self

    def wait(self) -> None:
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.5)

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
