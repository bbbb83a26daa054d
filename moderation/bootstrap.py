"""Default reviewer accounts for a one-machine platform (`sealguard up`).

Passwords are random per state dir and kept in `state_dir/dev_credentials.json` (mode 0600), so
`up` can print them on every start while the database holds only argon2 hashes.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from sqlalchemy import select

from moderation.auth import Role, do_add_reviewer, hash_password, verify_password
from sealguard.storage import Database, ReviewerRow

DEFAULT_REVIEWERS = (("reviewer", Role.reviewer), ("lead", Role.lead), ("admin", Role.admin))


def _credentials_file(db: Database, state_dir: Path | None) -> Path | None:
    if state_dir is not None:
        return state_dir / "dev_credentials.json"
    if db.url.startswith("sqlite:///") and db.url != "sqlite:///:memory:":
        return Path(db.url.removeprefix("sqlite:///")).parent / "dev_credentials.json"
    return None


def ensure_default_reviewers(db: Database, state_dir: Path | None = None) -> list[tuple[str, str, str]]:
    """Create (or re-key) `reviewer`, `lead` and `admin`; return (username, password, role) each."""
    path = _credentials_file(db, state_dir)
    known: dict[str, str] = {}
    if path is not None and path.exists():
        try:
            known = {str(k): str(v) for k, v in json.loads(path.read_text()).items()}
        except (OSError, ValueError):
            known = {}
    out: list[tuple[str, str, str]] = []
    for username, role in DEFAULT_REVIEWERS:
        password = known.get(username) or secrets.token_urlsafe(12)
        with db.session() as s, s.begin():
            row = s.scalars(select(ReviewerRow).where(ReviewerRow.username == username)).first()
            if row is not None and not verify_password(row.password_hash, password):
                row.password_hash = hash_password(password)  # lost credentials file: re-key
        if row is None:
            do_add_reviewer(db, username, password, role, actor="system:bootstrap")
        known[username] = password
        out.append((username, password, role.value))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(known, f)
    return out
