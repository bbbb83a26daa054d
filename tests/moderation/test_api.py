"""The moderation API against a real SQLite database: auth and roles, queues and claims,
decisions, reports, appeals, bulk actions, figures — and bad input refused with nothing written."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update

from moderation.appeals import appeal_message
from moderation.cases import Queue
from moderation.reports import report_message
from sealguard.contracts import now_ms
from sealguard.storage import AuditLogRow, CaseRow, DecisionRow, LabelRow, NoticeRow, ReportRow


def count(world: Any, table: Any, *where: Any) -> int:
    with world.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(table).where(*where)) or 0)


def test_login_roles_and_anonymous(world: Any) -> None:
    assert world.client.post("/auth/login", json={"username": "rita", "password": "wrong-password"}).status_code == 401
    assert world.get("/auth/me", "rita").json()["role"] == "reviewer"
    anon = world.client.get("/cases")
    assert anon.status_code == 401 and anon.json()["error"] == "unauthenticated"
    bad = world.client.get("/cases", headers={"Authorization": "Bearer not.a-token"})
    assert bad.status_code == 401
    # A reviewer cannot perform an admin action, nor a lead-only one.
    denied = world.post("/reviewers", "rita", username="mallory", password="password123", role="admin")
    assert denied.status_code == 403 and denied.json()["error"] == "forbidden"
    assert world.get("/audit", "rita").status_code == 403
    ok = world.post("/reviewers", "ada", username="newbie", password="password123", role="reviewer")
    assert ok.status_code == 200, ok.text
    assert world.post("/reviewers", "ada", username="newbie", password="password123",
                      role="reviewer").json()["error"] == "duplicate"


def test_expired_token_is_refused(world_factory: Any, settings: Any) -> None:
    from moderation.auth import TokenSigner, load_secret
    from sealguard.storage import ReviewerRow

    world = world_factory()
    signer = TokenSigner(load_secret(settings.state_dir), 1)
    with world.db.session() as s:
        row = s.scalars(select(ReviewerRow).where(ReviewerRow.username == "rita")).one()
    token, expires_at = signer.issue(row)
    import time

    time.sleep(max(0.0, (expires_at - now_ms()) / 1000) + 0.05)
    r = world.client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401 and r.json()["error"] == "token_expired"


def test_queue_order_claim_and_ban(world: Any) -> None:
    low, high = world.account(), world.account()
    c_low = world.case(low, priority=0.2)
    c_high = world.case(high, priority=0.9)
    cases = world.get("/cases", "rita", queue="model_review").json()
    assert [c["id"] for c in cases] == [c_high, c_low]

    assert world.post(f"/cases/{c_high}/claim", "rita").status_code == 200
    taken = world.post(f"/cases/{c_high}/claim", "ray")
    assert taken.status_code == 409 and taken.json()["error"] == "claimed_by_other"
    # Ray may not decide Rita's case: nothing is written.
    r = world.post("/decisions", "ray", account=high, action="ban", reason_code="spam", case_id=c_high)
    assert r.status_code == 409
    assert count(world, DecisionRow) == 0 and count(world, AuditLogRow, AuditLogRow.action.like("decision.%")) == 0

    r = world.post("/decisions", "rita", account=high, action="ban", reason_code="spam", case_id=c_high,
                   note="burst of first contacts to strangers")
    assert r.status_code == 200, r.text
    decision_id = r.json()["decision_id"]
    with world.db.session() as s:
        d = s.get(DecisionRow, decision_id)
        assert d is not None and d.status == "active" and d.source == "reviewer" and d.actor == "r:rita"
        assert d.published_at is not None
        case = s.get(CaseRow, c_high)
        assert case is not None and case.status == "closed" and case.decision_id == decision_id
        audit = s.scalars(select(AuditLogRow).where(AuditLogRow.action == "decision.ban")).one()
        assert audit.note == "burst of first contacts to strangers" and audit.reason_code == "spam"
        assert audit.evidence["case_id"] == c_high and audit.evidence["rule_ids"] == ["burst_first_contact"]
        label = s.scalars(select(LabelRow).where(LabelRow.decision_id == decision_id)).one()
        assert label.label == 1 and label.source == "reviewer"
        assert s.scalars(select(NoticeRow).where(NoticeRow.account == high)).one().kind == "banned"
    assert [e.decision_id for e in world.publisher.published] == [decision_id]
    # The note never leaves the audit log.
    assert "burst" not in world.publisher.published[0].model_dump_json()

    # A double decision and a decision on a closed case are refused.
    again = world.post("/decisions", "rita", account=high, action="ban", reason_code="spam")
    assert again.status_code == 409 and again.json()["error"] == "double_decision"
    closed = world.post("/decisions", "rita", account=high, action="warn", reason_code="spam", case_id=c_high)
    assert closed.status_code == 409 and closed.json()["error"] == "case_closed"
    assert count(world, DecisionRow) == 1


def test_stale_claim_expires(world_factory: Any) -> None:
    world = world_factory(claim_ttl_s=60)
    account = world.account()
    case_id = world.case(account)
    assert world.post(f"/cases/{case_id}/claim", "rita").status_code == 200
    with world.db.session() as s, s.begin():
        s.execute(update(CaseRow).where(CaseRow.id == case_id).values(claimed_at=now_ms() - 120_000))
    # The stale claim shows as workable, Rita's decision is refused, and Ray may take it over.
    assert case_id in [c["id"] for c in world.get("/cases", "ray", status="open").json()]
    stale = world.post("/decisions", "rita", account=account, action="warn", reason_code="spam", case_id=case_id)
    assert stale.status_code == 409 and stale.json()["error"] == "stale_claim"
    assert world.post(f"/cases/{case_id}/claim", "ray").json()["claimed_by"] == "r:ray"
    assert world.post("/decisions", "ray", account=account, action="warn", reason_code="spam",
                      case_id=case_id).status_code == 200


def test_bad_input_is_a_clear_4xx(world: Any) -> None:
    unknown = world.post("/decisions", "rita", account="a" + "0" * 20, action="ban", reason_code="spam")
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_account"
    malformed = world.post("/decisions", "rita", account="bob", action="ban", reason_code="spam")
    assert malformed.status_code == 422 and "account" in malformed.text
    account = world.account()
    assert world.post("/decisions", "rita", account=account, action="ban", reason_code="because").status_code == 422
    past = world.post("/decisions", "rita", account=account, action="ban", reason_code="spam", expires_at=1)
    assert past.status_code == 400 and "past" in past.json()["detail"]
    nothing = world.post("/decisions", "lena", account=account, action="lift", reason_code="reviewer_lift")
    assert nothing.status_code == 409 and nothing.json()["error"] == "nothing_to_lift"
    assert world.post("/decisions", "rita", account=account, action="dismiss", reason_code="spam").status_code == 400
    assert world.get("/cases/999999", "rita").status_code == 404
    assert count(world, DecisionRow) == 0


def test_ban_with_expiry_and_lift_needs_a_lead(world: Any) -> None:
    account = world.account()
    r = world.post("/decisions", "rita", account=account, action="ban", reason_code="scam",
                   expires_at=now_ms() + 3_600_000)
    assert r.status_code == 200
    assert world.post("/decisions", "rita", account=account, action="lift",
                      reason_code="reviewer_lift").status_code == 403
    lifted = world.post("/decisions", "lena", account=account, action="lift", reason_code="false_positive")
    assert lifted.status_code == 200
    with world.db.session() as s:
        assert s.get(DecisionRow, r.json()["decision_id"]).status == "lifted"  # type: ignore[union-attr]
        labels = s.scalars(select(LabelRow.label).where(LabelRow.account == account).order_by(LabelRow.id)).all()
    assert labels == [1, 0]


def test_http_report_opens_case_and_reporter_hears_back(world: Any) -> None:
    reporter, spammer = world.account(), world.account()
    ts = now_ms()
    sig = world.identities[reporter].sign(report_message(reporter, spammer, "spam", 3, ts)).to_base64()
    r = world.client.post("/reports", json={"reporter": reporter, "reported": spammer, "reason_code": "spam",
                                            "messages_named": 3, "ts": ts, "signature": sig})
    assert r.status_code == 200, r.text
    forged = world.client.post("/reports", json={"reporter": reporter, "reported": spammer, "reason_code": "scam",
                                                 "messages_named": 3, "ts": ts, "signature": sig})
    assert forged.status_code == 422 and forged.json()["error"] == "bad_signature"
    cases = world.get("/cases", "rita", queue="user_reports").json()
    assert [c["account"] for c in cases] == [spammer]
    case_id = cases[0]["id"]
    page = world.get(f"/accounts/{spammer}", "rita").json()
    assert page["reports"][0]["verified"] is False and page["reports"][0]["messages_named"] == 3
    world.post(f"/cases/{case_id}/claim", "rita")
    d = world.post("/decisions", "rita", account=spammer, action="restrict", reason_code="spam", case_id=case_id)
    assert d.status_code == 200
    with world.db.session() as s:
        notice = s.scalars(select(NoticeRow).where(NoticeRow.account == reporter)).one()
        assert notice.kind == "report_actioned" and notice.decision_id == d.json()["decision_id"]
        report = s.scalars(select(ReportRow)).one()
        assert report.decision_id == d.json()["decision_id"] and report.reporter_notified_at is not None
    assert world.get("/cases", "rita", queue="user_reports").json() == []


def test_dismissal_labels_and_does_not_reopen(world: Any) -> None:
    reporter, account = world.account(), world.account()
    with world.db.session() as s, s.begin():
        s.add(ReportRow(reporter=reporter, reported=account, reason_code="spam", messages_named=1,
                        messages_verified=0, ts=now_ms() - 1000))
    case_id = world.get("/cases", "rita", queue="user_reports").json()[0]["id"]
    world.post(f"/cases/{case_id}/claim", "rita")
    r = world.post("/decisions", "rita", account=account, action="dismiss", reason_code="false_positive",
                   case_id=case_id, note="reports look retaliatory")
    assert r.status_code == 200, r.text
    assert world.get("/cases", "rita", queue="user_reports").json() == []
    with world.db.session() as s:
        assert s.scalars(select(LabelRow.label).where(LabelRow.account == account)).all() == [0]
        assert s.scalars(select(AuditLogRow.note).where(AuditLogRow.action == "case.dismiss")).one() \
            == "reports look retaliatory"


def _ban(world: Any, account: str) -> str:
    r = world.post("/decisions", "rita", account=account, action="ban", reason_code="spam")
    assert r.status_code == 200, r.text
    return str(r.json()["decision_id"])


def _appeal(world: Any, account: str, decision_id: str, ts: int | None = None, sig: str | None = None) -> Any:
    ts = now_ms() if ts is None else ts
    if sig is None:
        sig = world.identities[account].sign(appeal_message(decision_id, ts)).to_base64()
    return world.client.post("/appeals", json={"decision_id": decision_id, "ts": ts, "signature": sig})


def test_appeal_overturned_lifts_the_ban(world: Any) -> None:
    account, other = world.account(), world.account()
    decision_id = _ban(world, account)
    assert _appeal(world, account, decision_id, sig="not base64!").json()["error"] == "bad_signature"
    wrong_key = world.identities[other].sign(appeal_message(decision_id, now_ms())).to_base64()
    assert _appeal(world, account, decision_id, sig=wrong_key).status_code == 422
    stale = _appeal(world, account, decision_id, ts=now_ms() - 3_600_000)
    assert stale.status_code == 422 and stale.json()["error"] == "stale_timestamp"
    assert count(world, AuditLogRow, AuditLogRow.action == "appeal.file") == 0

    filed = _appeal(world, account, decision_id)
    assert filed.status_code == 200, filed.text
    appeal_id = filed.json()["appeal_id"]
    assert _appeal(world, account, decision_id).json()["error"] == "duplicate"
    assert [c["account"] for c in world.get("/cases", "lena", queue="appeals").json()] == [account]
    assert world.get("/appeals", "rita").json()[0]["decision"]["action"] == "ban"

    assert world.post(f"/appeals/{appeal_id}/resolve", "rita", outcome="overturn").status_code == 403
    r = world.post(f"/appeals/{appeal_id}/resolve", "lena", outcome="overturn", note="shared family device")
    assert r.status_code == 200, r.text
    lift_id = r.json()["lift_decision_id"]
    assert world.post(f"/appeals/{appeal_id}/resolve", "lena", outcome="uphold").status_code == 409
    with world.db.session() as s:
        assert s.get(DecisionRow, decision_id).status == "lifted"  # type: ignore[union-attr]
        label = s.scalars(select(LabelRow).where(LabelRow.decision_id == lift_id)).one()
        assert (label.label, label.source) == (0, "appeal")
        kinds = set(s.scalars(select(NoticeRow.kind).where(NoticeRow.account == account)))
        assert {"banned", "appeal_overturned"} <= kinds
    assert world.publisher.published[-1].action.value == "lift"
    assert world.get("/cases", "lena", queue="appeals").json() == []


def test_appeal_upheld_keeps_the_ban(world: Any) -> None:
    account = world.account()
    decision_id = _ban(world, account)
    appeal_id = _appeal(world, account, decision_id).json()["appeal_id"]
    r = world.post(f"/appeals/{appeal_id}/resolve", "lena", outcome="uphold")
    assert r.status_code == 200 and r.json()["lift_decision_id"] is None
    with world.db.session() as s:
        assert s.get(DecisionRow, decision_id).status == "active"  # type: ignore[union-attr]
        assert s.scalars(select(LabelRow.label).where(LabelRow.source == "appeal")).all() == [1]
        assert s.scalars(select(NoticeRow.kind).where(NoticeRow.kind == "appeal_upheld")).one()


def test_cluster_preview_and_bulk_ban(world: Any) -> None:
    bucket = "n00000000beef"
    seeds = [world.account(net_bucket=bucket) for _ in range(4)]
    world.account(net_bucket="n00000000cafe")
    _ban(world, seeds[3])
    preview = world.post("/clusters/preview", "rita", kind="net_bucket", seed=seeds[0], action="ban").json()
    assert preview["size"] == 4 and preview["count"] == 3
    denied = world.post("/clusters/action", "rita", kind="net_bucket", seed=seeds[0], action="ban",
                        reason_code="fake_accounts", expected_count=3)
    assert denied.status_code == 403
    mismatch = world.post("/clusters/action", "lena", kind="net_bucket", seed=seeds[0], action="ban",
                          reason_code="fake_accounts", expected_count=2)
    assert mismatch.status_code == 409 and mismatch.json()["error"] == "preview_mismatch"
    assert count(world, DecisionRow) == 1
    done = world.post("/clusters/action", "lena", kind="net_bucket", seed=seeds[0], action="ban",
                      reason_code="fake_accounts", expected_count=3, note="one farm")
    assert done.status_code == 200 and done.json()["count"] == 3
    assert count(world, DecisionRow, DecisionRow.action == "ban", DecisionRow.status == "active") == 4
    burst = world.post("/clusters/preview", "rita", kind="registration_burst", seed=seeds[0], window_s=60).json()
    assert burst["size"] == 5


def test_group_action(world: Any) -> None:
    from sealguard.storage import GroupMemberRow, GroupRow

    owner, a, b = world.account(), world.account(), world.account()
    group = "g" + "1" * 20
    with world.db.session() as s, s.begin():
        s.add(GroupRow(id=group, created_by=owner, created_at=now_ms()))
        for m in (a, b):
            s.add(GroupMemberRow(group_id=group, account=m, added_by=owner, added_at=now_ms()))
    preview = world.get(f"/groups/{group}/preview", "rita", action="ban").json()
    assert preview["count"] == 3
    r = world.post(f"/groups/{group}/action", "lena", action="ban", reason_code="group_spam", expected_count=3)
    assert r.status_code == 200 and r.json()["count"] == 3
    assert world.get(f"/groups/{'g' + '2' * 20}/preview", "rita").status_code == 404


def test_account_page_and_figures(world: Any) -> None:
    from sealguard.storage import ContactRow, ScoreRow

    account, friend = world.account(), world.account()
    with world.db.session() as s, s.begin():
        s.add(ContactRow(account=account, contact=friend, added_at=now_ms()))
        for i, acc in enumerate((account, friend)):
            s.add(ScoreRow(account=acc, model_version="m1", score=0.9 - 0.5 * i, ts=now_ms(),
                           contributions=[{"feature": "first_contact_sends_1m", "value": 2.0 - i},
                                          {"feature": "replies_ratio", "value": -0.5}]))
    page = world.get(f"/accounts/{account}", "rita").json()
    assert page["explanation"]["top"][0] == {"feature": "first_contact_sends_1m", "value": 2.0}
    feats = {f["feature"]: f for f in page["features"]}
    assert feats["first_contact_sends_1m"]["percentile"] == 0.75  # mid-rank: 1 below, itself half
    assert feats["contacts_added"]["value"] == 1.0
    assert {"source": account, "target": friend, "kind": "contact"} in page["neighbourhood"]["edges"]
    assert any(e["kind"] == "score" for e in page["timeline"])
    _ban(world, account)
    assert world.get(f"/accounts/{account}", "rita").json()["enforcement"][0]["action"] == "ban"

    figures = world.get("/stats", "rita").json()
    assert figures["decisions"]["manual"] == 1 and figures["auto_ban_precision"]["estimate"] is None
    assert set(figures["queue_depth"]) == {q.value for q in Queue}
    assert world.get("/models", "rita").status_code == 200
    assert world.client.get("/health").json()["status"] == "ok"
    metrics = world.client.get("/metrics").text
    assert "sealguard_api_requests_total" in metrics and "sealguard_queue_depth" in metrics


def test_action_from_another_queue_answers_the_reports(world: Any) -> None:
    reporter, account = world.account(), world.account()
    with world.db.session() as s, s.begin():
        s.add(ReportRow(reporter=reporter, reported=account, reason_code="scam", messages_named=2,
                        messages_verified=2, ts=now_ms()))
    assert len(world.get("/cases", "rita", queue="user_reports").json()) == 1
    case_id = world.case(account, priority=0.9)
    world.post(f"/cases/{case_id}/claim", "rita")
    assert world.post("/decisions", "rita", account=account, action="ban", reason_code="scam",
                      case_id=case_id).status_code == 200
    assert world.get("/cases", "rita", queue="user_reports").json() == []
    assert world.get("/stats", "rita").json()["queue_depth"]["user_reports"] == 0


def test_a_ban_closes_the_questions_it_answers(world: Any) -> None:
    account = world.account()
    review = world.case(account, Queue.model_review)
    sample = world.case(account, Queue.auto_ban_sample)
    held = world.case(account, Queue.rule_review)
    world.post(f"/cases/{held}/claim", "ray")
    assert world.post("/clusters/action", "lena", kind="net_bucket", seed=account, action="ban",
                      reason_code="spam", expected_count=1).status_code == 200
    with world.db.session() as s:
        status = {c.id: c.status for c in s.scalars(select(CaseRow))}
    assert status == {review: "closed", sample: "open", held: "claimed"}


def test_a_failed_publish_leaves_the_decision_standing(world: Any) -> None:
    from moderation.decisions import republish_unpublished

    class Down:
        def publish(self, enforcement: Any) -> None:
            raise BufferError("broker unreachable")

    account = world.account()
    world.publisher.publish, real = Down().publish, world.publisher.publish  # type: ignore[method-assign]
    r = world.post("/decisions", "rita", account=account, action="ban", reason_code="spam")
    assert r.status_code == 200
    with world.db.session() as s:
        assert s.get(DecisionRow, r.json()["decision_id"]).published_at is None  # type: ignore[union-attr]
    world.publisher.publish = real  # type: ignore[method-assign]
    assert republish_unpublished(world.db, world.publisher) == 1
    assert [e.decision_id for e in world.publisher.published] == [r.json()["decision_id"]]
