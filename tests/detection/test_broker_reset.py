"""After a broker reset (Tansu is memory-only: the log is gone, the checkpointed offsets point past
its end) the worker resumes at the earliest offset of the new log, with its checkpointed state."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from detection.worker import Worker, WorkerConfig
from sealguard.broker import EmbeddedBroker
from sealguard.contracts import encode, key_of
from sealguard.settings import Settings
from sealguard.storage import Database
from sealguard.stream import producer

from .synth import Synth


def _produce(bootstrap: str, topic: str, events: list) -> None:
    p = producer(bootstrap)
    for ev in events:
        p.produce(topic, key=key_of(ev), value=encode(ev))
    assert p.flush(30) == 0


def _until(worker: Worker, done, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not done():
        worker.step()
    assert done(), "worker did not get there in time"


def test_broker_reset_resumes_at_earliest_with_state(tmp_path: Path) -> None:
    tag = secrets.token_hex(3)
    settings = Settings(state_dir=tmp_path / "state", db_url=f"sqlite:///{tmp_path / 'db.sqlite'}", partitions=1,
                        signals_topic=f"r{tag}.signals", inbound_topic=f"r{tag}.inbound",
                        enforcement_topic=f"r{tag}.enf", scores_topic=f"r{tag}.scores")
    s = Synth(seed=3).population(normal=10, blasters=0, drips=0, farm=0, minutes=2)
    first, later = s.events[:-5], s.events[-5:]
    cfg = WorkerConfig(group="g-reset", metrics_port=None, max_poll_interval_ms=6000, checkpoint_interval_s=0.2)
    db = Database(settings.database_url)
    with EmbeddedBroker(settings) as broker:
        live = settings.model_copy(update={"kafka": broker.bootstrap})
        _produce(broker.bootstrap, live.signals_topic, first)
        worker = Worker(live, cfg, db)
        try:
            _until(worker, lambda: worker.n_signals >= len(first))
            accounts = sum(len(sh.engine.accounts) for sh in worker.shards.values())
        finally:
            worker.close()
        broker.restart()  # the log is gone; the checkpoint says "resume at len(first)"
        _produce(broker.bootstrap, live.signals_topic, later)
        worker2 = Worker(live, cfg, db)
        try:
            _until(worker2, lambda: worker2.n_signals >= len(later))
            assert worker2.n_signals == len(later), "resumed at the new log's earliest offset"
            assert sum(len(sh.engine.accounts) for sh in worker2.shards.values()) >= accounts
        finally:
            worker2.close()
