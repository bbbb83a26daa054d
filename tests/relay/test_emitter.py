"""The Kafka emitter: never blocks, buffers while the broker is down, drains when it returns,
counts what it had to drop."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from relay.emitter import KafkaEmitter
from relay.signals import SignalBook
from sealguard.broker import EmbeddedBroker
from sealguard.contracts import MessageKind, decode, key_of, new_account_id
from sealguard.net import free_port
from sealguard.settings import Settings
from sealguard.stream import ensure_topics

pytestmark = pytest.mark.timeout(120)


def count_records(bootstrap: str, topic: str, partitions: int, want: int, timeout: float = 30.0) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{os.urandom(4).hex()}",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    n, deadline = 0, time.monotonic() + timeout
    while n < want and time.monotonic() < deadline:
        for m in c.consume(1000, 0.3):
            if m.error() is None:
                event = decode(m.value())
                assert m.key() == key_of(event).encode()  # keyed by the account the signal is about
                n += 1
    c.close()
    return n


def test_emit_never_blocks_and_counts_drops_when_the_buffer_is_full() -> None:
    book = SignalBook("relay-1")
    a, b = new_account_id(), new_account_id()
    emitter = KafkaEmitter(f"127.0.0.1:{free_port()}", "nowhere", max_buffer=100, producer_buffer=10)
    try:
        start = time.monotonic()
        for _ in range(1000):
            emitter.emit(book.message_sent(a, b, 100, MessageKind.text, True))
        assert time.monotonic() - start < 1.0
        time.sleep(0.3)
        assert emitter.dropped > 0 and emitter.buffered <= 110
        assert emitter.dropped + emitter.buffered == 1000
    finally:
        emitter._stop.set()  # nothing will ever drain: do not wait for a flush
        emitter._wake.set()
        emitter._thread.join(5)


def test_signals_buffer_while_the_broker_is_down_and_drain_when_it_returns(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, partitions=1, signals_topic="t.signals",
                        broker_port=free_port())
    book = SignalBook("relay-1")
    a, b = new_account_id(), new_account_id()
    broker = EmbeddedBroker(settings).start()
    try:
        emitter = KafkaEmitter(broker.bootstrap, settings.signals_topic, max_buffer=10_000)
        for _ in range(50):
            emitter.emit(book.message_sent(a, b, 100, MessageKind.text, True))
        for _ in range(20):  # the relay's fast path: message.sent as plain fields
            emitter.emit_message_sent(a, b, 100, 0, False, True, 1234)
        assert emitter.flush(20) == 0
        assert count_records(broker.bootstrap, settings.signals_topic, 1, 70) == 70
        broker.kill()
        for _ in range(200):
            emitter.emit(book.message_sent(a, b, 100, MessageKind.text, True))
        time.sleep(1.0)
        assert emitter.buffered >= 200 and emitter.dropped == 0
        broker.start()  # same port, empty log (Tansu keeps it in memory)
        ensure_topics(broker.bootstrap, [settings.signals_topic], 1)
        assert emitter.flush(60) == 0
        assert emitter.dropped == 0 and emitter.failed == 0
        assert count_records(broker.bootstrap, settings.signals_topic, 1, 200) == 200
        emitter.close()
    finally:
        broker.stop()


def test_fast_encoding_matches_the_contract_encoder() -> None:
    from relay.emitter import fast_encode
    from sealguard.contracts import encode, key_of, new_group_id

    book = SignalBook("relay-1")
    a, b = new_account_id(), new_account_id()
    for event in (book.message_sent(a, b, 100, MessageKind.text, True),
                  book.message_sent(a, b, 5000, MessageKind.media, False),
                  book.group_message_sent(a, new_group_id(), 70, MessageKind.control),
                  book.contact_added(a, b)):
        key, value = fast_encode(event)
        assert key == key_of(event)
        assert decode(value) == decode(encode(event)) == event


def test_message_sent_from_plain_fields_matches_the_event() -> None:
    """The relay's fast path hands `message.sent` as fields; the record is the event's, bar the id."""
    from relay.emitter import encode_message_sent

    book = SignalBook("relay-1")
    a, b = new_account_id(), new_account_id()
    for nbytes, kind, first, online in ((100, 0, True, True), (70_000, 1, False, False), (1, 2, True, False)):
        event = book.message_sent(a, b, nbytes, list(MessageKind)[kind], online, ts=1234)
        got = decode(encode_message_sent(a, b, nbytes, kind, first, online, 1234))
        want = event.model_copy(update={"first_contact": first})
        assert got.model_dump(exclude={"id"}) == want.model_dump(exclude={"id"})
        assert len(got.id) == 32
