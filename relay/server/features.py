"""What the relay does besides routing messages: prekeys, handles and contacts, presence, blocks,
reports, groups and media. Each handler validates, spends its rate limit, writes through the
DB thread and emits its signal; refusals raise `Refused` (the connection stays open)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relay.protocol import (
    MAX_MEDIA_BYTES,
    DeliveryStatus,
    ErrorCode,
    FrameType,
    GroupOp,
    decode_payload,
    encode,
    encode_send_ack,
)
from relay.server.connection import Connection
from relay.server.plane import SET_BLOCKS, SET_CONTACTS
from sealguard.contracts import Limit, ReasonCode, new_group_id, now_ms

if TYPE_CHECKING:
    from relay.server.core import RelayServer

HANDLE_RE = re.compile(r"^[a-z0-9_]{3,32}$")
BLOB_RE = re.compile(r"^[0-9a-f]{32}$")
MAX_GROUP_MEMBERS = 256
_REASONS = {r.value: r for r in ReasonCode}


def _refused(code: ErrorCode, detail: str) -> Exception:
    from relay.server.core import Refused

    return Refused(code, detail)


class Features:
    def __init__(self, server: RelayServer) -> None:
        self.s = server

    def handlers(self) -> dict[int, Callable[[Connection, int, int, bytes], None]]:
        return {
            FrameType.UPLOAD_PREKEYS: self._on_upload_prekeys,
            FrameType.CLAIM_PREKEY: self._on_claim_prekey,
            FrameType.ADD_CONTACT: self._on_add_contact,
            FrameType.REMOVE_CONTACT: self._on_remove_contact,
            FrameType.CLAIM_HANDLE: self._on_claim_handle,
            FrameType.LOOKUP_HANDLE: self._on_lookup_handle,
            FrameType.BLOCK: self._on_block,
            FrameType.UNBLOCK: self._on_unblock,
            FrameType.REPORT: self._on_report,
            FrameType.GROUP_CREATE: self._on_group_create,
            FrameType.GROUP_ADD: self._on_group_add,
            FrameType.GROUP_REMOVE: self._on_group_remove,
            FrameType.GROUP_SEND: self._on_group_send,
            FrameType.MEDIA_UPLOAD: self._on_media_upload,
            FrameType.MEDIA_FETCH: self._on_media_fetch,
        }

    def _known(self, account: str) -> None:
        if account not in self.s.accounts:
            raise self.s.unknown(account, f"no such account {account}")

    def _run(self, conn: Connection, rid: int, fn: Callable[..., Any], *args: Any,
             then: Callable[[Any], bytes | None]) -> None:
        """Run `fn` on the DB thread, then reply with what `then` builds (errors become ERROR frames)."""
        from relay.server.core import Refused

        async def job() -> None:
            try:
                result = await self.s.run_db(fn, *args)
                frame = then(result)
            except Refused as exc:
                self.s.reply_error(conn, rid, exc.code, exc.detail)
                return
            if frame is not None:
                self.s.reply(conn, frame)

        self.s.spawn(job())

    # -- prekeys --------------------------------------------------------------------------------
    def _on_upload_prekeys(self, conn: Connection, flags: int, rid: int, payload: bytes) -> None:
        keys, fb_id, fb_key = decode_payload(FrameType.UPLOAD_PREKEYS, payload)
        if len(keys) > 1000:
            raise _refused(ErrorCode.INVALID, "at most 1000 one-time keys per upload")
        for key_id, key in [*keys, (fb_id, fb_key)] if fb_id else keys:
            if not key_id or len(key_id) > 32 or not key or len(key) > 64:
                raise _refused(ErrorCode.INVALID, "a key id must be 1-32 characters and a key 1-64")
        self._run(conn, rid, self.s.store.upload_prekeys, conn.account, keys, (fb_id, fb_key) if fb_id else None,
                  then=lambda n: encode(FrameType.OK, rid, n))

    def _on_claim_prekey(self, conn: Connection, flags: int, rid: int, payload: bytes) -> None:
        (account,) = decode_payload(FrameType.CLAIM_PREKEY, payload)
        self._known(account)
        self.s.take(Limit.prekey_claim, conn)
        store = self.s.store

        def claim() -> tuple[tuple[str, str] | None, tuple[str, str, bool] | None]:
            return store.get_account(account), store.claim_prekey(account)

        def then(result: Any) -> bytes:
            keys, pre = result
            if keys is None or pre is None:
                raise _refused(ErrorCode.NO_PREKEY, "the account has no prekey left")
            return encode(FrameType.PREKEY, rid, account, keys[0], keys[1], pre[0], pre[1], int(pre[2]))

        self._run(conn, rid, claim, then=then)

    # -- people ------------------------------------------------------------------------------------
    def _on_add_contact(self, conn: Connection, flags: int, rid: int, payload: bytes) -> None:
        (contact,) = decode_payload(FrameType.ADD_CONTACT, payload)
        self._known(contact)
        account = conn.account
        assert account is not None
        if contact == account:
            raise _refused(ErrorCode.INVALID, "an account cannot add itself")

        def then(new: bool) -> bytes:
            if new:
                self.s.listener.emit(self.s.book.contact_added(account, contact))
            self.s.book.set_contacts(account, self.s.book.contacts_of(account) | {contact})
            self.s.mirror(SET_CONTACTS, account, contact)
            if contact in self.s.conns:  # the adder may now see the contact's presence
                conn.send(encode(FrameType.PRESENCE, 0, contact, 1))
            return encode(FrameType.OK, rid, 1 if new else 0)

        self._run(conn, rid, self.s.store.add_contact, account, contact, then=then)

    def _on_remove_contact(self, conn: Connection, flags: int, rid: int, payload: bytes) -> None:
        (contact,) = decode_payload(FrameType.REMOVE_CONTACT, payload)
        assert conn.account is not None
        self.s.book.remove_contact(conn.account, contact)
        self.s.mirror(SET_CONTACTS, conn.account, contact, False)
        self._run(conn, rid, self.s.store.remove_contact, conn.account, contact,
                  then=lambda _: encode(FrameType.OK, rid, 0))

    def presence_changed(self, account: str, online: bool) -> None:
        """Tell the account's online contacts that it came or went (only them)."""
        frame = encode(FrameType.PRESENCE, 0, account, int(online))
        for contact in self.s.book.contacts_of(account):
            other = self.s.conns.get(contact)
            if other is not None:
                other.send(frame)
        if online:  # and tell the account which of its contacts are online
            conn = self.s.conns.get(account)
            if conn is not None:
                for contact in self.s.book.contacts_of(account):
                    if contact in self.s.conns:
                        conn.send(encode(FrameType.PRESENCE, 0, contact, 1))
        if self.s.cluster is not None:  # contacts on other nodes
            self.s.cluster.presence_changed(account, online)

    def _on_claim_handle(self, conn: Connection, flags: int, rid: int, payload: bytes) -> None:
        (handle,) = decode_payload(FrameType.CLAIM_HANDLE, payload)
        if not HANDLE_RE.match(handle):
            raise _refused(ErrorCode.INVALID, "a handle is 3-32 of a-z, 0-9 and _")
        from relay.server.store import HandleTaken

        store = self.s.store

        def claim() -> bool:
            try:
                store.claim_handle(conn.account or "", handle)
                return True
            except HandleTaken:
                return False

        def then(ok: bool) -> bytes:
            if not ok:
                raise _refused(ErrorCode.HANDLE_TAKEN, f"handle {handle} is taken")
            return encode(FrameType.OK, rid, 0)

        self._run(conn, rid, claim, then=then)

    def _on_lookup_handle(self, conn: Connection, flags: int, rid: int, payload: bytes) -> None:
        (handle,) = decode_payload(FrameType.LOOKUP_HANDLE, payload)
        self.s.take(Limit.handle_lookup, conn)

        def then(account: str | None) -> bytes:
            if account is None:
                raise _refused(ErrorCode.NOT_FOUND, f"no account has handle {handle}")
            return encode(FrameType.HANDLE, rid, handle, account)

        self._run(conn, rid, self.s.store.lookup_handle, handle, then=then)

    def _on_block(self, conn: Connection, flags: int, rid: int, payload: bytes) -> None:
        (blocked,) = decode_payload(FrameType.BLOCK, payload)
        self._known(blocked)
        blocker = conn.account
        assert blocker is not None
        new = (blocker, blocked) not in self.s.blocks
        self.s.blocks.add((blocker, blocked))
        self.s.mirror(SET_BLOCKS, blocker, blocked)
        if self.s.cluster is not None:
            self.s.cluster.block_changed(blocker, blocked, True)

        def then(_: Any) -> bytes:
            if new:
                self.s.listener.emit(self.s.book.blocked(blocker, blocked))
            return encode(FrameType.OK, rid, 0)

        self._run(conn, rid, self.s.store.block, blocker, blocked, then=then)

    def _on_unblock(self, conn: Connection, flags: int, rid: int, payload: bytes) -> None:
        (blocked,) = decode_payload(FrameType.UNBLOCK, payload)
        self.s.blocks.discard((conn.account or "", blocked))
        self.s.mirror(SET_BLOCKS, conn.account or "", blocked, False)
        if self.s.cluster is not None:
            self.s.cluster.block_changed(conn.account or "", blocked, False)
        self._run(conn, rid, self.s.store.unblock, conn.account, blocked, then=lambda _: encode(FrameType.OK, rid, 0))

    def _on_report(self, conn: Connection, flags: int, rid: int, payload: bytes) -> None:
        reported, reason, mids = decode_payload(FrameType.REPORT, payload)
        self._known(reported)
        if reason not in _REASONS:
            raise _refused(ErrorCode.INVALID, f"reason_code {reason!r} is not a known reason code")
        if len(mids) > 100:
            raise _refused(ErrorCode.INVALID, "a report names at most 100 messages")
        self.s.take(Limit.report, conn)
        reporter = conn.account
        assert reporter is not None
        server = self.s

        async def job() -> None:
            await server._flush_now()  # commitments of recent messages must be in before verifying
            named, verified = await server.run_db(server.store.file_report, reporter, reported, reason, mids)
            server.listener.emit(server.book.report_filed(reporter, reported, _REASONS[reason], named, verified))
            server.reply(conn, encode(FrameType.REPORT_RESULT, rid, named, verified))

        server.spawn(job())

    # -- groups -----------------------------------------------------------------------------------
    def _member_of(self, gid: str, account: str) -> set[str]:
        members = self.s.groups.get(gid)
        if members is None:
            raise _refused(ErrorCode.UNKNOWN_GROUP, "no such group")
        if account not in members:
            raise _refused(ErrorCode.NOT_A_MEMBER, "this account is not a member of the group")
        return members

    def _group_event(self, gid: str, actor: str, member: str, op: GroupOp, extra: set[str] = frozenset()) -> None:
        frame = encode(FrameType.GROUP_EVENT, 0, gid, actor, member, op)
        for m in self.s.groups.get(gid, set()) | extra:
            other = self.s.conns.get(m)
            if other is not None:
                other.send(frame)

    def _on_group_create(self, conn: Connection, flags: int, rid: int, payload: bytes) -> None:
        (members,) = decode_payload(FrameType.GROUP_CREATE, payload)
        actor = conn.account
        assert actor is not None
        members = [m for m in dict.fromkeys(members) if m != actor]
        if len(members) + 1 > MAX_GROUP_MEMBERS:
            raise _refused(ErrorCode.INVALID, f"a group has at most {MAX_GROUP_MEMBERS} members")
        for m in members:
            self._known(m)
        restricted = actor in self.s.enforcer.restricted
        if members and not self.s.limiter.take(Limit.group_add, actor, restricted, cost=len(members)):
            raise self.s.breach(Limit.group_add, account=actor)
        gid = new_group_id()

        def then(_: Any) -> bytes:
            book, emit = self.s.book, self.s.listener.emit
            self.s.groups[gid] = {actor, *members}
            if self.s.cluster is not None:
                for m in (actor, *members):
                    self.s.cluster.group_changed(gid, m, True, actor)
            emit(book.group_created(gid, actor))
            for m in members:
                emit(book.group_member_added(gid, actor, m))
            for m in members:
                other = self.s.conns.get(m)
                if other is not None:
                    other.send(encode(FrameType.GROUP, 0, gid, [actor, *members]))
                    other.send(encode(FrameType.GROUP_EVENT, 0, gid, actor, m, GroupOp.CREATED))
            return encode(FrameType.GROUP, rid, gid, [actor, *members])

        self._run(conn, rid, self.s.store.create_group, gid, actor, members, then=then)

    def _on_group_add(self, conn: Connection, flags: int, rid: int, payload: bytes) -> None:
        gid, member = decode_payload(FrameType.GROUP_ADD, payload)
        actor = conn.account
        assert actor is not None
        members = self._member_of(gid, actor)
        self._known(member)
        if member in members:
            raise _refused(ErrorCode.INVALID, "already a member")
        self.s.take(Limit.group_add, conn)

        def then(_: Any) -> bytes:
            members.add(member)
            if self.s.cluster is not None:
                self.s.cluster.group_changed(gid, member, True, actor)
            self.s.listener.emit(self.s.book.group_member_added(gid, actor, member))
            self._group_event(gid, actor, member, GroupOp.ADDED)
            other = self.s.conns.get(member)
            if other is not None:
                other.send(encode(FrameType.GROUP, 0, gid, sorted(members)))
            return encode(FrameType.OK, rid, len(members))

        self._run(conn, rid, self.s.store.add_member, gid, actor, member, then=then)

    def _on_group_remove(self, conn: Connection, flags: int, rid: int, payload: bytes) -> None:
        gid, member = decode_payload(FrameType.GROUP_REMOVE, payload)
        actor = conn.account
        assert actor is not None
        members = self._member_of(gid, actor)
        if member not in members:
            raise _refused(ErrorCode.NOT_A_MEMBER, "that account is not a member")

        def then(_: Any) -> bytes:
            self._group_event(gid, actor, member, GroupOp.REMOVED)  # the removed member hears it too
            members.discard(member)
            if self.s.cluster is not None:
                self.s.cluster.group_changed(gid, member, False, actor)
            self.s.listener.emit(self.s.book.group_member_removed(gid, actor, member))
            return encode(FrameType.OK, rid, len(members))

        self._run(conn, rid, self.s.store.remove_member, gid, member, then=then)

    def _on_group_send(self, conn: Connection, flags: int, rid: int, payload: bytes) -> None:
        from relay.server.core import Outgoing

        mid, gid, kind, ciphertext = decode_payload(FrameType.GROUP_SEND, payload)
        sender = self.s.check_send(conn, kind, len(ciphertext))
        members = self._member_of(gid, sender)
        blocks, bans = self.s.blocks, self.s.enforcer.bans
        # Members that blocked the sender or are banned are skipped (a banned member can receive nothing).
        recipients = [m for m in members if m != sender and (m, sender) not in blocks and m not in bans]
        self.s.stats.sends += 1
        ts = now_ms()
        from relay.server.core import _KINDS
        self.s.listener.emit(self.s.book.group_message_sent(sender, gid, len(ciphertext), _KINDS[kind]))
        if not recipients:
            conn.send(encode_send_ack(rid, mid, DeliveryStatus.DELIVERED))
            return
        out = Outgoing(conn, rid, mid, len(recipients))
        for r in recipients:
            self.s.add_commitment(mid, conn.account_b, r)
            self.s.route(out, mid, sender, conn.account_b, r, gid, kind, ts, ciphertext, self.s.conns.get(r))

    # -- media --------------------------------------------------------------------------------------
    def blob_signal_id(self, blob_id: str) -> str:
        """Signals carry a salted hash of the storage id, never the id itself."""
        salt = self.s.config.net_salt.encode()
        return "b" + hashlib.blake2b(blob_id.encode(), key=salt[:64], digest_size=10).hexdigest()

    def _on_media_upload(self, conn: Connection, flags: int, rid: int, payload: bytes) -> None:
        (blob,) = decode_payload(FrameType.MEDIA_UPLOAD, payload)
        if not blob:
            raise _refused(ErrorCode.INVALID, "empty blob")
        if len(blob) > MAX_MEDIA_BYTES:
            raise _refused(ErrorCode.TOO_LARGE, f"blob of {len(blob)} bytes exceeds {MAX_MEDIA_BYTES}")
        self.s.take(Limit.media_upload, conn)
        owner = conn.account
        assert owner is not None
        media_dir: Path = self.s.config.media_dir
        store, ttl = self.s.store, int(self.s.config.media_ttl_s * 1000)

        def save() -> tuple[str, int]:
            blob_id, expires = store.add_blob(owner, len(blob), ttl)
            tmp = media_dir / (blob_id + ".tmp")
            tmp.write_bytes(blob)
            tmp.rename(media_dir / blob_id)
            return blob_id, expires

        def then(result: tuple[str, int]) -> bytes:
            blob_id, expires = result
            self.s.listener.emit(self.s.book.media_uploaded(owner, self.blob_signal_id(blob_id), len(blob)))
            return encode(FrameType.MEDIA_STORED, rid, blob_id, expires)

        self._run(conn, rid, save, then=then)

    def _on_media_fetch(self, conn: Connection, flags: int, rid: int, payload: bytes) -> None:
        (blob_id,) = decode_payload(FrameType.MEDIA_FETCH, payload)
        if not BLOB_RE.match(blob_id):
            raise _refused(ErrorCode.INVALID, "blob_id is 32 hex digits")
        media_dir: Path = self.s.config.media_dir
        store = self.s.store
        account = conn.account
        assert account is not None

        def load() -> tuple[int, bytes] | None:
            count = store.fetch_blob(blob_id)
            if count is None:
                return None
            try:
                return count, (media_dir / blob_id).read_bytes()
            except FileNotFoundError:
                return None

        def then(result: tuple[int, bytes] | None) -> bytes:
            if result is None:
                raise _refused(ErrorCode.NOT_FOUND, "no such blob (expired or never stored)")
            count, data = result
            self.s.listener.emit(self.s.book.media_fetched(account, self.blob_signal_id(blob_id), count))
            return encode(FrameType.MEDIA, rid, blob_id, data)

        self._run(conn, rid, load, then=then)

