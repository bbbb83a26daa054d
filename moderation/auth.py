"""Reviewer accounts, roles, argon2 password hashes and expiring signed tokens.

Tokens are stateless (HMAC-SHA256 over `reviewer id, role, expiry`) with a secret kept in
`state_dir/api_secret`, so an API restart keeps everyone logged in and several API processes
can share one state dir. Every request still loads the reviewer row, so disabling a reviewer or
changing a role takes effect at once rather than when the token expires.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import json
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import select
from sqlalchemy.orm import Session

from moderation.errors import (
    Conflict,
    ErrorCode,
    Forbidden,
    ModerationError,
    NotFound,
    TooManyAttempts,
    Unauthenticated,
)
from sealguard.contracts import now_ms
from sealguard.storage import AuditLogRow, Database, ReviewerRow


class Role(str, enum.Enum):
    """Ordered: each role can do everything the roles below it can."""

    reviewer = "reviewer"
    lead = "lead"
    admin = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)


# argon2id with small-but-real costs: a login takes ~30 ms here, not seconds of a shared core.
_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
_USERNAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_.-")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the reviewer's id (the `actor` on decisions and audit rows) and role."""

    reviewer_id: str
    username: str
    role: Role

    def require(self, role: Role) -> None:
        if self.role.rank < role.rank:
            raise Forbidden(f"{self.role.value} {self.username} may not do this: it needs the {role.value} role")


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def load_secret(state_dir: Path) -> bytes:
    """The token-signing secret, created once (mode 0600) under the state dir."""
    path = state_dir / "api_secret"
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    def __init__(self, secret: bytes, ttl_s: int) -> None:
        if ttl_s <= 0:
            raise ModerationError(f"token ttl must be positive, got {ttl_s}")
        self._secret = secret
        self.ttl_s = ttl_s

    def issue(self, reviewer: ReviewerRow) -> tuple[str, int]:
        expires_at = now_ms() + self.ttl_s * 1000
        body = _b64(json.dumps({"sub": reviewer.id, "exp": expires_at}, separators=(",", ":")).encode())
        return f"{body}.{self._mac(body)}", expires_at

    def subject(self, token: str) -> str:
        """The reviewer id a valid, unexpired token names."""
        body, _, mac = token.partition(".")
        if not body or not mac or not hmac.compare_digest(mac, self._mac(body)):
            raise Unauthenticated("the token is not one this API issued")
        try:
            claims = json.loads(_unb64(body))
            subject, expires_at = str(claims["sub"]), int(claims["exp"])
        except (ValueError, KeyError, TypeError) as exc:
            raise Unauthenticated("the token is malformed") from exc
        if expires_at <= now_ms():
            raise Unauthenticated("the token has expired: log in again", ErrorCode.token_expired)
        return subject

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._secret, body.encode(), hashlib.sha256).digest()[:24])


def principal_for(db: Database, signer: TokenSigner, token: str | None) -> Principal:
    if not token:
        raise Unauthenticated("this needs a reviewer token: POST /auth/login, then send 'Authorization: Bearer …'")
    reviewer_id = signer.subject(token)
    with db.session() as s:
        row = s.get(ReviewerRow, reviewer_id)
    if row is None or row.disabled:
        raise Unauthenticated("this reviewer no longer exists or is disabled")
    return Principal(reviewer_id=row.id, username=row.username, role=Role(row.role))


class LoginThrottle:
    """At most `limit` failed logins per username per `window_s`; then 429 until the window passes.
    In memory, per API process: it slows guessing, the argon2 cost does the rest."""

    def __init__(self, limit: int = 10, window_s: float = 300.0) -> None:
        self.limit, self.window_ms = limit, int(window_s * 1000)
        self._failures: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def check(self, username: str) -> None:
        now = now_ms()
        with self._lock:
            recent = [t for t in self._failures.get(username, []) if t > now - self.window_ms]
            self._failures[username] = recent
            if len(recent) >= self.limit:
                raise TooManyAttempts(f"too many failed logins for {username}: try again in "
                                      f"{(recent[0] + self.window_ms - now) // 1000 + 1} s")

    def failed(self, username: str) -> None:
        with self._lock:
            if len(self._failures) > 100_000:  # bounded memory under a username spray
                self._failures.clear()
            self._failures.setdefault(username, []).append(now_ms())

    def succeeded(self, username: str) -> None:
        with self._lock:
            self._failures.pop(username, None)


def do_login(db: Database, signer: TokenSigner, username: str, password: str,
             throttle: LoginThrottle | None = None) -> tuple[str, int, Principal]:
    """A token for the right password; the same answer for an unknown user and a wrong password."""
    if throttle is not None:
        throttle.check(username)
    with db.session() as s:
        row = s.scalars(select(ReviewerRow).where(ReviewerRow.username == username)).first()
    if row is None or row.disabled or not verify_password(row.password_hash, password):
        if throttle is not None:
            throttle.failed(username)
        raise Unauthenticated("unknown username or wrong password")
    if throttle is not None:
        throttle.succeeded(username)
    token, expires_at = signer.issue(row)
    with db.session() as s, s.begin():
        s.add(AuditLogRow(ts=now_ms(), actor=row.id, action="reviewer.login", target=row.id))
    return token, expires_at, Principal(reviewer_id=row.id, username=row.username, role=Role(row.role))


def reviewer_id_for(username: str) -> str:
    """Reviewer ids are actor ids on the wire (`^[a-z][a-z0-9_.:-]*$`): `r:` + the username."""
    return f"r:{username}"


def check_add_reviewer(session: Session, username: str, password: str, role: Role) -> None:
    if not (2 <= len(username) <= 32) or not set(username) <= _USERNAME_CHARS or not username[0].isalpha():
        raise ModerationError(f"username {username!r} must be 2-32 characters of a-z, 0-9, _ . - starting with a letter")
    if len(password) < 8:
        raise ModerationError("password must be at least 8 characters")
    if session.scalars(select(ReviewerRow).where(ReviewerRow.username == username)).first() is not None:
        raise Conflict(f"reviewer {username} already exists", ErrorCode.duplicate)


def do_add_reviewer(db: Database, username: str, password: str, role: Role, *, actor: str = "system") -> ReviewerRow:
    with db.session() as s, s.begin():
        check_add_reviewer(s, username, password, role)
        row = ReviewerRow(id=reviewer_id_for(username), username=username, password_hash=hash_password(password),
                          role=role.value, created_at=now_ms(), disabled=False)
        s.add(row)
        s.add(AuditLogRow(ts=now_ms(), actor=actor, action="reviewer.add", target=row.id,
                          evidence={"role": role.value}))
    return row


def do_set_reviewer_disabled(db: Database, username: str, disabled: bool, *, actor: str) -> ReviewerRow:
    with db.session() as s, s.begin():
        row = s.scalars(select(ReviewerRow).where(ReviewerRow.username == username)).first()
        if row is None:
            raise NotFound(f"no reviewer named {username}")
        if row.id == actor and disabled:
            raise ModerationError("a reviewer cannot disable themselves")
        row.disabled = disabled
        s.add(AuditLogRow(ts=now_ms(), actor=actor, action="reviewer.disable" if disabled else "reviewer.enable",
                          target=row.id))
    return row


def list_reviewers(db: Database) -> list[ReviewerRow]:
    with db.session() as s:
        return list(s.scalars(select(ReviewerRow).order_by(ReviewerRow.username)).all())
