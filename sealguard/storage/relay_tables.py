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
    """A block of report commitments: the sorted 16-byte H(message id, sender, recipient) of one
    flush (or, once its period has closed, of the whole period) whose first byte is `prefix`.

    One row per flush and prefix instead of one per message (`relay.server.commitment_blocks`).
    `period` is the start of the hour the block was flushed in; a block expires at that hour's end
    plus the TTL, so a commitment lives at least its TTL and at most one period longer.

    Indexes: (prefix, period) finds a prefix's blocks, for a report (live ones: the expiry is
    checked on the row — all but a few are live) and for merging a closed period's; expires_at
    serves expiry. A flush adds one entry per prefix to (prefix, period), one at the end of each
    prefix's run, so each index that leads with the prefix dirties up to 256 leaf pages per flush:
    a second one — (period, prefix) or (prefix, expires_at) — cost ~70% more per flush of 1,000
    digests (5.5 against 3.2 ms); the expiry index is appended to in order."""

    __tablename__ = "commitment_blocks"
    __table_args__ = (Index("ix_commitment_blocks_prefix_period", "prefix", "period"),)

    # 64-bit on PostgreSQL: up to 256 rows a second would run a 32-bit serial out in ~97 days.
    # SQLite's INTEGER PRIMARY KEY is already 64-bit (and only that spelling is the rowid).
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    prefix: Mapped[int] = mapped_column(SmallInteger)  # the digests' first byte, 0-255
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
