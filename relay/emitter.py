"""The Kafka signal emitter: a SignalListener behind a bounded queue.

`emit` only appends to a deque (never blocks the delivery path). A background thread encodes
and hands records to confluent-kafka. While the broker is down, records wait — first in
librdkafka's queue (`message.timeout.ms=0`: never expire), then in the deque — and drain when it
returns. Past `max_buffer` signals in total, new ones are dropped and counted (`dropped`, exported
as a metric); nothing is dropped silently.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from confluent_kafka import KafkaError, Producer

from sealguard.contracts import Event, encode, key_of

log = logging.getLogger(__name__)


class EmitterError(RuntimeError):
    """Root of emitter errors."""


class KafkaEmitter:
    def __init__(self, bootstrap: str, topic: str, *, max_buffer: int = 200_000, producer_buffer: int = 100_000,
                 linger_ms: int = 5) -> None:
        from sealguard.stream import producer

        self.topic = topic
        self.max_buffer = max_buffer
        self.dropped = 0
        self.failed = 0
        self.sent = 0
        self._queue: deque[Event] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._broker_down = False
        # Not idempotent: an idempotent producer stalls for good when the broker comes back
        # without its producer state (Tansu restarts empty — measured: 200 signals never drained).
        # A retried batch may duplicate a signal; detection tolerates that, losing one it cannot see.
        self._producer: Producer = producer(
            bootstrap, **{"linger.ms": linger_ms, "message.timeout.ms": 0, "enable.idempotence": False,
                          "acks": "all",
                          "queue.buffering.max.messages": producer_buffer,
                          "error_cb": self._on_error})
        self._thread = threading.Thread(target=self._run, name="signal-emitter", daemon=True)
        self._thread.start()

    # -- SignalListener -----------------------------------------------------------------------
    def emit(self, event: Event) -> None:
        q = self._queue
        if len(q) >= self.max_buffer:
            self.dropped += 1
            return
        q.append(event)
        if len(q) == 1:
            self._wake.set()

    # -- state ------------------------------------------------------------------------------------
    @property
    def buffered(self) -> int:
        """Signals accepted and not yet confirmed by the broker."""
        return len(self._queue) + len(self._producer)

    @property
    def broker_down(self) -> bool:
        return self._broker_down

    def _on_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            if not self._broker_down:
                log.warning("signal broker unreachable; buffering signals (%s)", err.str())
            self._broker_down = True

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self.failed += 1
            log.error("signal lost by the broker: %s", err.str())
        else:
            self.sent += 1
            if self._broker_down:
                log.info("signal broker back; draining")
                self._broker_down = False

    # -- the thread ----------------------------------------------------------------------------------
    def _run(self) -> None:
        q, produce, topic = self._queue, self._producer.produce, self.topic
        poll = self._producer.poll
        while not self._stop.is_set() or q:
            if not q:
                self._wake.wait(0.05)
                self._wake.clear()
                poll(0)
                continue
            n = 0
            while q:
                event = q[0]
                try:
                    produce(topic, key=key_of(event), value=encode(event), on_delivery=self._on_delivery)
                except BufferError:  # librdkafka's queue is full (broker down): keep it in ours
                    poll(0.1)
                    if self._stop.is_set() and self._broker_down:
                        return
                    break
                except Exception:  # noqa: BLE001 - a bad event must not stop the others
                    log.exception("could not encode or produce %s", getattr(event, "type", event))
                    self.failed += 1
                q.popleft()
                n += 1
                if n % 1000 == 0:
                    poll(0)
            poll(0)

    def flush(self, timeout: float = 10.0) -> int:
        """Wait until everything buffered reached the broker; returns what is still pending."""
        deadline = time.monotonic() + timeout
        while self._queue and time.monotonic() < deadline:
            time.sleep(0.01)
        return int(self._producer.flush(max(0.0, deadline - time.monotonic()))) + len(self._queue)

    def close(self, timeout: float = 10.0) -> None:
        pending = self.flush(timeout)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        self.dropped += len(self._queue)  # counted, never dropped silently
        if pending:
            log.warning("%d signals not delivered at shutdown", pending)
