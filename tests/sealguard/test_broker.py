"""The embedded broker: starts, answers, creates keyed topics, carries records, stops cleanly."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from sealguard.broker import EmbeddedBroker
from sealguard.contracts import ContactAdded, decode, encode, key_of, new_account_id
from sealguard.net import wait_for_port
from sealguard.settings import Settings
from sealguard.stream import StreamError, admin, consumer, producer, wait_for_broker


def test_topics_created_with_configured_partitions(topics: Settings) -> None:
    assert topics.kafka
    md = admin(topics.kafka).list_topics(timeout=10)
    for name in topics.topics:
        assert len(md.topics[name].partitions) == topics.partitions


def test_records_travel_keyed_by_account(topics: Settings) -> None:
    assert topics.kafka
    p = producer(topics.kafka)
    sent = [ContactAdded(account=new_account_id(), contact=new_account_id()) for _ in range(20)]
    for e in sent:
        p.produce(topics.signals_topic, key=key_of(e), value=encode(e))
    p.flush(10)
    c = consumer(topics.kafka, group=f"g-{topics.signals_topic}")
    c.subscribe([topics.signals_topic])
    got = []
    deadline = time.monotonic() + 30
    while len(got) < len(sent) and time.monotonic() < deadline:
        for m in c.consume(100, 0.5):
            if not m.error():
                assert m.key().decode() == key_of(decode(m.value()))
                got.append(decode(m.value()))
    c.close()
    assert sorted(e.id for e in got) == sorted(e.id for e in sent)


def test_broker_not_up_is_a_clear_error() -> None:
    with pytest.raises(StreamError, match="127.0.0.1:9 is not up"):
        wait_for_broker("127.0.0.1:9", timeout=1)


def test_broker_command_prints_bootstrap_and_stops_on_sigterm(tmp_path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "sealguard", "broker"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env={"SEALGUARD_STATE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
                            text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("broker: bootstrap=127.0.0.1:")
        bootstrap = line.split("=", 1)[1].strip()
        wait_for_broker(bootstrap, timeout=10)
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    # the Tansu child stopped with it: nothing listens on its port any more
    with pytest.raises(TimeoutError):
        wait_for_port("127.0.0.1", int(bootstrap.rsplit(":", 1)[1]), timeout=1)


def test_embedded_broker_restart_keeps_port() -> None:
    with EmbeddedBroker(Settings()) as b:
        port = b.port
        b.restart()
        assert b.port == port
        wait_for_broker(b.bootstrap, timeout=10)
