"""Tables the relay owns: identities, prekeys, contacts, groups, the offline queue, report
commitments, media.

Only public keys and ciphertext are stored; the relay never holds a private key or plaintext.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Index, Integer, LargeBinary, SmallInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from sealguard.storage.base import AccountCol, Base, Ms


class AccountRow(Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(AccountCol(), primary_key=True)
    identity_key: Mapped[str] = mapped_column(String(64), unique=True)  # Ed25519 public, base64
    curve_key: Mapped[str] = mapped_column(String(64))  # Curve25519 public, base64
    handle: Mapped[str | None] = mapped_column(String(32), unique=True)
    net_bucket: Mapped[str] = mapped_column(String(13), index=True)
    client_kind: Mapped[str] = mapped_column(String(16))
    registered_at: Mapped[int] = mapped_column(Ms)
    deleted_at: Mapped[int | None] = mapped_column(Ms)


class PrekeyRow(Base):
    __tablename__ = "prekeys"
    __table_args__ = (Index("ix_prekeys_account_claimed", "account", "claimed_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(AccountCol())
    key_id: Mapped[str] = mapped_column(String(32))
    public_key: Mapped[str] = mapped_column(String(64))
    is_fallback: Mapped[bool] = mapped_column(Boolean, default=False)
    claimed_at: Mapped[int | None] = mapped_column(Ms)


class ContactRow(Base):
    __tablename__ = "contacts"

    account: Mapped[str] = mapped_column(AccountCol(), primary_key=True)
    contact: Mapped[str] = mapped_column(AccountCol(), primary_key=True)
    added_at: Mapped[int] = mapped_column(Ms)


class BlockRow(Base):
    __tablename__ = "blocks"

    blocker: Mapped[str] = mapped_column(AccountCol(), primary_key=True)
    blocked: Mapped[str] = mapped_column(AccountCol(), primary_key=True)
    ts: Mapped[int] = mapped_column(Ms)


class GroupRow(Base):
    """A group is membership only; its name and avatar travel encrypted between members."""

    __tablename__ = "groups"

    id: Mapped[str] = mapped_column(String(21), primary_key=True)
    created_by: Mapped[str] = mapped_column(AccountCol())
    created_at: Mapped[int] = mapped_column(Ms)


class GroupMemberRow(Base):
    __tablename__ = "group_members"

    group_id: Mapped[str] = mapped_column(String(21), primary_key=True)
    account: Mapped[str] = mapped_column(AccountCol(), primary_key=True, index=True)
    added_by: Mapped[str] = mapped_column(AccountCol())
    added_at: Mapped[int] = mapped_column(Ms)


class QueuedMessageRow(Base):
    """Offline queue: ciphertext waiting for its recipient; deleted on the recipient's ack."""

    __tablename__ = "queued_messages"
    __table_args__ = (Index("ix_queued_recipient_enqueued", "recipient", "enqueued_at"),)

    message_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    recipient: Mapped[str] = mapped_column(AccountCol(), primary_key=True)
    sender: Mapped[str] = mapped_column(AccountCol(), index=True)
    group_id: Mapped[str | None] = mapped_column(String(21))
    kind: Mapped[int] = mapped_column(Integer)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    enqueued_at: Mapped[int] = mapped_column(Ms)
    expires_at: Mapped[int] = mapped_column(Ms, index=True)
    withheld: Mapped[bool] = mapped_column(Boolean, default=False)


class MessageCommitmentRow(Base):
    """H(message id, sender, recipient), one row per message: the form written before
    `commitment_blocks`. Read-only legacy now — reports still check (and mark) these rows, in every
    form written before (16-byte BLOB or hex, 128- or 256-bit), and expiry empties the table within
    the 30-day TTL of the last row written; nothing inserts here any more."""

    __tablename__ = "message_commitments"

    commitment: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[int] = mapped_column(Ms, index=True)
    reported: Mapped[bool] = mapped_column(Boolean, default=False)


class CommitmentBlockRow(Base):
    """A block of report commitments: 16-byte H(message id, sender, recipient) that share a prefix
    (`relay.server.commitment_blocks`), at one of three `level`s:

    - 0, flushed: one flush's digests whose first byte is `prefix`, sorted — at most 256 rows a
      flush instead of one per message;
    - 1, gathered: digests of consecutive flushes of one hour whose first byte is `prefix`
      (grouped, not sorted) — the first step of compacting an hour, ~1 MiB of digests at a time;
    - 2, compacted: a closed hour's digests whose first two bytes are `prefix` (0–65,535), sorted —
      so a report reads 1/65,536 of an hour per message, not 1/256 of the TTL. A block flushed late
      into an hour already compacted is compacted at the next pass, as more rows of its (prefix,
      period).

    `period` is the start of the hour the block was flushed in; a block expires at that hour's end
    plus the TTL, so a commitment lives at least its TTL and at most one period longer.

    One table with a `level` column, not a table per level: a report reads every level through the
    same index, expiry deletes them all with one statement, and the levels differ only in how many
    bits `prefix` holds and whether the digests are sorted. Indexes: (level, prefix, period, id)
    finds a report's blocks (the expiry is checked on the row), each first byte's oldest period at
    a level and the first and last id of its flushed blocks in a period (min()/max() seeks: `id`
    is in the index for PostgreSQL, whose index entries do not carry it as SQLite's carry the rowid),
    and one prefix's blocks of a period to compact; expires_at serves expiry. A flush adds one entry
    per first byte to the first, at the end of each first byte's run of flushed blocks, so an index
    that leads with the prefix dirties up to 256 leaf pages per flush — those runs stay small and
    hot, as compaction empties them every hour; a second such index — (period, prefix) or (prefix,
    expires_at) — cost ~70% more per flush of 1,000 digests (5.5 against 3.2 ms). The expiry index
    is appended to in order."""

    __tablename__ = "commitment_blocks"
    __table_args__ = (Index("ix_commitment_blocks_level_prefix_period", "level", "prefix", "period", "id"),)

    # 64-bit on PostgreSQL: up to 256 rows a second would run a 32-bit serial out in ~97 days.
    # SQLite's INTEGER PRIMARY KEY is already 64-bit (and only that spelling is the rowid).
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    level: Mapped[int] = mapped_column(SmallInteger)  # 0 flushed, 1 gathered, 2 compacted
    prefix: Mapped[int] = mapped_column(Integer)  # the digests' first byte, or first two (compacted)
    period: Mapped[int] = mapped_column(Ms)
    expires_at: Mapped[int] = mapped_column(Ms, index=True)
    count: Mapped[int] = mapped_column(Integer)  # digests in the block (`len(digests) // 16`)
    digests: Mapped[bytes] = mapped_column(LargeBinary)


class ReportedCommitmentRow(Base):
    """A commitment (16-byte digest) some report has verified, so it verifies no other report:
    a block is never rewritten to mark one. Kept as long as the block that held it."""

    __tablename__ = "reported_commitments"

    commitment: Mapped[bytes] = mapped_column(LargeBinary(16), primary_key=True)
    expires_at: Mapped[int] = mapped_column(Ms, index=True)


class MediaBlobRow(Base):
    """An encrypted blob; its bytes live in the media store, its key only with the clients."""

    __tablename__ = "media_blobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(AccountCol(), index=True)
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(Ms)
    expires_at: Mapped[int] = mapped_column(Ms, index=True)
    fetch_count: Mapped[int] = mapped_column(Integer, default=0)
