"""End-to-end encryption on the client: Olm sessions per peer, Megolm sessions per group.

Envelope of a 1:1 ciphertext (what the relay carries, opaque to it):
    olm_type u8 | sender curve key (32 bytes, pre-key messages only) | Olm ciphertext
Plaintext inside (what only the two clients see):
    inner_type u8 | body      — USER (app bytes), GROUP_KEY (group id + Megolm session key),
                                READ (message ids), MEDIA (blob id + file key + nonce + caption)
Group ciphertext: the Megolm message bytes; its plaintext carries the same inner types.
"""

from __future__ import annotations

import enum

import vodozemac

from relay.client.identity import Identity


class CryptoError(Exception):
    """A message that could not be decrypted (no session, corrupted, replayed)."""


class Inner(enum.IntEnum):
    USER = 0
    GROUP_KEY = 1
    READ = 2
    MEDIA = 3


class OlmBox:
    """Olm sessions with every peer, newest first (either side may have opened one)."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.sessions: dict[str, list[vodozemac.Session]] = {}
        self._own_curve = identity.account.curve25519_key.to_bytes()

    def has_session(self, peer: str) -> bool:
        return bool(self.sessions.get(peer))

    def open_outbound(self, peer: str, curve_key: str, one_time_key: str) -> None:
        session = self.identity.account.create_outbound_session(
            vodozemac.Curve25519PublicKey.from_base64(curve_key), vodozemac.Curve25519PublicKey.from_base64(one_time_key))
        self.sessions.setdefault(peer, []).insert(0, session)

    def encrypt(self, peer: str, plaintext: bytes) -> bytes:
        sessions = self.sessions.get(peer)
        if not sessions:
            raise CryptoError(f"no Olm session with {peer}")
        mtype, ciphertext = sessions[0].encrypt(plaintext).to_parts()
        if mtype == 0:
            return b"\x00" + self._own_curve + ciphertext
        return bytes((mtype,)) + ciphertext

    def decrypt(self, peer: str, envelope: bytes) -> bytes:
        if not envelope:
            raise CryptoError("empty ciphertext")
        mtype = envelope[0]
        sessions = self.sessions.setdefault(peer, [])
        if mtype == 0:
            if len(envelope) < 33:
                raise CryptoError("pre-key message too short")
            curve, body = envelope[1:33], envelope[33:]
            try:
                prekey = vodozemac.AnyOlmMessage.from_parts(0, body).to_pre_key()
            except ValueError as exc:
                raise CryptoError(f"bad pre-key message: {exc}") from None
            if prekey is None:
                raise CryptoError("not a pre-key message")
            for session in sessions:
                if session.session_matches(prekey):
                    try:
                        return session.decrypt(prekey.to_any())
                    except ValueError as exc:
                        raise CryptoError(f"could not decrypt: {exc}") from None
            try:
                session, plaintext = self.identity.account.create_inbound_session(
                    vodozemac.Curve25519PublicKey.from_bytes(curve), prekey)
            except ValueError as exc:
                raise CryptoError(f"could not open an inbound session: {exc}") from None
            sessions.insert(0, session)
            return plaintext
        message = vodozemac.AnyOlmMessage.from_parts(mtype, envelope[1:])
        for session in sessions:
            try:
                return session.decrypt(message)
            except ValueError:
                continue
        raise CryptoError(f"no Olm session with {peer} decrypts this message")


class GroupBox:
    """My outbound Megolm session per group (and who has its key); members' inbound sessions."""

    def __init__(self) -> None:
        self.outbound: dict[str, vodozemac.GroupSession] = {}
        self.shared: dict[str, set[str]] = {}
        self.inbound: dict[tuple[str, str], list[vodozemac.InboundGroupSession]] = {}

    def session_for(self, gid: str) -> vodozemac.GroupSession:
        session = self.outbound.get(gid)
        if session is None:
            session = self.outbound[gid] = vodozemac.GroupSession()
            self.shared[gid] = set()
        return session

    def rotate(self, gid: str) -> None:
        """After a member leaves: a new session, so the leaver cannot read what follows."""
        self.outbound.pop(gid, None)
        self.shared.pop(gid, None)

    def key_message(self, gid: str) -> bytes:
        return gid.encode() + self.session_for(gid).session_key.to_base64().encode()

    def add_inbound(self, sender: str, body: bytes) -> str:
        gid, key = body[:21].decode("ascii"), body[21:].decode("ascii")
        try:
            session = vodozemac.InboundGroupSession(vodozemac.SessionKey(key))
        except ValueError as exc:
            raise CryptoError(f"bad group session key: {exc}") from None
        self.inbound.setdefault((gid, sender), []).insert(0, session)
        return gid

    def encrypt(self, gid: str, plaintext: bytes) -> bytes:
        return self.session_for(gid).encrypt(plaintext).to_bytes()

    def decrypt(self, gid: str, sender: str, ciphertext: bytes) -> bytes:
        try:
            message = vodozemac.MegolmMessage.from_bytes(ciphertext)
        except ValueError as exc:
            raise CryptoError(f"bad Megolm message: {exc}") from None
        for session in self.inbound.get((gid, sender), ()):
            try:
                return session.decrypt(message).plaintext
            except ValueError:
                continue
        raise CryptoError(f"no group session from {sender} in {gid} decrypts this message")

    def forget_group(self, gid: str) -> None:
        self.rotate(gid)
        for key in [k for k in self.inbound if k[0] == gid]:
            del self.inbound[key]
