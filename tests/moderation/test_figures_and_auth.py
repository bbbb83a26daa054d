"""Tokens, default reviewers, and the figures: percentiles, PSI, auto-ban precision estimated from
a sample review and an appeal (set up through the real write paths)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from moderation.appeals import appeal_message
from moderation.auth import TokenSigner, Unauthenticated, do_login
from moderation.bootstrap import ensure_default_reviewers
from moderation.cases import Queue
from moderation.decisions import DecisionRequest, do_decide
from moderation.investigation import percentile
from moderation.stats import auto_ban_precision, psi
from sealguard.contracts import Action, DecisionSource, ReasonCode, now_ms
from sealguard.storage import ReviewerRow


def test_tampered_token_is_refused() -> None:
    signer = TokenSigner(b"k" * 32, 60)
    row = ReviewerRow(id="r:rita", username="rita", password_hash="", role="reviewer", created_at=0)
    token, _ = signer.issue(row)
    assert signer.subject(token) == "r:rita"
    body, mac = token.split(".")
    forged = body.replace(body[2], "A" if body[2] != "A" else "B", 1) + "." + mac
    with pytest.raises(Unauthenticated):
        signer.subject(forged)
    with pytest.raises(Unauthenticated):
        TokenSigner(b"x" * 32, 60).subject(token)


def test_repeated_failed_logins_are_throttled(world: Any) -> None:
    for _ in range(10):
        assert world.client.post("/auth/login", json={"username": "ray", "password": "guess-guess"}).status_code == 401
    r = world.client.post("/auth/login", json={"username": "ray", "password": "correct horse battery"})
    assert r.status_code == 429 and r.json()["error"] == "too_many_attempts"
    assert world.client.post("/auth/login", json={"username": "rita",
                                                  "password": "correct horse battery"}).status_code == 200


def test_default_reviewers_log_in_and_are_stable(world: Any, settings: Any) -> None:
    first = ensure_default_reviewers(world.db, settings.state_dir)
    assert [(u, r) for u, _p, r in first] == [("reviewer", "reviewer"), ("lead", "lead"), ("admin", "admin")]
    assert ensure_default_reviewers(world.db, settings.state_dir) == first
    signer = TokenSigner(b"k" * 32, 60)
    for username, password, role in first:
        assert do_login(world.db, signer, username, password)[2].role.value == role


def test_percentile_and_psi() -> None:
    assert percentile([1.0, 2.0, 3.0], 3.0) == pytest.approx(5 / 6, abs=1e-4)
    assert percentile([], 0.0, total=10) == 0.5  # everyone at zero
    assert percentile([5.0], 5.0, total=4) == pytest.approx(7 / 8, abs=1e-4)
    assert math.isnan(percentile([], 1.0))
    same = [i / 100 for i in range(100)]
    assert psi(same, same) == 0.0
    assert psi(same, [0.95] * 100) > 1.0
    assert math.isnan(psi([], same))


def _auto_ban(world: Any, account: str) -> str:
    req = DecisionRequest(account=account, action=Action.ban, reason_code=ReasonCode.rule_hit,
                          source=DecisionSource.auto, actor="rule.first_contact_burst", evidence={"score": 0.99})
    return do_decide(world.db, world.publisher, req).id


def test_auto_ban_precision_from_sample_review_and_appeal(world: Any) -> None:
    right, wrong = world.account(), world.account()
    assert math.isnan(auto_ban_precision(world.db)[0])
    _auto_ban(world, right)
    wrong_decision = _auto_ban(world, wrong)
    # The sample review confirms one ban...
    case_id = world.case(right, queue=Queue.auto_ban_sample)
    world.post(f"/cases/{case_id}/claim", "rita")
    assert world.post("/decisions", "rita", account=right, action="dismiss", reason_code="rule_hit",
                      case_id=case_id).status_code == 200
    assert auto_ban_precision(world.db) == (1.0, 1)
    # ...and an appeal overturns the other.
    ts = now_ms()
    sig = world.identities[wrong].sign(appeal_message(wrong_decision, ts)).to_base64()
    appeal = world.client.post("/appeals", json={"decision_id": wrong_decision, "ts": ts, "signature": sig}).json()
    world.post(f"/appeals/{appeal['appeal_id']}/resolve", "lena", outcome="overturn")
    assert auto_ban_precision(world.db) == (0.5, 2)
    stats = world.get("/stats", "rita").json()
    assert stats["auto_ban_precision"] == {"estimate": 0.5, "judged": 2}
    assert stats["decisions"]["auto"] == 2
