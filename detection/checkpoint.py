"""Per-partition state and consumed offsets, saved together in one database transaction.

DESIGN.md's durability rule: detection checkpoints its state and the offsets it consumed
together, so a restart resumes exactly where the saved state ends — never state from offset N
with consumption resumed at M. One `detection_checkpoints` row per (group, topic, partition):
the signals-topic row carries the shard's state (pickled, zlib-compressed); the inbound-topic
row of the same partition carries only its next offset. Both rows are written in the same
transaction.

Counterpart sides are applied exactly once. A worker killed between checkpoints has already
re-keyed (or applied in-process) the counterpart sides of signals it consumed after its last
checkpoint; whoever takes its partition consumes those signals again and re-keys them again.
So every counterpart side carries its source position (signals partition, offset) and the
source's checkpointed offset (its *floor*: nothing below it is ever consumed again), and the
receiving shard remembers the source offsets it applied since the floor before last
(`Shard.first_time`): a second copy is skipped, and the memory stays one or two checkpoint
intervals long.
"""

from __future__ import annotations

import logging
import pickle
import zlib
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from detection.features import FeatureEngine, NetBook
from sealguard.contracts import now_ms
from sealguard.storage import Database, DetectionCheckpointRow

log = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass
class Shard:
    """Everything detection keeps for one partition number (of both the signals and inbound topics)."""

    partition: int
    engine: FeatureEngine = field(default_factory=FeatureEngine)
    offsets: dict[str, int] = field(default_factory=dict)  # topic -> next offset to consume
    stored: dict[str, tuple[int, float]] = field(default_factory=dict)  # account -> (ts, score) last stored
    dirty: bool = False
    last: dict[str, bytes] = field(default_factory=dict)  # topic -> the last record consumed (raw)
    marks: dict[str, int] = field(default_factory=dict)  # topic -> CRC32 of the record at offset - 1
    saved: dict[str, int] = field(default_factory=dict)  # topic -> next offset as last checkpointed (the floor)
    # source signals partition -> [floor, previous floor, source offsets applied here at or above it]
    applied: dict[int, list[Any]] = field(default_factory=dict)

    def first_time(self, source: int, offset: int, floor: int) -> bool:
        """Whether the counterpart side of signal (`source` partition, `offset`) is new to this shard
        (and mark it applied). `floor` is the source partition's checkpointed next offset when the
        side was re-keyed; offsets under the previous floor are never consumed again, so forgotten."""
        seen = self.applied.get(source)
        if seen is None:
            seen = self.applied[source] = [floor, floor, set()]
        elif floor > seen[0]:
            seen[1], seen[0] = seen[0], floor
            seen[2] = {o for o in seen[2] if o >= seen[1]}
        offsets: set[int] = seen[2]
        if offset in offsets:
            return False
        offsets.add(offset)
        return True

    def dump(self) -> bytes:
        """The state blob; also fixes `marks`, the fingerprint of the last record consumed per topic,
        so a resume can tell the same log from a new one (see Worker._verify_log)."""
        for topic, raw in self.last.items():
            self.marks[topic] = zlib.crc32(raw)
        payload = {"v": STATE_VERSION, "accounts": self.engine.accounts, "book": self.engine.book,
                   "stored": self.stored, "marks": self.marks, "applied": self.applied}
        return zlib.compress(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL), 1)

    @classmethod
    def load(cls, partition: int, blob: bytes | None) -> Shard:
        shard = cls(partition)
        if not blob:
            return shard
        try:
            payload: dict[str, Any] = pickle.loads(zlib.decompress(blob))
        except (zlib.error, pickle.UnpicklingError, EOFError, AttributeError, TypeError) as exc:
            log.error("partition %d: checkpointed state unreadable (%s); starting it empty", partition, exc)
            return shard
        if payload.get("v") != STATE_VERSION:
            log.error("partition %d: checkpoint state v=%s, this build reads v=%d; starting it empty",
                      partition, payload.get("v"), STATE_VERSION)
            return shard
        book: NetBook = payload["book"]
        shard.engine = FeatureEngine(net=book)
        shard.engine.accounts = payload["accounts"]
        shard.stored = payload["stored"]
        shard.marks = dict(payload.get("marks", {}))
        shard.applied = dict(payload.get("applied", {}))
        return shard


BEGINNING = -2  # librdkafka's OFFSET_BEGINNING: "nothing consumed here yet"


