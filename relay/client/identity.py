"""An account's identity: a vodozemac Account (Ed25519 + Curve25519 key pairs) held by the client.

The relay only ever sees the public halves; the private keys never leave this object except
encrypted in `to_pickle`.
"""

from __future__ import annotations

import hashlib
import json

import vodozemac


def _pickle_key(key: bytes | str) -> bytes:
    raw = key.encode() if isinstance(key, str) else key
    return raw if len(raw) == 32 else hashlib.sha256(raw).digest()


class Identity:
    __slots__ = ("account", "account_id")

    def __init__(self, account: vodozemac.Account, account_id: str | None = None) -> None:
        self.account = account
        self.account_id = account_id  # set once registered

    @classmethod
    def generate(cls) -> Identity:
        return cls(vodozemac.Account())

    @property
    def identity_key(self) -> str:
        """The Ed25519 public key, base64 (accounts.identity_key)."""
        return self.account.ed25519_key.to_base64()

    @property
    def curve_key(self) -> str:
        """The Curve25519 public key, base64 (accounts.curve_key)."""
        return self.account.curve25519_key.to_base64()

    def sign(self, message: bytes) -> str:
        """An Ed25519 signature of `message`, base64 (what the relay and the appeal API verify)."""
        return self.account.sign(message).to_base64()

    def to_pickle(self, key: bytes | str) -> str:
        """The identity encrypted with `key` (any bytes; hashed to 32 if needed) as a JSON string."""
        return json.dumps({"account_id": self.account_id, "olm": self.account.pickle(_pickle_key(key))})

    @classmethod
    def from_pickle(cls, data: str, key: bytes | str) -> Identity:
        doc = json.loads(data)
        return cls(vodozemac.Account.from_pickle(doc["olm"], _pickle_key(key)), doc.get("account_id"))

    def __repr__(self) -> str:
        return f"Identity(account_id={self.account_id!r}, identity_key={self.identity_key!r})"
