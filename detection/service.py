"""Run the detection worker as a service: `run_worker(settings, stop_event)`.

`sealguard detect` calls it, and so can `sealguard up` (or a test) in-process. It waits for the
broker, makes sure the topics exist, starts the worker and loops until `stop_event` is set, then
checkpoints and closes cleanly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from detection.worker import Worker, WorkerConfig
from sealguard.settings import Settings

log = logging.getLogger(__name__)


def start_worker(settings: Settings, config: WorkerConfig | None = None) -> Worker:
    """A ready worker (broker reachable, topics created, subscribed, /metrics listening)."""
    from sealguard.stream import ensure_topics, wait_for_broker

    if not settings.kafka:
        raise ValueError("SEALGUARD_KAFKA is not set: start a broker (`sealguard broker`) or name a cluster")
    wait_for_broker(settings.kafka)
    ensure_topics(settings.kafka, settings.topics, settings.partitions)
    worker = Worker(settings, config)
    log.info("detect: group %s on %s + %s, metrics %s, champion %s, %d rules", worker.cfg.group,
             settings.signals_topic, settings.inbound_topic, worker.metrics_url,
             worker.models.champion.version if worker.models.champion else "none", len(worker.rules.rules))
    return worker


def run_worker(settings: Settings, stop_event: threading.Event, config: WorkerConfig | None = None,
               on_ready: Callable[[Worker], None] | None = None) -> Worker:
    """Run until `stop_event` is set; returns the (closed) worker so callers can read its counters."""
    worker = start_worker(settings, config)
    if on_ready is not None:
        on_ready(worker)
    worker.run(stop_event)
    return worker