def load_shard(db: Database, group: str, state_topic: str, topics: list[str], partition: int) -> Shard:
    """The saved shard of `partition` (empty when none), with the next offsets per topic."""
    with db.session() as s:
        rows = s.scalars(select(DetectionCheckpointRow).where(
            DetectionCheckpointRow.consumer_group == group, DetectionCheckpointRow.partition == partition,
            DetectionCheckpointRow.topic.in_(topics))).all()
    blob = next((r.state for r in rows if r.topic == state_topic), None)
    shard = Shard.load(partition, blob)
    shard.offsets = {r.topic: int(r.next_offset) for r in rows if r.next_offset >= 0}
    shard.saved = {r.topic: int(r.next_offset) for r in rows}  # as stored (BEGINNING too): what save_shards expects
    return shard


def load_offsets(db: Database, group: str, topics: list[str], partition: int) -> dict[str, int]:
    with db.session() as s:
        rows = s.execute(select(DetectionCheckpointRow.topic, DetectionCheckpointRow.next_offset).where(
            DetectionCheckpointRow.consumer_group == group, DetectionCheckpointRow.partition == partition,
            DetectionCheckpointRow.topic.in_(topics))).all()
    return {t: int(o) for t, o in rows if o >= 0}


class CheckpointFenced(RuntimeError):
    """Another worker checkpointed one of these partitions since this one loaded or saved it: this
    worker lost the partition (a zombie whose session expired) and must not overwrite newer state."""

    def __init__(self, group: str, partitions: list[int]) -> None:
        super().__init__(f"group {group}: partitions {partitions} were checkpointed by another worker since this "
                         "one last read or wrote them; nothing was written (this worker lost them)")
        self.partitions = partitions


def save_shards(db: Database, group: str, state_topic: str, shards: list[Shard]) -> int:
    """Write each shard's state and next offsets, all in one transaction; returns bytes of state written.

    The state rides on the `state_topic` row (the signals topic); other topics' rows carry offsets.
    Each row is written only if it still holds what this worker last read or wrote (compare and
    set on the offset; a row it never saw is inserted and must not exist): otherwise another worker
    owns the partition now, the whole transaction is rolled back and CheckpointFenced raised."""
    now = now_ms()
    written = 0
    blobs = [shard.dump() for shard in shards]
    writes: list[tuple[Shard, dict[str, int]]] = []
    fenced: list[int] = []
    try:
        with db.session() as s, s.begin():
            for shard, blob in zip(shards, blobs):
                written += len(blob)
                offsets = dict(shard.offsets)
                offsets.setdefault(state_topic, BEGINNING)
                writes.append((shard, offsets))
                for topic, offset in offsets.items():
                    state = blob if topic == state_topic else None
                    before = shard.saved.get(topic)
                    if before is None and topic == state_topic:
                        # Every save writes this row, with BEGINNING when no signal was consumed yet (a
                        # shard made dirty by counterpart sides only); a record of it may lack that entry.
                        before = BEGINNING if s.execute(update(DetectionCheckpointRow).where(
                            DetectionCheckpointRow.consumer_group == group, DetectionCheckpointRow.topic == topic,
                            DetectionCheckpointRow.partition == shard.partition,
                            DetectionCheckpointRow.next_offset == BEGINNING,
                        ).values(next_offset=offset, state=state, updated_at=now)).rowcount == 1 else None
                        if before is not None:
                            continue
                    if before is None:
                        s.add(DetectionCheckpointRow(consumer_group=group, topic=topic, partition=shard.partition,
                                                     next_offset=offset, state=state, updated_at=now))
                        continue
                    done = s.execute(update(DetectionCheckpointRow).where(
                        DetectionCheckpointRow.consumer_group == group, DetectionCheckpointRow.topic == topic,
                        DetectionCheckpointRow.partition == shard.partition,
                        DetectionCheckpointRow.next_offset == before,
                    ).values(next_offset=offset, state=state, updated_at=now)).rowcount
                    if done != 1:
                        fenced.append(shard.partition)
                if fenced:
                    break
            if fenced:
                raise CheckpointFenced(group, sorted(set(fenced)))
            s.flush()
    except IntegrityError:  # a row this worker never saw was inserted by another one
        raise CheckpointFenced(group, sorted({sh.partition for sh, _ in writes})) from None
    for shard, offsets in writes:
        shard.dirty = False
        shard.saved = offsets
    return written
