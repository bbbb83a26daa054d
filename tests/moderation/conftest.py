"""Fixtures for the moderation API: a real database, real reviewers (created through
`do_add_reviewer`), accounts with real vodozemac identity keys, and a publisher that records."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import vodozemac

with warnings.catch_warnings():  # starlette nudges towards httpx2; httpx is what the lock has
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from moderation.app import create_app
from moderation.auth import Role, do_add_reviewer
from moderation.cases import Queue
from sealguard.contracts import Enforcement, new_account_id, now_ms
from sealguard.settings import Settings
from sealguard.storage import AccountRow, CaseRow, Database

PASSWORD = "correct horse battery"


class RecordingPublisher:
    def __init__(self) -> None:
        self.published: list[Enforcement] = []

    def publish(self, enforcement: Enforcement) -> None:
        self.published.append(enforcement)


@dataclass
class World:
    db: Database
    client: TestClient
    publisher: RecordingPublisher
    identities: dict[str, vodozemac.Account] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)

    def account(self, *, net_bucket: str = "n000000000001", registered_at: int | None = None) -> str:
        identity = vodozemac.Account()
        account = new_account_id()
        with self.db.session() as s, s.begin():
            s.add(AccountRow(id=account, identity_key=identity.ed25519_key.to_base64(),
                             curve_key=identity.curve25519_key.to_base64(), handle=None, net_bucket=net_bucket,
                             client_kind="sdk", registered_at=registered_at or now_ms()))
        self.identities[account] = identity
        return account

    def case(self, account: str, queue: Queue = Queue.model_review, priority: float = 0.5,
             score: float | None = 0.7) -> int:
        with self.db.session() as s, s.begin():
            row = CaseRow(account=account, queue=queue.value, priority=priority, score=score,
                          model_version="m-test", rule_ids=["burst_first_contact"], status="open",
                          created_at=now_ms())
            s.add(row)
            s.flush()
            return int(row.id)

    def headers(self, username: str) -> dict[str, str]:
        if username not in self.tokens:
            r = self.client.post("/auth/login", json={"username": username, "password": PASSWORD})
            assert r.status_code == 200, r.text
            self.tokens[username] = r.json()["token"]
        return {"Authorization": f"Bearer {self.tokens[username]}"}

    def post(self, path: str, who: str | None, **body: Any) -> Any:
        return self.client.post(path, json=body, headers=self.headers(who) if who else {})

    def get(self, path: str, who: str | None, **params: Any) -> Any:
        return self.client.get(path, params=params, headers=self.headers(who) if who else {})


def add_default_reviewers(db: Database) -> None:
    for username, role in (("rita", Role.reviewer), ("ray", Role.reviewer), ("lena", Role.lead),
                           ("ada", Role.admin)):
        do_add_reviewer(db, username, PASSWORD, role)


@pytest.fixture
def world_factory(settings: Settings) -> Iterator[Any]:
    made: list[tuple[Database, TestClient]] = []

    def make(db_url: str | None = None, claim_ttl_s: int = 900) -> World:
        db = Database(db_url or settings.database_url)
        add_default_reviewers(db)
        publisher = RecordingPublisher()
        client = TestClient(create_app(settings, db, publisher, claim_ttl_s=claim_ttl_s))
        made.append((db, client))
        return World(db=db, client=client, publisher=publisher)

    yield make
    for db, client in made:
        client.close()
        db.dispose()


@pytest.fixture
def world(world_factory: Any, request: pytest.FixtureRequest) -> World:
    """SQLite by default; `SEALGUARD_TEST_MODERATION_PG=1` runs every API test on a fresh PostgreSQL
    database instead (the storage-heavy tests always run on both, through `db_url`)."""
    if os.environ.get("SEALGUARD_TEST_MODERATION_PG") == "1":
        return world_factory(request.getfixturevalue("pg_url"))
    return world_factory()
