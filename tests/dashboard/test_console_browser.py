"""The console in a real browser against the real platform: a reviewer bans the top case, the
relay then refuses the banned account's real client, the audit log holds the ban, the account
appeals from its client, a reviewer may not resolve it, a lead overturns it and the client is let
back in with the outcome as a notice. Screenshots of the main pages are taken on the way
(`SEALGUARD_SCREENSHOTS=docs/screenshots` keeps them)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from moderation.appeal_client import submit_appeal
from relay.client import Identity, RelayClient
from relay.client.client import Banned
from relay.testing import next_address
from sealguard.contracts import now_ms
from sealguard.storage import CaseRow, NoticeRow, ScoreRow

pytestmark = pytest.mark.browser
PASSWORD = "console password"  # tests/dashboard/conftest.py gives every reviewer this one

TIMEOUT_MS = 30_000


def run(coro: Any) -> Any:
    """Run a client coroutine on its own thread: Playwright's sync API owns this thread's loop."""
    import concurrent.futures

    import uvloop

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(uvloop.run, coro).result(60)


def open_page(platform: Any) -> Any:
    page = platform.browser.new_page(viewport={"width": 1400, "height": 1700})
    page.set_default_timeout(TIMEOUT_MS)
    return page


def login(page: Any, platform: Any, username: str) -> None:
    page.goto(platform.console_url)
    page.get_by_role("textbox", name="Username").fill(username)
    page.get_by_role("textbox", name="Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_text(f"{username} ·").wait_for()


def nav(page: Any, name: str) -> None:
    page.get_by_test_id("stSidebar").get_by_text(name, exact=True).click()
    page.get_by_role("heading", name={"Queues": "Review queues", "Bulk actions": "Group and bulk actions",
                                      "Models": "Models: champion vs challenger"}.get(name, name)).wait_for()


def shot(page: Any, platform: Any, name: str) -> None:
    page.wait_for_timeout(1200)  # charts and the graph render after the script finishes
    page.screenshot(path=str(platform.shots / f"{name}.png"), full_page=True)


async def _populate(platform: Any) -> tuple[Identity, Identity]:
    """A spammer and the user it spams, as real E2E clients; the user reports two messages."""
    host, port = platform.relay
    spam_id, user_id = Identity.generate(), Identity.generate()
    spammer = RelayClient(host, port, spam_id, bind_address=next_address())
    user = RelayClient(host, port, user_id, bind_address=next_address())
    try:
        for c in (spammer, user):
            await c.connect()
            await c.register()
        await user.upload_prekeys(5)
        ids = [await spammer.send(user.account_id or "", f"offer {i}".encode()) for i in range(2)]
        for _ in ids:
            await asyncio.wait_for(user.inbox.get(), 10)
        await user.report(spammer.account_id or "", ids)
        await user.add_contact(spammer.account_id or "")
    finally:
        for c in (spammer, user):
            await c.close()
    return spam_id, user_id


async def _login_outcome(platform: Any, identity: Identity, wait_for_notice: str | None = None) -> Any:
    host, port = platform.relay
    c = RelayClient(host, port, identity, bind_address=next_address())
    try:
        await c.connect()
        try:
            await c.login()
        except Banned as exc:
            return exc
        if wait_for_notice is None:
            return "ok"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            notice = await asyncio.wait_for(c.notices.get(), max(0.1, deadline - time.monotonic()))
            if notice.kind == wait_for_notice:
                return notice
        return None
    finally:
        await c.close()


def eventually(fn: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{fn} not true within {timeout}s")
        time.sleep(0.3)


def test_ban_refused_by_relay_then_appeal_overturned(platform: Any) -> None:
    spam_identity, user_identity = run(_populate(platform))
    spammer = spam_identity.account_id
    assert spammer is not None
    # What detection writes for it: scores with contributions and a model-review case.
    with platform.db.session() as s, s.begin():
        for k in range(6):  # the champion's scores, and the challenger's in shadow at the same moments
            ts = now_ms() - (6 - k) * 30_000
            s.add(ScoreRow(account=spammer, model_version="lgbm-v1", score=0.55 + 0.07 * k, ts=ts,
                           contributions=[["first_contact_sends_1m", 1.8], ["reply_ratio_1h", 0.6],
                                          ["contacts_added_24h", -0.3]]))
            s.add(ScoreRow(account=spammer, model_version="lgbm-v2", score=0.5 + 0.09 * k, ts=ts, shadow=True))
        s.add(CaseRow(account=spammer, queue="model_review", priority=0.97, score=0.9, model_version="lgbm-v1",
                      rule_ids=["first_contact_burst"], status="open", created_at=now_ms()))

    page = open_page(platform)
    login(page, platform, "rita")
    page.get_by_role("button", name="Open top case").wait_for()
    shot(page, platform, "queues")
    page.get_by_role("button", name="Open top case").click()
    page.get_by_text("Signal timeline").wait_for()
    page.get_by_text(spammer[:9] + "…").first.wait_for()  # the fanout picture is drawn
    shot(page, platform, "account")
    page.get_by_role("textbox", name="Note (audit log only)").fill("first-contact burst, two verified reports")
    page.get_by_role("button", name="Ban", exact=True).click()
    page.get_by_text(f"Ban recorded for {spammer}").wait_for()

    # The relay refuses the banned account's real client, naming the decision.
    refused = eventually(lambda: (r := run(_login_outcome(platform, spam_identity))) != "ok" and r)
    assert isinstance(refused, Banned)
    decision_id = refused.decision_id
    lead = httpx.post(f"{platform.api_url}/auth/login", json={"username": "lena", "password": PASSWORD}).json()
    auth = {"Authorization": f"Bearer {lead['token']}"}
    audit = httpx.get(f"{platform.api_url}/audit", params={"target": spammer}, headers=auth).json()
    ban = next(a for a in audit if a["action"] == "decision.ban")
    assert ban["actor"] == "r:rita" and ban["evidence"]["decision_id"] == decision_id
    assert ban["note"] == "first-contact burst, two verified reports" and ban["evidence"]["reports"] == 1
    with platform.db.session() as s:  # the reporter hears back
        assert s.scalars(select(NoticeRow.kind).where(NoticeRow.account == user_identity.account_id)).all() \
            == ["report_actioned"]

    # The account appeals from its client; a reviewer may not resolve it.
    appeal_id = submit_appeal(platform.api_url, spam_identity, decision_id)
    nav(page, "Appeals")
    page.get_by_text(f"Appeal #{appeal_id}").wait_for()
    page.get_by_role("button", name="Overturn").click()
    page.get_by_text("needs the lead role").wait_for()

    lead_page = open_page(platform)
    login(lead_page, platform, "lena")
    nav(lead_page, "Appeals")
    lead_page.get_by_text(f"Appeal #{appeal_id}").wait_for()
    shot(lead_page, platform, "appeals")
    lead_page.get_by_role("textbox", name="Note (audit log only)").fill("shared device; reports were mistaken")
    lead_page.get_by_role("button", name="Overturn").click()
    lead_page.get_by_text(f"Appeal #{appeal_id}: overturn recorded").wait_for()

    # Let back in, and told the outcome.
    def let_back_in() -> Any:
        outcome = run(_login_outcome(platform, spam_identity, wait_for_notice="appeal_overturned"))
        return None if isinstance(outcome, Banned) else outcome  # still banned: the lift is on its way

    notice = eventually(let_back_in)
    assert notice.kind == "appeal_overturned" and notice.decision_id == decision_id
    for name in ("Metrics", "Models", "Bulk actions"):
        nav(lead_page, name)
        shot(lead_page, platform, name.split()[0].lower())
    page.close()
    lead_page.close()


def test_roles_and_anonymous_are_refused(platform: Any) -> None:
    api = platform.api_url
    assert httpx.get(f"{api}/cases").status_code == 401
    token = httpx.post(f"{api}/auth/login", json={"username": "rita", "password": PASSWORD}).json()["token"]
    denied = httpx.post(f"{api}/reviewers", headers={"Authorization": f"Bearer {token}"},
                        json={"username": "eve", "password": "password123", "role": "admin"})
    assert denied.status_code == 403 and "admin" in denied.json()["detail"]
    # And in the browser: a wrong password gets the reason, not a console.
    page = open_page(platform)
    page.goto(platform.console_url)
    page.get_by_role("textbox", name="Username").fill("rita")
    page.get_by_role("textbox", name="Password").fill("not the password")
    page.get_by_role("button", name="Log in").click()
    page.get_by_text("Login failed: unknown username or wrong password").wait_for()
    page.close()
