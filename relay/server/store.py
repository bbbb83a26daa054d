"""The relay's database work: synchronous functions the server runs on its one DB thread.

Nothing here runs on the event loop. Every method is one short transaction; the server batches
(offline-queue inserts, acked deletes, report commitments) so an online recipient costs no
database round trip per message and an offline one costs a share of a batched insert.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from relay.server import commitment_blocks as blocks
from sealguard.contracts import Action, new_account_id, now_ms
from sealguard.storage import (
    AccountRow,
    BlockRow,
    CommitmentBlockRow,
    ContactRow,
    Database,
    DecisionRow,
    EnforcementApplicationRow,
    GroupMemberRow,
    GroupRow,
    MediaBlobRow,
    MessageCommitmentRow,
    NoticeRow,
    PrekeyRow,
    QueuedMessageRow,
    ReportedCommitmentRow,
    ReportRow,
)


class StoreError(Exception):
    """Root of relay storage errors."""


class AlreadyRegistered(StoreError):
    pass


class HandleTaken(StoreError):
    pass


def commitment(message_id: bytes, sender: str, recipient: str) -> str:
    """H(message id, sender, recipient): lets a recipient prove, later, that it received a message
    from that sender — without the relay keeping who sent what to whom in the clear.

    128 bits: collisions need 2^64 messages. The relay stores the 16 bytes (`binary_commitment`)
    in blocks (`commitment_blocks`); this hex form, and the 256-bit `legacy_commitment`, are what
    rows of `message_commitments` written before hold, which reports try until their TTL runs out."""
    return _blake2b(message_id + sender.encode() + recipient.encode(), digest_size=16).hexdigest()


def binary_commitment(message_id: bytes, sender: str, recipient: str) -> bytes:
    return _blake2b(message_id + sender.encode() + recipient.encode(), digest_size=16).digest()


def legacy_commitment(message_id: bytes, sender: str, recipient: str) -> str:
    return hashlib.blake2b(message_id + sender.encode() + recipient.encode(), digest_size=32).hexdigest()


_blake2b = hashlib.blake2b
_INSERT_BLOCK = "INSERT INTO commitment_blocks (level, prefix, period, expires_at, count, digests) VALUES ({0}, {0}, {0}, {0}, {0}, {0})"
# Per first byte, the oldest period holding flushed blocks and the oldest holding gathered ones:
# 512 min() seeks of the (level, prefix, period, id) index, where a GROUP BY would read an entry per
# block (`compact_commitments`). Then the first and last id of a period's flushed blocks, as seeks.
_EACH_FIRST_BYTE = {
    "sqlite": "WITH RECURSIVE f(p) AS (SELECT 0 UNION ALL SELECT p + 1 FROM f WHERE p < 255) SELECT p, {} FROM f",
    "postgresql": "SELECT p, {} FROM generate_series(0, 255) AS p"}
_OLDEST = ("(SELECT min(period) FROM commitment_blocks WHERE level = {0} AND prefix = p), "
           "(SELECT min(period) FROM commitment_blocks WHERE level = {1} AND prefix = p)")
_ID_RANGE = ("(SELECT min(id) FROM commitment_blocks WHERE level = {0} AND prefix = p AND period = {1}), "
             "(SELECT max(id) FROM commitment_blocks WHERE level = {0} AND prefix = p AND period = {1})")
COMPACT_DIGESTS = 1 << 16  # digests a call of `compact_commitments` aims at (1 MiB; see there)
COMPACT_ROWS = 1 << 14  # and the most blocks it deletes (flushed ones of 1,000 messages a second hold ~4)
_FIND_ROWS = 512  # blocks a report scans at once (≤ 16 KB each: flushed ~1–2 KB, compacted ~10–30 KB at 12–30k msg/s)


@dataclass(slots=True)
class QueuedOut:
    """A message to write to the offline queue."""

    message_id: bytes
    recipient: str
    sender: str
    group: str | None
    kind: int
    ciphertext: bytes
    enqueued_at: int
    expires_at: int
    withheld: bool = False  # the sender or the recipient is banned: kept and counted, not delivered
    handed_to: object = None  # the connection that had it and did not ack in time (not handed to it again)


@dataclass(frozen=True, slots=True)
class ActiveDecision:
    decision_id: str
    account: str
    action: Action
    reason_code: str
    created_at: int
    expires_at: int | None


def _insert_new(session: Session, table: type[Any]) -> Any:
    """INSERT that skips rows whose primary key exists (ON CONFLICT DO NOTHING, on either backend)."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    return dialect_insert(table).on_conflict_do_nothing()


class RelayStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        # The forms legacy `message_commitments` rows hold: SQLite's were 16-byte BLOBs (kept as is in
        # the text column), PostgreSQL's the hex form; the 256-bit form on both.
        self._legacy_forms: tuple[Callable[[bytes, str, str], str | bytes], ...] = (commitment, legacy_commitment)
        if db.engine.dialect.name == "sqlite":
            self._legacy_forms = (binary_commitment, *self._legacy_forms)
        self._param = "?" if db.engine.dialect.name == "sqlite" else "%s"  # the DB-API driver's placeholder

    # -- accounts ---------------------------------------------------------------------------
    def all_account_ids(self) -> set[str]:
        with self.db.session() as s:
            return set(s.scalars(select(AccountRow.id).where(AccountRow.deleted_at.is_(None))))

    def get_account(self, account: str) -> tuple[str, str] | None:
        """(identity_key, curve_key) or None."""
        with self.db.session() as s:
            row = s.get(AccountRow, account)
            return None if row is None or row.deleted_at is not None else (row.identity_key, row.curve_key)

    def login_lookup(self, account: str) -> tuple[tuple[str, str] | None, ActiveDecision | None]:
        """The account's keys (as `get_account`) and its active ban in the database, if any: a login
        must not get through on a node whose copy of the enforcement stream is a moment behind the
        decision (the database is the truth; the topic only carries the news)."""
        now = now_ms()
        with self.db.session() as s:
            row = s.get(AccountRow, account)
            if row is None or row.deleted_at is not None:
                return None, None
            ban = s.scalars(select(DecisionRow).where(
                DecisionRow.account == account, DecisionRow.status == "active", DecisionRow.action == Action.ban.value,
                or_(DecisionRow.expires_at.is_(None), DecisionRow.expires_at > now))
                .order_by(DecisionRow.created_at.desc()).limit(1)).first()
            return (row.identity_key, row.curve_key), (None if ban is None else ActiveDecision(
                ban.id, ban.account, Action.ban, ban.reason_code, ban.created_at, ban.expires_at))

    def create_account(self, identity_key: str, curve_key: str, bucket: str, client_kind: str) -> str:
        account = new_account_id()
        try:
            with self.db.session() as s, s.begin():
                s.add(AccountRow(id=account, identity_key=identity_key, curve_key=curve_key, net_bucket=bucket,
                                 client_kind=client_kind, registered_at=now_ms()))
        except IntegrityError:
            raise AlreadyRegistered("this identity key is already registered") from None
        return account

    def claim_handle(self, account: str, handle: str) -> None:
        try:
            with self.db.session() as s, s.begin():
                s.execute(update(AccountRow).where(AccountRow.id == account).values(handle=handle))
        except IntegrityError:
            raise HandleTaken(f"handle {handle!r} is taken") from None

    def lookup_handle(self, handle: str) -> str | None:
        with self.db.session() as s:
            return s.scalar(select(AccountRow.id).where(AccountRow.handle == handle,
                                                        AccountRow.deleted_at.is_(None)))

    # -- contacts and blocks ----------------------------------------------------------------------
    def contacts_of(self, account: str) -> list[str]:
        with self.db.session() as s:
            return list(s.scalars(select(ContactRow.contact).where(ContactRow.account == account)))

    def add_contact(self, account: str, contact: str) -> bool:
        try:
            with self.db.session() as s, s.begin():
                s.add(ContactRow(account=account, contact=contact, added_at=now_ms()))
            return True
        except IntegrityError:
            return False

    def remove_contact(self, account: str, contact: str) -> None:
        with self.db.session() as s, s.begin():
            s.execute(delete(ContactRow).where(ContactRow.account == account, ContactRow.contact == contact))

    def all_blocks(self) -> set[tuple[str, str]]:
        with self.db.session() as s:
            return {(b, d) for b, d in s.execute(select(BlockRow.blocker, BlockRow.blocked))}

    def block(self, blocker: str, blocked: str) -> None:
        try:
            with self.db.session() as s, s.begin():
                s.add(BlockRow(blocker=blocker, blocked=blocked, ts=now_ms()))
        except IntegrityError:
            pass

    def unblock(self, blocker: str, blocked: str) -> None:
        with self.db.session() as s, s.begin():
            s.execute(delete(BlockRow).where(BlockRow.blocker == blocker, BlockRow.blocked == blocked))

    # -- groups -----------------------------------------------------------------------------------
    def all_groups(self) -> dict[str, set[str]]:
        groups: dict[str, set[str]] = {}
        with self.db.session() as s:
            for gid in s.scalars(select(GroupRow.id)):
                groups[gid] = set()
            for gid, acc in s.execute(select(GroupMemberRow.group_id, GroupMemberRow.account)):
                groups.setdefault(gid, set()).add(acc)
        return groups

    def create_group(self, gid: str, creator: str, members: Iterable[str]) -> None:
        now = now_ms()
        with self.db.session() as s, s.begin():
            s.add(GroupRow(id=gid, created_by=creator, created_at=now))
            for m in {creator, *members}:
                s.add(GroupMemberRow(group_id=gid, account=m, added_by=creator, added_at=now))

    def add_member(self, gid: str, actor: str, member: str) -> None:
        try:
            with self.db.session() as s, s.begin():
                s.add(GroupMemberRow(group_id=gid, account=member, added_by=actor, added_at=now_ms()))
        except IntegrityError:
            pass

    def remove_member(self, gid: str, member: str) -> None:
        with self.db.session() as s, s.begin():
            s.execute(delete(GroupMemberRow).where(GroupMemberRow.group_id == gid, GroupMemberRow.account == member))

    # -- prekeys ------------------------------------------------------------------------------------
    def upload_prekeys(self, account: str, keys: Sequence[tuple[str, str]], fallback: tuple[str, str] | None) -> int:
        with self.db.session() as s, s.begin():
            if keys:
                s.execute(insert(PrekeyRow), [{"account": account, "key_id": k, "public_key": v,
                                                "is_fallback": False} for k, v in keys])
            if fallback is not None:
                s.execute(delete(PrekeyRow).where(PrekeyRow.account == account, PrekeyRow.is_fallback.is_(True)))
                s.add(PrekeyRow(account=account, key_id=fallback[0], public_key=fallback[1], is_fallback=True))
            return int(s.scalar(select(func.count()).select_from(PrekeyRow).where(
                PrekeyRow.account == account, PrekeyRow.claimed_at.is_(None), PrekeyRow.is_fallback.is_(False))) or 0)

    def claim_prekey(self, account: str) -> tuple[str, str, bool] | None:
        """A one-time key (marked claimed, never handed out twice), else the fallback key."""
        with self.db.session() as s, s.begin():
            row = s.scalars(select(PrekeyRow).where(PrekeyRow.account == account, PrekeyRow.claimed_at.is_(None),
                                                    PrekeyRow.is_fallback.is_(False))
                            .order_by(PrekeyRow.id).limit(1)).first()
            if row is not None:
                claimed = s.execute(update(PrekeyRow).where(PrekeyRow.id == row.id, PrekeyRow.claimed_at.is_(None))
                                    .values(claimed_at=now_ms())).rowcount
                if claimed == 1:
                    return row.key_id, row.public_key, False
            fb = s.scalars(select(PrekeyRow).where(PrekeyRow.account == account, PrekeyRow.is_fallback.is_(True))
                           .order_by(PrekeyRow.id.desc()).limit(1)).first()
            return None if fb is None else (fb.key_id, fb.public_key, True)

    # -- offline queue ---------------------------------------------------------------------------------
    def enqueue(self, items: Sequence[QueuedOut], quota: int) -> list[bool]:
        """Insert what fits each recipient's quota; returns, per item, whether it is now queued."""
        recipients = {i.recipient for i in items}
        with self.db.session() as s, s.begin():
            counts = dict(s.execute(select(QueuedMessageRow.recipient, func.count())
                                    .where(QueuedMessageRow.recipient.in_(recipients))
                                    .group_by(QueuedMessageRow.recipient)).all())
            ok: list[bool] = []
            rows = []
            seen: set[tuple[str, str]] = set()
            for item in items:
                key = (item.message_id.hex(), item.recipient)
                n = counts.get(item.recipient, 0)
                if key in seen:
                    ok.append(True)
                    continue
                if n >= quota:
                    ok.append(False)
                    continue
                counts[item.recipient] = n + 1
                seen.add(key)
                rows.append({"message_id": key[0], "recipient": item.recipient, "sender": item.sender,
                             "group_id": item.group, "kind": item.kind, "ciphertext": item.ciphertext,
                             "enqueued_at": item.enqueued_at, "expires_at": item.expires_at,
                             "withheld": item.withheld})
                ok.append(True)
            if rows:
                # A copy already queued (a retry, or another relay node that queued the same
                # handover at the same instant) is kept as it is: the message is queued either way.
                s.execute(_insert_new(s, QueuedMessageRow), rows)
        return ok

    def load_queue(self, recipient: str, limit: int = 1000) -> list[QueuedOut]:
        now = now_ms()
        with self.db.session() as s:
            rows = s.scalars(select(QueuedMessageRow).where(
                QueuedMessageRow.recipient == recipient, QueuedMessageRow.withheld.is_(False),
                QueuedMessageRow.expires_at > now).order_by(QueuedMessageRow.enqueued_at).limit(limit)).all()
            return [QueuedOut(bytes.fromhex(r.message_id), r.recipient, r.sender, r.group_id, r.kind, r.ciphertext,
                              r.enqueued_at, r.expires_at) for r in rows]

    def count_queue(self, recipient: str) -> int:
        with self.db.session() as s:
            return int(s.scalar(select(func.count()).select_from(QueuedMessageRow).where(
                QueuedMessageRow.recipient == recipient, QueuedMessageRow.withheld.is_(False))) or 0)

    def delete_queued(self, pairs: Sequence[tuple[bytes, str]]) -> int:
        if not pairs:
            return 0
        n = 0
        key = tuple_(QueuedMessageRow.message_id, QueuedMessageRow.recipient)
        with self.db.session() as s, s.begin():
            for i in range(0, len(pairs), 500):  # one statement per 500 rows, not one per message
                chunk = [(mid.hex(), recipient) for mid, recipient in pairs[i:i + 500]]
                n += s.execute(delete(QueuedMessageRow).where(key.in_(chunk))).rowcount
        return n

    def set_withheld(self, account: str, withheld: bool, banned: Collection[str] = ()) -> int:
        """Hold back (or release) the undelivered messages an account sent AND those queued for it;
        the rows stay, counted. Releasing keeps a row held while its other party is in `banned`."""
        with self.db.session() as s, s.begin():
            where = (or_(QueuedMessageRow.sender == account, QueuedMessageRow.recipient == account),
                     QueuedMessageRow.withheld.is_(not withheld))
            if withheld or not banned:
                return int(s.execute(update(QueuedMessageRow).where(*where).values(withheld=withheld)).rowcount)
            rows = s.execute(select(QueuedMessageRow.message_id, QueuedMessageRow.recipient, QueuedMessageRow.sender)
                             .where(*where)).all()
            n = 0
            for mid, recipient, sender in rows:
                other = recipient if sender == account else sender
                if other in banned:
                    continue
                n += s.execute(update(QueuedMessageRow).where(QueuedMessageRow.message_id == mid,
                                                              QueuedMessageRow.recipient == recipient)
                               .values(withheld=False)).rowcount
            return int(n)

    def queue_depth(self) -> tuple[int, int]:
        """(messages waiting in the offline queue, withheld messages) — for /metrics."""
        with self.db.session() as s:
            rows = dict(s.execute(select(QueuedMessageRow.withheld, func.count())
                                  .group_by(QueuedMessageRow.withheld)).all())
        return int(rows.get(False, 0)), int(rows.get(True, 0))

    def count_withheld(self) -> int:
        with self.db.session() as s:
            return int(s.scalar(select(func.count()).select_from(QueuedMessageRow)
                                .where(QueuedMessageRow.withheld.is_(True))) or 0)

    # -- commitments and reports ----------------------------------------------------------------------
    def add_commitments(self, items: Sequence[tuple[bytes, str, str]], flushed_at: int, ttl_ms: int) -> None:
        """Store H(message id, sender, recipient) for each (mid, sender, recipient): the general form
        (tests, tools); the relay hashes at send time and calls `add_commitment_digests`."""
        self.add_commitment_digests(b"".join(binary_commitment(m, snd, rcpt) for m, snd, rcpt in items),
                                    flushed_at, ttl_ms)

    def add_commitment_digests(self, digests: bytes, flushed_at: int, ttl_ms: int) -> None:
        """Store a flush's commitments, given as concatenated 16-byte `binary_commitment`s, as at most
        256 flushed blocks (one per first byte) in one transaction, with no Python per digest.

        One message each, so this is the relay's most frequent write. A row per message cost the DB
        thread 2–6 µs a message (SQLite's per-row work plus a growing random-key index); a block
        costs that per flush and prefix. numpy sorts and splits the buffer with the GIL released,
        and the driver releases it while the rows are written, so the event loop is never held up.
        The blocks belong to `flushed_at`'s period and expire `ttl_ms` after its end."""
        if len(digests) % 16:
            raise StoreError(f"commitment digests must be 16 bytes each; got {len(digests)} bytes")
        packed = blocks.pack(digests)
        if not packed:
            return
        period = blocks.period_of(flushed_at)
        expires_at = period + blocks.PERIOD_MS + ttl_ms
        raw = self.db.engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.executemany(_INSERT_BLOCK.format(self._param),
                            [(blocks.FLUSHED, prefix, period, expires_at, n, block) for prefix, n, block in packed])
            cur.close()
            raw.commit()
        finally:
            raw.close()

    def compact_commitments(self, now: int, budget: int = COMPACT_DIGESTS) -> int:
        """One step of compacting the blocks, in one transaction; returns how many blocks it merged
        (0: nothing is left to do for now). Call it until it returns 0, every so often.

        Two kinds of step, so that a report reads, per message, 1/65,536 of each closed hour's
        digests, and the current hour's in a few dozen blocks rather than one per flush:

        - gather: flushed blocks of one period in id order, from its first, until about `budget`
          digests or `COMPACT_ROWS` blocks, are deleted with one ranged DELETE and written back as
          one gathered block per first byte (`blocks.gather`). Consecutive flushes' blocks share
          table pages: 6 µs a block deleted on SQLite, where deleting one first byte's blocks at a
          time (spread over the whole hour) cost 16. In the current period only a full chunk is
          gathered, so a report reads at most a chunk's worth of flushed blocks per first byte (at
          12,000 messages a second, 22 flushes' worth: ~0.2 s of messages) plus one gathered block
          per ~1 MiB of the hour's digests;
        - split, for a closed period once its flushed blocks are gathered: the gathered blocks of
          a run of first bytes, until about `budget` digests or up to `COMPACT_ROWS / 4` rows could
          come out, are deleted (one DELETE per first byte) and written back sorted, one compacted
          block per two-byte prefix (`blocks.split`: one sort of everything taken, one
          `executemany`).

        The oldest closed period goes first, then the current one. Each step holds the DB thread
        for a few tens of ms (1 MiB of digests; 4 MiB steps took 0.1–0.2 s, and on a 2-core machine a
        burst that long took a core from message delivery for longer than the open loop's p99 allows),
        so the flushes run in between; at 12,000 messages a second an hour is ~700 gather steps and
        ~500 split steps. A block flushed late into a period already
        compacted is gathered and split at the next pass, into more rows of its (prefix, period).
        Blocks are deleted first (RETURNING their digests), so two nodes compacting at once each
        write back only what they deleted — nothing is lost or kept twice; blocks of different
        expiries (nodes with different TTLs) are merged apart, so none outlives its own."""
        engine = self.db.engine
        each = _EACH_FIRST_BYTE[engine.dialect.name]
        current = blocks.period_of(now)
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute(each.format(_OLDEST.format(blocks.FLUSHED, blocks.GATHERED)))
            plan = cur.fetchall()
            flushed = min((int(t) for _, t, _ in plan if t is not None and t <= current), default=None)
            gathered = min((int(t) for _, _, t in plan if t is not None and t < current), default=None)
            taken = 0
            if gathered is not None and (flushed is None or flushed == current or gathered < flushed):
                firsts = sorted(int(p) for p, _, t in plan if t is not None and int(t) == gathered)
                taken = self._split(cur, gathered, firsts, budget)
            elif flushed is not None:  # a closed period's (all of them), else the current one's (a chunk)
                cur.execute(each.format(_ID_RANGE.format(blocks.FLUSHED, self._param)), (flushed, flushed))
                ids = [(lo, hi) for _, lo, hi in cur.fetchall() if lo is not None]
                if ids:  # (none if another node took them in between)
                    taken = self._gather(cur, flushed, min(lo for lo, _ in ids), max(hi for _, hi in ids),
                                         budget, whole=flushed < current)
            cur.close()
            raw.commit()
        except BaseException:
            raw.rollback()
            raise
        finally:
            raw.close()
        return taken

    def _gather(self, cur: Any, period: int, first: int, last: int, budget: int, whole: bool) -> int:
        """Gather step of `compact_commitments`: flushed blocks of `period` from id `first` (its
        first) on, up to `last` (its last) — only a full chunk unless `whole`."""
        # By the primary key, in id order: `+level` and `+period` keep the planner off the (level,
        # prefix, period, id) index, which would visit the blocks first byte by first byte.
        q = self._param
        mine = f"id >= {q} AND id <= {q} AND +level = {q} AND +period = {q}"
        cur.execute(f"SELECT id, count FROM commitment_blocks WHERE {mine} ORDER BY id LIMIT {q}",
                    (first, last, blocks.FLUSHED, period, COMPACT_ROWS))
        chunk = cur.fetchall()
        upto, digests = first, 0
        for block_id, n in chunk:
            upto, digests = block_id, digests + n
            if digests >= budget:
                break
        if not whole and digests < budget and len(chunk) < COMPACT_ROWS:
            return 0  # the current period's last blocks: kept until a chunk is full
        cur.execute(f"DELETE FROM commitment_blocks WHERE {mine} RETURNING expires_at, digests",
                    (first, upto, blocks.FLUSHED, period))
        return self._write_back(cur, cur.fetchall(), blocks.GATHERED, period, blocks.gather)

    def _split(self, cur: Any, period: int, firsts: list[int], budget: int) -> int:
        """Split step of `compact_commitments`: gathered blocks of `period`, first bytes `firsts`
        in order, as many as fit."""
        q = self._param
        rows: list[Any] = []
        digests = out = 0
        for prefix in firsts:
            cur.execute(f"DELETE FROM commitment_blocks WHERE level = {q} AND prefix = {q} AND period = {q} "
                        "RETURNING expires_at, digests, count", (blocks.GATHERED, prefix, period))
            mine = cur.fetchall()
            rows += mine
            n = sum(r[2] for r in mine)
            digests, out = digests + n, out + min(n, 256)  # at most 256 two-byte prefixes under a first byte
            if digests >= budget or out + 256 > COMPACT_ROWS // 4:
                break
        return self._write_back(cur, rows, blocks.COMPACTED, period, blocks.split)

    def _write_back(self, cur: Any, taken: Sequence[Any], level: int, period: int,
                    cut: Callable[[list[bytes]], list[tuple[int, int, bytes]]]) -> int:
        """Write the blocks `taken` ((expires_at, digests, ...) rows) back at `level`, cut by `cut`,
        one set per expiry; returns how many were taken."""
        by_expiry: dict[int, list[bytes]] = {}
        for row in taken:
            by_expiry.setdefault(int(row[0]), []).append(row[1])
        out = [(level, key, period, expires_at, n, run)
               for expires_at, group in by_expiry.items() for key, n, run in cut(group)]
        if out:
            cur.executemany(_INSERT_BLOCK.format(self._param), out)
        return len(taken)

    def file_report(self, reporter: str, reported: str, reason_code: str, message_ids: Sequence[bytes]) -> tuple[int, int]:
        """Verify each named message against its commitment: it counts only if the reporter was its
        recipient and nobody reported it before. Writes the reports row. Returns (named, verified).

        A commitment is in a live block (`_find_in_blocks`); it verifies if inserting it into
        `reported_commitments` adds a row. Messages found in no block are looked up among the rows of
        `message_commitments` written before blocks, whose `reported` flag marks them."""
        now = now_ms()
        mids = list(dict.fromkeys(message_ids))
        digests = [binary_commitment(m, reported, reporter) for m in mids]
        found = self._find_in_blocks(digests, now)
        with self.db.session() as s, s.begin():
            verified = 0
            hits = [{"commitment": d, "expires_at": exp} for d, exp in zip(digests, found) if exp]
            if hits:
                verified += len(s.execute(_insert_new(s, ReportedCommitmentRow).values(hits)  # the rows it added
                                          .returning(ReportedCommitmentRow.commitment)).all())
            rest = [m for m, exp in zip(mids, found) if not exp]
            for make in self._legacy_forms if rest else ():  # each message has one form or another
                wanted = {make(m, reported, reporter) for m in rest}
                verified += int(s.execute(update(MessageCommitmentRow).where(
                    MessageCommitmentRow.commitment.in_(wanted), MessageCommitmentRow.reported.is_(False),
                    MessageCommitmentRow.expires_at > now).values(reported=True)).rowcount)
            s.add(ReportRow(reporter=reporter, reported=reported, reason_code=reason_code,
                            messages_named=len(message_ids), messages_verified=verified, ts=now))
        return len(message_ids), verified

    def _find_in_blocks(self, digests: list[bytes], now: int) -> list[int]:
        """For each digest, the expiry of the live block holding it (the latest), or 0.

        Two statements read what can hold the digests: the flushed and gathered blocks of their
        first bytes (the current hour's, and those of hours not compacted yet) and the compacted
        blocks of their two-byte prefixes (one per hour of TTL, more if blocks came late), streamed
        `_FIND_ROWS` at a time; each batch is scanned for all the digests at once (`blocks.locate`)."""
        if not digests:
            return []
        wanted = blocks.digests_of(b"".join(digests))
        found = [0] * len(digests)
        row = CommitmentBlockRow
        with self.db.engine.connect() as conn:
            for levels in ((blocks.FLUSHED, blocks.GATHERED), (blocks.COMPACTED,)):
                keys = sorted(set(blocks.prefixes(wanted, blocks.prefix_bits(levels[0])).tolist()))
                stmt = (select(row.expires_at, row.digests)
                        .where(row.level.in_(levels), row.prefix.in_(keys), row.expires_at > now))
                # the fresh blocks of a first byte may add up to megabytes an hour: not all at once
                for part in conn.execution_options(yield_per=_FIND_ROWS).execute(stmt).partitions():
                    for i, blk in blocks.locate([r[1] for r in part], wanted):
                        found[i] = max(found[i], int(part[blk][0]))
        return found

    # -- media ---------------------------------------------------------------------------------------
    def add_blob(self, owner: str, size: int, ttl_ms: int) -> tuple[str, int]:
        blob_id = secrets.token_hex(16)
        now = now_ms()
        with self.db.session() as s, s.begin():
            s.add(MediaBlobRow(id=blob_id, owner=owner, size=size, created_at=now, expires_at=now + ttl_ms,
                               fetch_count=0))
        return blob_id, now + ttl_ms

    def fetch_blob(self, blob_id: str) -> int | None:
        """Counts a fetch; returns the new fetch count, or None if the blob is unknown or expired."""
        with self.db.session() as s, s.begin():
            n = s.execute(update(MediaBlobRow).where(MediaBlobRow.id == blob_id, MediaBlobRow.expires_at > now_ms())
                          .values(fetch_count=MediaBlobRow.fetch_count + 1)).rowcount
            if not n:
                return None
            return int(s.scalar(select(MediaBlobRow.fetch_count).where(MediaBlobRow.id == blob_id)) or 0)

    # -- expiry ----------------------------------------------------------------------------------------
    def purge_expired(self, now: int) -> tuple[int, int, list[str]]:
        """Delete expired queue rows (withheld ones stay: they are counted), commitments (blocks,
        legacy rows, reported ones) and media rows. Returns (queued deleted, commitments deleted — a
        block counts its digests, reported ones are not counted —, media blob ids to unlink)."""
        with self.db.session() as s, s.begin():
            q = s.execute(delete(QueuedMessageRow).where(QueuedMessageRow.expires_at <= now,
                                                         QueuedMessageRow.withheld.is_(False))).rowcount
            c = s.execute(delete(MessageCommitmentRow).where(MessageCommitmentRow.expires_at <= now)).rowcount
            c += sum(s.scalars(delete(CommitmentBlockRow).where(CommitmentBlockRow.expires_at <= now)
                               .returning(CommitmentBlockRow.count)))
            s.execute(delete(ReportedCommitmentRow).where(ReportedCommitmentRow.expires_at <= now))
            blobs = list(s.scalars(select(MediaBlobRow.id).where(MediaBlobRow.expires_at <= now)))
            if blobs:
                s.execute(delete(MediaBlobRow).where(MediaBlobRow.id.in_(blobs)))
        return int(q), int(c), blobs

    # -- enforcement ------------------------------------------------------------------------------------
    def active_decisions(self) -> list[ActiveDecision]:
        now = now_ms()
        with self.db.session() as s:
            rows = s.scalars(select(DecisionRow).where(
                DecisionRow.status == "active", DecisionRow.action.in_([Action.ban.value, Action.restrict.value]))
                .order_by(DecisionRow.created_at)).all()
            return [ActiveDecision(r.id, r.account, Action(r.action), r.reason_code, r.created_at, r.expires_at)
                    for r in rows if r.expires_at is None or r.expires_at > now]

    def active_decisions_applied(self, node: str) -> list[tuple[ActiveDecision, bool]]:
        """Active, unexpired bans and restrictions, each with whether `node` already applied it —
        one query (an outer join on `enforcement_applications`), run every few seconds."""
        now = now_ms()
        app = EnforcementApplicationRow
        with self.db.session() as s:
            rows = s.execute(
                select(DecisionRow.id, DecisionRow.account, DecisionRow.action, DecisionRow.reason_code,
                       DecisionRow.created_at, DecisionRow.expires_at, app.decision_id)
                .outerjoin(app, (app.decision_id == DecisionRow.id) & (app.node == node))
                .where(DecisionRow.status == "active",
                       DecisionRow.action.in_([Action.ban.value, Action.restrict.value]))
                .order_by(DecisionRow.created_at)).all()
        return [(ActiveDecision(did, account, Action(action), reason, created, expires), applied is not None)
                for did, account, action, reason, created, expires, applied in rows
                if expires is None or expires > now]

    def ended_decisions(self, ids: Collection[str]) -> set[str]:
        """Those of `ids` the database knows and no longer holds active (lifted, superseded, expired)."""
        if not ids:
            return set()
        with self.db.session() as s:
            return set(s.scalars(select(DecisionRow.id).where(DecisionRow.id.in_(list(ids)),
                                                             DecisionRow.status != "active")))

    def applied_decisions(self, node: str) -> set[str]:
        with self.db.session() as s:
            return set(s.scalars(select(EnforcementApplicationRow.decision_id)
                                 .where(EnforcementApplicationRow.node == node)))

    def record_application(self, decision_id: str, node: str) -> bool:
        """True if this is the first application of the decision on this node."""
        try:
            with self.db.session() as s, s.begin():
                s.add(EnforcementApplicationRow(decision_id=decision_id, node=node, applied_at=now_ms()))
            return True
        except IntegrityError:
            return False

    # -- notices -------------------------------------------------------------------------------------
    def pending_notices(self, account: str | None = None, after_id: int = 0,
                        limit: int = 500) -> list[tuple[int, str, str, str | None, str | None]]:
        """(id, account, kind, decision_id, reason_code) of undelivered notices."""
        q = select(NoticeRow.id, NoticeRow.account, NoticeRow.kind, NoticeRow.decision_id, NoticeRow.reason_code) \
            .where(NoticeRow.delivered_at.is_(None), NoticeRow.id > after_id)
        if account is not None:
            q = q.where(NoticeRow.account == account)
        with self.db.session() as s:
            return [tuple(r) for r in s.execute(q.order_by(NoticeRow.id).limit(limit)).all()]  # type: ignore[misc]

    def add_notice(self, account: str, kind: str, decision_id: str | None, reason_code: str | None) -> None:
        with self.db.session() as s, s.begin():
            s.add(NoticeRow(account=account, kind=kind, decision_id=decision_id, reason_code=reason_code,
                            created_at=now_ms()))

    def ensure_notice(self, account: str, kind: str, decision_id: str, reason_code: str | None) -> bool:
        """Add the notice of a decision unless moderation already wrote one; True if added."""
        with self.db.session() as s, s.begin():
            exists = s.scalar(select(NoticeRow.id).where(NoticeRow.account == account,
                                                         NoticeRow.decision_id == decision_id).limit(1))
            if exists is not None:
                return False
            s.add(NoticeRow(account=account, kind=kind, decision_id=decision_id, reason_code=reason_code,
                            created_at=now_ms()))
            return True

    def mark_notices_delivered(self, ids: Sequence[int]) -> None:
        if ids:
            with self.db.session() as s, s.begin():
                s.execute(update(NoticeRow).where(NoticeRow.id.in_(list(ids))).values(delivered_at=now_ms()))
