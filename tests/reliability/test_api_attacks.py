"""Attacks on the moderation API over real HTTP (uvicorn on a random port, a real database, reviewers
created through `do_add_reviewer`, accounts with real vodozemac identity keys): no token, an expired
or forged token, a reviewer reaching for admin and lead actions, and flooding the HTTP report intake.
Each must fail cleanly: the right status and error code, nothing written, the audit log unchanged.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import vodozemac
from sqlalchemy import func, select

from moderation.auth import Role, TokenSigner, do_add_reviewer, load_secret
from moderation.reports import report_message
from moderation.server import ApiServer
from sealguard.contracts import new_account_id, now_ms
from sealguard.settings import Settings
from sealguard.storage import AccountRow, AuditLogRow, Database, DecisionRow, ReportRow, ReviewerRow

PASSWORD = "correct horse battery"


@dataclass
class Api:
    url: str
    db: Database
    http: httpx.Client
    state_dir: Path

    def token(self, username: str) -> str:
        r = self.http.post("/auth/login", json={"username": username, "password": PASSWORD})
        assert r.status_code == 200, r.text
        return str(r.json()["token"])

    def account(self) -> tuple[str, vodozemac.Account]:
        ident = vodozemac.Account()
        account = new_account_id()
        with self.db.session() as s, s.begin():
            s.add(AccountRow(id=account, identity_key=ident.ed25519_key.to_base64(),
                             curve_key=ident.curve25519_key.to_base64(), net_bucket="n000000000001",
                             client_kind="sdk", registered_at=now_ms()))
        return account, ident

    def count(self, table: type) -> int:
        with self.db.session() as s:
            return int(s.scalar(select(func.count()).select_from(table)) or 0)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    settings = Settings(state_dir=tmp_path / "state", db_url=f"sqlite:///{tmp_path / 'api.db'}", token_ttl_s=3600)
    db = Database(settings.database_url)
    for username, role in (("rita", Role.reviewer), ("lena", Role.lead), ("ada", Role.admin)):
        do_add_reviewer(db, username, PASSWORD, role)
    server = ApiServer(settings, db, None, host="127.0.0.1").start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            yield Api(server.url, db, http, settings.state_dir)
    finally:
        server.stop()
        db.dispose()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_no_token_forged_token_and_expired_token_are_refused(api: Api) -> None:
    account, _ = api.account()
    probes = [("GET", "/cases"), ("GET", f"/accounts/{account}"), ("GET", "/decisions"), ("GET", "/audit"),
              ("GET", "/reviewers"), ("POST", "/decisions")]
    body = {"account": account, "action": "ban", "reason_code": "spam"}
    audit_before = api.count(AuditLogRow)
    for method, path in probes:
        r = api.http.request(method, path, json=body if method == "POST" else None)
        assert r.status_code == 401 and r.json()["error"] == "unauthenticated", (path, r.text)
    # A forged token: the admin's subject with a far expiry, under a MAC made with another secret.
    claims = base64.urlsafe_b64encode(json.dumps({"sub": "r:ada", "exp": now_ms() + 10**9}).encode()).rstrip(b"=")
    for forged in (claims.decode() + ".AAAA", claims.decode() + ".", "not-a-token", "a.b.c"):
        r = api.http.get("/reviewers", headers=_bearer(forged))
        assert r.status_code == 401 and r.json()["error"] == "unauthenticated", (forged, r.text)
    # A real token whose body is edited to name the admin: the MAC no longer matches.
    rita = api.token("rita")
    _, mac = rita.split(".")
    r = api.http.get("/reviewers", headers=_bearer(claims.decode() + "." + mac))
    assert r.status_code == 401
    # An expired token: issued by the API's own signer and secret with a 1-second lifetime.
    with api.db.session() as s:
        row = s.get(ReviewerRow, "r:rita")
    short, _ = TokenSigner(load_secret(api.state_dir), 1).issue(row)
    assert api.http.get("/auth/me", headers=_bearer(short)).status_code == 200
    time.sleep(1.2)
    r = api.http.post("/decisions", json=body, headers=_bearer(short))
    assert r.status_code == 401 and r.json()["error"] == "token_expired", r.text
    assert api.count(DecisionRow) == 0
    # Only the logins were audited; the refused calls wrote nothing.
    assert api.count(AuditLogRow) == audit_before + 1


def test_a_reviewer_cannot_take_admin_or_lead_actions(api: Api) -> None:
    account, _ = api.account()
    rita = _bearer(api.token("rita"))
    reviewers_before, audit_before = api.count(ReviewerRow), api.count(AuditLogRow)
    admin_calls = [
        ("POST", "/reviewers", {"username": "mallory", "password": "hunter22hunter", "role": "admin"}),
        ("POST", "/reviewers/lena/disable", None),
        ("DELETE", f"/accounts/{account}", None),
        ("POST", "/retention/apply", {"scores_days": 0, "cases_days": 0, "reports_days": 0, "notices_days": 0}),
        ("GET", "/reviewers", None),
    ]
    for method, path, body in admin_calls:
        r = api.http.request(method, path, json=body, headers=rita)
        assert r.status_code == 403 and r.json()["error"] == "forbidden", (path, r.text)
    lead_calls = [("GET", "/audit", None),
                  ("POST", "/groups/g0000000000000000000/action",
                   {"action": "ban", "reason_code": "spam", "expected_count": 0})]
    for method, path, body in lead_calls:
        r = api.http.request(method, path, json=body, headers=rita)
        assert r.status_code == 403, (path, r.text)
    # A reviewer may ban, but lifting is a lead's: the ban stands.
    r = api.http.post("/decisions", json={"account": account, "action": "ban", "reason_code": "spam"}, headers=rita)
    assert r.status_code == 200, r.text
    r = api.http.post("/decisions", json={"account": account, "action": "lift", "reason_code": "spam"}, headers=rita)
    assert r.status_code == 403, r.text
    with api.db.session() as s:
        assert [d.status for d in s.scalars(select(DecisionRow).where(DecisionRow.account == account))] == ["active"]
        assert s.get(AccountRow, account) is not None
    assert api.count(ReviewerRow) == reviewers_before
    assert api.count(AuditLogRow) == audit_before + 1  # only the ban


def _signed_report(ident: vodozemac.Account, reporter: str, reported: str, ts: int) -> dict[str, object]:
    sig = ident.sign(report_message(reporter, reported, "spam", 0, ts)).to_base64()
    return {"reporter": reporter, "reported": reported, "reason_code": "spam", "messages_named": 0, "ts": ts,
            "signature": sig}


def test_http_reports_need_the_reporters_key(api: Api) -> None:
    reporter, ident = api.account()
    target, _ = api.account()
    other = vodozemac.Account()
    r = api.http.post("/reports", json=_signed_report(other, reporter, target, now_ms()))
    assert r.status_code == 422 and r.json()["error"] == "bad_signature", r.text
    r = api.http.post("/reports", json=_signed_report(ident, reporter, target, now_ms() - 3_600_000))
    assert r.status_code == 422 and r.json()["error"] == "stale_timestamp", r.text
    assert api.count(ReportRow) == 0


def test_http_report_replay_and_flooding_are_refused(api: Api) -> None:
    reporter, ident = api.account()
    target, _ = api.account()
    body = _signed_report(ident, reporter, target, now_ms())
    replays = [api.http.post("/reports", json=body).status_code for _ in range(10)]
    assert replays.count(200) == 1, replays  # one signed report, one report
    fresh = [api.http.post("/reports", json=_signed_report(ident, reporter, target, now_ms() + i)).status_code
             for i in range(40)]
    assert fresh.count(200) <= 20, fresh  # the same budget as the relay's in-band reports
    assert 429 in fresh
