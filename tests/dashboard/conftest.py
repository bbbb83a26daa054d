"""One platform per test module, started once: the shared real broker, a real relay (its own
thread and uvloop), the moderation API publishing to Kafka, the Streamlit console, and Debian's
Chromium driven by Playwright. Browser tests fail (not skip) when Chromium is missing."""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvloop

from dashboard.launcher import Console
from moderation.auth import Role, do_add_reviewer
from moderation.decisions import KafkaEnforcementPublisher
from moderation.server import ApiServer
from sealguard.settings import Settings
from sealguard.storage import Database
from sealguard.stream import ensure_topics

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
PASSWORD = "console password"


class RelayThread:
    """`relay.service.RelayService` on its own thread and event loop, like a relay process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.address: tuple[str, int] | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)

    def _run(self) -> None:
        from relay.service import RelayService

        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            service = RelayService(self.settings, metrics=False)
            try:
                await service.start()
                self.address = service.address
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                raise
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await service.stop()

        try:
            uvloop.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = self._error or exc

    def start(self) -> RelayThread:
        self._thread.start()
        if not self._ready.wait(60) or self._error is not None or self.address is None:
            raise RuntimeError(f"the relay did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)


def register_models(state_dir: Path) -> None:
    """A champion and a challenger as real (tiny) LightGBM artifacts behind the models pointers."""
    import lightgbm as lgb
    import numpy as np

    from models.artifacts import write_artifact, write_pointer

    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, 3))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0.3).astype(int)
    features = ["first_contact_sends_1m", "reply_ratio_1h", "contacts_added_24h"]
    for version, auc, rounds in (("lgbm-v1", 0.962, 8), ("lgbm-v2", 0.971, 16)):
        booster = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1, "min_data_in_leaf": 5},
                            lgb.Dataset(x, y, feature_name=features), num_boost_round=rounds)
        write_artifact(state_dir / "models" / version, booster, version, features, None,
                       {"auc": auc, "precision_at_ban": 0.99 if version == "lgbm-v1" else 0.985})
    write_pointer(state_dir, "champion", "lgbm-v1")
    write_pointer(state_dir, "challenger", "lgbm-v2")


@dataclass
class Platform:
    settings: Settings
    db: Database
    api_url: str
    console_url: str
    relay: tuple[str, int]
    browser: Any
    shots: Path


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, broker_bootstrap: str) -> Iterator[Platform]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"browser tests need Debian's Chromium at {CHROMIUM}: apt-get install chromium (make test does)")
    from playwright.sync_api import sync_playwright

    tmp = tmp_path_factory.mktemp("console")
    suffix = secrets.token_hex(3)
    settings = Settings(state_dir=tmp / "state", kafka=broker_bootstrap, db_url=f"sqlite:///{tmp / 'state' / 'sg.db'}",
                        signals_topic=f"b{suffix}.signals", inbound_topic=f"b{suffix}.inbound",
                        enforcement_topic=f"b{suffix}.enforcement", scores_topic=f"b{suffix}.scores",
                        partitions=2, node_id="relay-b")
    settings.ensure_state_dir()
    register_models(settings.state_dir)
    ensure_topics(broker_bootstrap, settings.topics, settings.partitions)
    db = Database(settings.database_url)
    for username, role in (("rita", Role.reviewer), ("lena", Role.lead), ("ada", Role.admin)):
        do_add_reviewer(db, username, PASSWORD, role)
    shots = Path(os.environ.get("SEALGUARD_SCREENSHOTS", tmp / "shots"))
    shots.mkdir(parents=True, exist_ok=True)
    publisher = KafkaEnforcementPublisher(broker_bootstrap, settings.enforcement_topic)
    relay = RelayThread(settings).start()
    try:
        with ApiServer(settings, db, publisher) as api, \
                Console(api.url, log_path=tmp / "console.log") as console, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                assert relay.address is not None
                yield Platform(settings, db, api.url, console.url, relay.address, browser, shots)
            finally:
                browser.close()
    finally:
        relay.stop()
        publisher.close(5)
        db.dispose()
