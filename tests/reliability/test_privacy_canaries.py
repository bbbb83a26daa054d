"""Privacy canaries: what the clients say and the keys they hold must appear nowhere the platform keeps.

Real clients talk through a real relay and a real detection worker (both `python -m sealguard`
children with their own log files, `bench/_harness.Platform`) and their own embedded broker:
messages, an offline message left in the queue, media (bytes and file name), a group name (sent, as
group metadata travels here, inside the group's Megolm channel), reports and a block — each
carrying a random canary. Then we search:

* every row of every database table (values as text, bytes and JSON);
* every record of every topic on the broker (key, value, headers; the client decompresses);
* every file under the state dir, raw: the SQLite file and its WAL, log files, media blobs, MLflow;

for each canary raw, base64 (standard and URL-safe, all three alignments) and hex, and for the
clients' secrets: Megolm session keys and their ratchets, media file keys and nonces, and pickles of
the accounts and Olm sessions (vodozemac pickles are deterministic for a key, so a stored pickle
would match). Public keys are stored legitimately and are not searched for.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import secrets
from pathlib import Path

import pytest

from bench._harness import Platform
from relay.client import Identity, RelayClient
from relay.testing import eventually, run

PICKLE_KEY = b"sealguard-canary-pickle-key-0001"  # 32 bytes, what a client would protect its state with


def _b64_cores(data: bytes) -> list[bytes]:
    """Substrings that any base64 text containing `data` (at any alignment) must contain."""
    out = []
    for k in range(3):
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            text = enc(b"\0" * k + data).rstrip(b"=")
            start = (k * 4 + 2) // 3 + 1  # skip characters mixed with the padding prefix
            core = text[start:len(text) - 3]
            if len(core) >= 8:
                out.append(core)
    return out


def needles(label: str, data: bytes) -> dict[bytes, str]:
    """`data` raw, as hex (both cases) and as base64 cores."""
    found = {data: f"{label} (raw)", binascii.hexlify(data): f"{label} (hex)",
             binascii.hexlify(data).upper(): f"{label} (HEX)"}
    for core in _b64_cores(data):
        found[core] = f"{label} (base64)"
    return found


class Finder:
    def __init__(self, wanted: dict[bytes, str]) -> None:
        self.wanted = wanted
        self.hits: list[str] = []

    def scan(self, where: str, blob: bytes) -> None:
        for needle, label in self.wanted.items():
            if needle in blob:
                self.hits.append(f"{label} found in {where}")


async def _talk(platform: Platform, ports: list[int] | None = None,
                report_after_s: float = 0.0) -> tuple[dict[bytes, str], list[RelayClient]]:
    """Drive the conversations; return what must never be found, and the clients (to close).
    `ports`: relay nodes of a cluster, the i-th user on ports[i % len(ports)]; `report_after_s`: a
    pause before the report (another node writes its commitments every second)."""
    host = "127.0.0.1"
    ports = ports or [platform.relay_port]
    canary = {name: f"CANARY-{name}-{secrets.token_hex(12)}".encode()
              for name in ("text", "offline", "media_bytes", "file_name", "group_name", "group_text", "reply")}
    clients = []

    async def user(addr: str, prekeys: int = 10) -> RelayClient:
        c = RelayClient(host, ports[len(clients) % len(ports)], Identity.generate(), bind_address=addr)
        await c.connect()
        await c.register()
        await c.upload_prekeys(prekeys)
        clients.append(c)
        return c

    alice, bob, carol, dave = (await user("127.41.0.1"), await user("127.42.0.1"), await user("127.43.0.1"),
                               await user("127.44.0.1"))
    assert alice.account_id and bob.account_id and carol.account_id and dave.account_id
    if len(ports) > 1:
        await asyncio.sleep(1.0)  # every node learns the others' registrations (docs/cluster.md)
    await alice.add_contact(bob.account_id)
    await bob.add_contact(alice.account_id)
    # 1:1 both ways, then an offline recipient whose message stays (as ciphertext) in the queue.
    m1 = await alice.send(bob.account_id, b"hello " + canary["text"])
    assert (await bob.inbox.get()).plaintext.endswith(canary["text"])
    await bob.send(alice.account_id, canary["reply"])
    assert (await alice.inbox.get()).plaintext == canary["reply"]
    await dave.close()
    await eventually(lambda: not dave.connected)
    await alice.send(dave.account_id, canary["offline"])
    # Media: bytes and a file name (the name travels in the E2E media reference).
    payload = b"%PDF-1.4 not an image " + canary["media_bytes"] * 4
    await alice.send_media(bob.account_id, payload, caption="holiday-" + canary["file_name"].decode() + ".pdf")
    got = await bob.inbox.get()
    assert got.media is not None and await bob.fetch_media(got.media) == payload
    # A group with a name (group metadata is end to end here: it rides the Megolm channel).
    gid = await alice.create_group([bob.account_id, carol.account_id])
    await alice.send_group(gid, b"/name " + canary["group_name"])
    await alice.send_group(gid, canary["group_text"])
    for member in (bob, carol):
        texts = {(await member.inbox.get()).plaintext for _ in range(2)}
        assert texts == {b"/name " + canary["group_name"], canary["group_text"]}
    # Reports and a block: their metadata is stored, never the content.
    await asyncio.sleep(report_after_s)
    assert await bob.report(alice.account_id, [m1]) == 1
    await carol.block(alice.account_id)

    wanted: dict[bytes, str] = {}
    for name, value in canary.items():
        wanted.update(needles(f"canary {name}", value))
    # The clients' secrets.
    ref = got.media
    wanted.update(needles("media file key", ref.key))
    wanted.update(needles("media nonce", ref.nonce))
    for who, c in (("alice", alice), ("bob", bob), ("carol", carol), ("dave", dave)):
        wanted[c.identity.account.pickle(PICKLE_KEY).encode()] = f"{who}'s account pickle"
        wanted[c.identity.to_pickle(PICKLE_KEY).encode()] = f"{who}'s identity file"
        for peer, sessions in c.olm.sessions.items():
            for s in sessions:
                wanted[s.pickle(PICKLE_KEY).encode()] = f"{who}'s Olm session pickle with {peer}"
        for g, session in c.megolm.outbound.items():
            key_b64 = session.session_key.to_base64()
            wanted[key_b64.encode()] = f"{who}'s Megolm session key of {g}"
            ratchet = base64.b64decode(key_b64 + "=" * (-len(key_b64) % 4))[5:5 + 128]
            wanted.update(needles(f"{who}'s Megolm ratchet of {g}", ratchet))
            wanted[session.pickle(PICKLE_KEY).encode()] = f"{who}'s Megolm session pickle"
        for (g, sender), inbound in c.megolm.inbound.items():
            for s in inbound:
                wanted[s.export_at(s.first_known_index).to_base64().encode()] = \
                    f"{who}'s exported inbound Megolm key ({g}, {sender})"
    # Positive controls: public values that *are* stored, so a scanner that reads nothing fails.
    for c in (alice, bob):
        assert c.account_id is not None
        wanted[c.account_id.encode()] = f"CONTROL account id {c.account_id}"
    wanted[alice.identity.identity_key.encode()] = "CONTROL alice's public identity key"
    return wanted, clients


def _scan_database(platform: Platform, finder: Finder) -> int:
    from sqlalchemy import MetaData, select

    from sealguard.storage import Database

    db = Database(platform.settings.database_url, migrate=False)
    meta = MetaData()
    meta.reflect(db.engine)
    rows = 0
    with db.engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(select(table)):
                rows += 1
                for col, value in zip(table.columns, row):
                    if value is None:
                        continue
                    if isinstance(value, (bytes, bytearray, memoryview)):
                        blob = bytes(value)
                    elif isinstance(value, (dict, list)):
                        blob = json.dumps(value).encode()
                    else:
                        blob = str(value).encode()
                    finder.scan(f"table {table.name}.{col.name}", blob)
    db.dispose()
    return rows


def _scan_topics(platform: Platform, finder: Finder) -> dict[str, int]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": platform.kafka, "group.id": f"canary-{secrets.token_hex(3)}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    topics = {name: meta for name, meta in c.list_topics(timeout=10).topics.items() if not name.startswith("__")}
    counts: dict[str, int] = {}
    for name, meta in topics.items():
        parts = [TopicPartition(name, p, OFFSET_BEGINNING) for p in meta.partitions]
        c.assign(parts)
        n, idle = 0, 0
        while idle < 3:  # high watermarks lag on Tansu: read until the topic stays quiet
            batch = c.consume(2000, 0.5)
            if not batch:
                idle += 1
                continue
            idle = 0
            for msg in batch:
                if msg.error() is not None:
                    continue
                n += 1
                where = f"topic {name}[{msg.partition()}]@{msg.offset()}"
                finder.scan(where, msg.key() or b"")
                value = msg.value() or b""
                finder.scan(where, value)
                try:  # decoded too, so an escaped string cannot hide a canary
                    finder.scan(where + " (decoded)", json.dumps(json.loads(value), ensure_ascii=False).encode())
                except ValueError:
                    pass
                for _, hv in msg.headers() or []:
                    finder.scan(where + " header", hv or b"")
        counts[name] = n
    c.close()
    return counts


def _scan_files(root: Path, finder: Finder) -> int:
    files = 0
    for path in root.rglob("*"):
        if path.is_file():
            files += 1
            finder.scan(f"file {path.relative_to(root)}", path.read_bytes())
    return files


def _wait_for_detection(platform: Platform, timeout: float = 60.0) -> None:
    """Until the worker has checkpointed what it consumed (so it has seen the signals we caused)."""
    import time

    from sqlalchemy import func, select

    from sealguard.storage import Database
    from sealguard.storage.moderation_tables import DetectionCheckpointRow

    db = Database(platform.settings.database_url, migrate=False)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with db.session() as s:
                if s.scalar(select(func.count()).select_from(DetectionCheckpointRow)):
                    return
            time.sleep(0.5)
    finally:
        db.dispose()
    pytest.fail("the detection worker never checkpointed")


def test_no_canary_or_key_is_stored_anywhere(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Platform(state) as platform:
        platform.start_relay()
        platform.start_detect()
        wanted = run(_talk_and_close(platform))
        _wait_for_detection(platform)
        finder = Finder(wanted)
        for child in (platform.detect, platform.relay):  # SIGTERM: their batches and logs are flushed
            assert child is not None
            child.stop()
        platform.detect = platform.relay = None
        topics = _scan_topics(platform, finder)  # Tansu is memory-only: read before the broker stops
        rows = _scan_database(platform, finder)
    files = _scan_files(state, finder)
    assert topics[platform.settings.signals_topic] > 10, topics
    assert rows > 20 and files >= 4
    assert len(wanted) > 50
    controls = [h for h in finder.hits if h.startswith("CONTROL")]
    assert any(" in table accounts." in h for h in controls), "the database scan found no control"
    assert any(" in topic " in h for h in controls), "the topic scan found no control"
    assert any(" in file sealguard.db" in h for h in controls), "the file scan found no control"
    leaks = [h for h in finder.hits if not h.startswith("CONTROL")]
    assert not leaks, "\n".join(leaks[:40])


async def _talk_and_close(platform: Platform, ports: list[int] | None = None,
                          report_after_s: float = 0.0) -> dict[bytes, str]:
    wanted, clients = await _talk(platform, ports, report_after_s)
    await asyncio.sleep(0.5)
    for c in clients:
        await c.close()
    return wanted


@pytest.mark.postgres
def test_no_canary_or_key_in_a_clusters_inboxes_routes_or_tables(tmp_path: Path) -> None:
    """The same conversations across two relay nodes (`sealguard relay --cluster`, PostgreSQL): the
    1:1, group, media and queued messages cross between the nodes through their inbox topics (as
    ciphertext); no canary or key may be found there, in the routes topic, in `relay_nodes` /
    `relay_routes` / the queue, or in the nodes' logs."""
    from bench._harness import create_pg_database, drop_pg_database
    from bench.cluster import PG_ADMIN_URL, Nodes

    db = create_pg_database(PG_ADMIN_URL)
    state = tmp_path / "state"
    try:
        with Platform(state, db_url=db) as platform:
            nodes = Nodes(state, platform.kafka, db, 2)
            try:
                nodes.start_all()  # alice and carol on node 1, bob and dave on node 2
                wanted = run(_talk_and_close(platform, nodes.ports, report_after_s=1.5))
                handed = nodes.metric("cluster_handed_over")
            finally:
                nodes.stop()  # SIGTERM: their batches and logs are flushed
            finder = Finder(wanted)
            topics = _scan_topics(platform, finder)
            rows = _scan_database(platform, finder)
        files = _scan_files(state, finder)
    finally:
        drop_pg_database(PG_ADMIN_URL, db)
    inboxes = {t: n for t, n in topics.items() if ".relay.node." in t}
    assert handed >= 4 and len(inboxes) == 2 and sum(inboxes.values()) >= 2, (handed, topics)
    assert topics[f"{nodes.prefix}.relay.routes"] > 0, topics
    assert rows > 20 and files >= 3
    controls = [h for h in finder.hits if h.startswith("CONTROL")]
    assert any(" in table relay_routes." in h or " in table accounts." in h for h in controls), controls
    assert any(".relay.routes[" in h for h in controls), "the routes topic scan found no control"
    leaks = [h for h in finder.hits if not h.startswith("CONTROL")]
    assert not leaks, "\n".join(leaks[:40])
