"""The Kafka signal emitter: a SignalListener behind a bounded queue.

`emit` only appends to a deque (never blocks the delivery path). Every `idle_wait_s` the deque is
drained — records encoded and handed to confluent-kafka, whose own threads do the network — by a
background thread, or, once the relay server calls `attach_loop`, by a callback on the relay's
event loop. On the loop nothing waits for the GIL: the thread woke 100 times a second, took the GIL
from the loop each time (and the CPU too, often on the loop's own core), and was measured at 5 µs
per signal against ~2.5 on the loop. While the broker is down, records wait — first in
librdkafka's queue (`message.timeout.ms=0`: never expire), then in the deque — and drain when it
returns. Past `max_buffer` signals in total, new ones are dropped and counted (`dropped`, exported
as a metric); nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import deque
from typing import Any

from confluent_kafka import KafkaError, Producer

from relay.protocol import KIND_NAMES
from sealguard.contracts import Event, MessageSent, encode, key_of

log = logging.getLogger(__name__)
_getrandbits = random.getrandbits


class EmitterError(RuntimeError):
    """Root of emitter errors."""


def fast_encode(event: Event) -> tuple[str, bytes]:
    """(key, JSON) of a signal. `message.sent` — most of the stream — is formatted directly (its
    fields are ids, enums, ints and booleans the relay produced); every other type goes through
    the contract encoder. tests/relay/test_emitter.py checks both decode to the same event."""
    if type(event) is MessageSent:
        d = event.__dict__
        recipient, group = d["recipient"], d["group"]
        dest = f'"recipient":"{recipient}"' if recipient is not None else f'"group":"{group}"'
        return d["sender"], (
            f'{{"type":"message.sent","v":1,"ts":{d["ts"]},"id":"{d["id"]}","sender":"{d["sender"]}",{dest},'
            f'"size_bucket":{d["size_bucket"]},"kind":"{d["kind"].value}",'
            f'"first_contact":{"true" if d["first_contact"] else "false"},'
            f'"recipient_online":{"true" if d["recipient_online"] else "false"}}}').encode()
    return key_of(event), encode(event)


_KIND_VALUES = KIND_NAMES  # the wire's kind byte → the contract's MessageKind value
_BOOL = ("false", "true")


def encode_message_sent(sender: str, recipient: str, nbytes: int, kind: int, first_contact: bool,
                        recipient_online: bool, ts: int) -> bytes:
    """The JSON of a 1:1 `message.sent` from its fields, with a fresh event id: the same record
    `fast_encode` makes of the event (tests/relay/test_emitter.py checks it decodes to one)."""
    bucket = nbytes.bit_length() - 1  # `size_bucket` inline (a call is a third of this function's cost)
    if bucket < 0:
        bucket = 0
    elif bucket > 40:  # size_bucket's cap
        bucket = 40
    return (f'{{"type":"message.sent","v":1,"ts":{ts},"id":"{_getrandbits(128):032x}","sender":"{sender}",'
            f'"recipient":"{recipient}","size_bucket":{bucket},"kind":"{_KIND_VALUES[kind]}",'
            f'"first_contact":{_BOOL[first_contact]},"recipient_online":{_BOOL[recipient_online]}}}').encode()


class KafkaEmitter:
    def __init__(self, bootstrap: str, topic: str, *, max_buffer: int = 200_000, producer_buffer: int = 100_000,
                 linger_ms: int = 20, idle_wait_s: float = 0.01) -> None:
        from sealguard.stream import producer, producer_config

        self.topic = topic
        self.max_buffer = max_buffer
        self.idle_wait_s = idle_wait_s
        self.dropped = 0
        self.failed = 0
        self._queue: deque[Event | tuple[Any, ...]] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._detach = threading.Event()  # the thread hands the draining over to an event loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._broker_down = False
        # Not idempotent: an idempotent producer stalls for good when the broker comes back
        # without its producer state (Tansu restarts empty — measured: 200 signals never drained).
        # A retried batch may duplicate a signal; detection tolerates that, losing one it cannot see.
        settings = {"linger.ms": linger_ms, "message.timeout.ms": 0, "enable.idempotence": False, "acks": "all"}
        self._producer: Producer = producer(
            bootstrap, **settings, **{"delivery.report.only.error": True, "on_delivery": self._on_delivery,
                                      "queue.buffering.max.messages": producer_buffer, "error_cb": self._on_error})
        # The same producer in C, for the relay's native data plane: its message.sent reach the topic
        # without a Python object each (relay/server/plane.py). Its buffer is librdkafka's queue alone.
        self.native_config = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in
                              producer_config(bootstrap, **settings, **{"queue.buffering.max.messages": max_buffer}).items()}
        self._thread = threading.Thread(target=self._run, name="signal-emitter", daemon=True)
        self._thread.start()

    # -- SignalListener -----------------------------------------------------------------------
    def emit(self, event: Event) -> None:
        # No wake-up per signal (a Condition.notify cost more than the rest of emit): the
        # thread drains in batches every few milliseconds.
        q = self._queue
        if len(q) >= self.max_buffer:
            self.dropped += 1
            return
        q.append(event)

    def emit_message_sent(self, sender: str, recipient: str, nbytes: int, kind: int, first_contact: bool,
                          recipient_online: bool, ts: int) -> None:
        """`message.sent` as plain fields (the relay's fast path): no event object on the event
        loop; the thread formats the record (`encode_message_sent`)."""
        q = self._queue
        if len(q) >= self.max_buffer:
            self.dropped += 1
            return
        q.append((sender, recipient, nbytes, kind, first_contact, recipient_online, ts))  # type: ignore[arg-type]

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
        # Called for failures only (delivery.report.only.error): no Python call per signal.
        if err is not None:
            self.failed += 1
            log.error("signal lost by the broker: %s", err.str())

    # -- draining ------------------------------------------------------------------------------------
    def _drain(self, full_wait_s: float) -> bool:
        """Hand everything in the deque to librdkafka; False when its queue is full (broker down:
        the rest stays in ours, after waiting `full_wait_s` for room)."""
        q, produce, topic = self._queue, self._producer.produce, self.topic
        poll, popleft = self._producer.poll, q.popleft  # a signal leaves the deque once librdkafka has it
        ok = True
        n = 0
        while q:
            event = q[0]
            try:
                # positional (topic, value, key): keyword arguments cost a third of a produce call
                if type(event) is tuple:  # message.sent's fields (emit_message_sent)
                    produce(topic, encode_message_sent(*event), event[0])
                else:
                    key, value = fast_encode(event)
                    produce(topic, value, key)
            except BufferError:  # librdkafka's queue is full (broker down): keep it in ours
                poll(full_wait_s)
                ok = False
                break
            except Exception:
                log.exception("could not encode or produce %s", getattr(event, "type", event))
                self.failed += 1
            popleft()
            n += 1
            if n % 1000 == 0:
                poll(0)
        poll(0)
        if self._broker_down and not len(self._producer):
            log.info("signal broker back; buffer drained")
            self._broker_down = False
        return ok

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Drain on `loop` (a callback every `idle_wait_s`) instead of the thread, which stops.
        Called by the relay server from its loop; `emit` stays callable from any thread."""
        if self._loop is not None or self._stop.is_set():
            return
        self._detach.set()
        self._wake.set()
        self._thread.join()
        self._loop, self._loop_thread = loop, threading.get_ident()
        loop.call_later(self.idle_wait_s, self._drain_on_loop)

    def _drain_on_loop(self) -> None:
        if self._stop.is_set() or self._loop is None:
            return
        try:
            self._drain(0)  # never waits: with the broker down the rest waits for the next tick
        except Exception:
            log.exception("signal emitter drain failed")
        self._loop.call_later(self.idle_wait_s, self._drain_on_loop)

    def _run(self) -> None:
        q = self._queue
        while not self._detach.is_set() and (not self._stop.is_set() or q):
            # Drain in batches, sleeping between them even under load: the thread takes the GIL
            # (and makes the event loop hand it over) once per batch, not once per few signals.
            if not self._stop.is_set():
                self._wake.wait(self.idle_wait_s)
                self._wake.clear()
            if self._detach.is_set():
                return
            if not q:
                self._producer.poll(0)
                continue
            if not self._drain(0.1) and self._stop.is_set() and self._broker_down:
                return

    def flush(self, timeout: float = 10.0) -> int:
        """Wait until everything buffered reached the broker; returns what is still pending."""
        deadline = time.monotonic() + timeout
        if self._loop is not None and threading.get_ident() == self._loop_thread:
            self._drain(0)  # on the loop itself: nobody else drains meanwhile
        while self._queue and time.monotonic() < deadline:
            time.sleep(0.01)
        return int(self._producer.flush(max(0.0, deadline - time.monotonic()))) + len(self._queue)

    def close(self, timeout: float = 10.0) -> None:
        """Flush (the loop, when attached, must keep running meanwhile: call this off the loop,
        as `RelayService.stop` does), then stop draining."""
        pending = self.flush(timeout)
        self._stop.set()
        self._wake.set()
        if self._loop is None:
            self._thread.join(timeout=5)
        self.dropped += len(self._queue)  # counted, never dropped silently
        if pending:
            log.warning("%d signals not delivered at shutdown", pending)
