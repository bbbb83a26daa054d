"""Queues and the account page: claim the top case, investigate the account, act with a reason."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from dashboard.api import ApiClient, ApiError

QUEUES = ["model_review", "user_reports", "auto_ban_sample", "rule_review", "appeals"]
REASONS = ["spam", "bulk_messaging", "automated_behaviour", "scam", "harassment", "impersonation",
           "fake_accounts", "group_spam", "rule_hit", "other_policy", "false_positive", "reviewer_lift"]
ACTIONS = [("Warn", "warn"), ("Restrict", "restrict"), ("Ban", "ban"), ("Dismiss", "dismiss"), ("Lift", "lift")]


def when(ms: int | None) -> str:
    if ms is None:
        return "—"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def goto(page: str) -> None:
    st.session_state["goto"] = page
    st.rerun()


def flash() -> None:
    for kind, text in st.session_state.pop("flash", []):
        (st.success if kind == "ok" else st.error)(text)


def say(kind: str, text: str) -> None:
    st.session_state.setdefault("flash", []).append((kind, text))


def open_case(client: ApiClient, case: dict[str, Any]) -> None:
    claimed = client.post(f"/cases/{case['id']}/claim")
    st.session_state.update(case=claimed, account=claimed["account"], account_input=claimed["account"])
    goto("Account")


def queues_page(client: ApiClient) -> None:
    st.header("Review queues")
    flash()
    queue = st.selectbox("Queue", QUEUES, key="queue")
    cases = client.get("/cases", queue=queue, status="open", limit=50)
    st.caption(f"{len(cases)} open case(s) in {queue}, highest priority first.")
    if cases:
        top = cases[0]
        st.markdown(f"**Top case #{top['id']}** · account `{top['account']}` · priority {top['priority']:.2f}"
                    + (f" · score {top['score']:.2f}" if top.get("score") is not None else ""))
        if st.button("Open top case", type="primary"):
            try:
                open_case(client, top)
            except ApiError as exc:
                st.error(f"Could not claim case #{top['id']}: {exc.detail}")
        df = pd.DataFrame([{
            "case": c["id"], "account": c["account"], "priority": c["priority"], "score": c["score"],
            "rules": ", ".join(c["rule_ids"]), "model": c["model_version"],
            "claimed_by": c["claimed_by"] or "", "created": when(c["created_at"]),
        } for c in cases])
        st.dataframe(df, hide_index=True, width="stretch")
        chosen = st.selectbox("Open another case", [c["id"] for c in cases], key="case_pick")
        if st.button("Claim and open"):
            try:
                open_case(client, next(c for c in cases if c["id"] == chosen))
            except ApiError as exc:
                st.error(f"Could not claim case #{chosen}: {exc.detail}")
    mine = [c for c in client.get("/cases", status="claimed", limit=100)
            if c["claimed_by"] == st.session_state.get("reviewer_id")]
    if mine:
        st.subheader("My claimed cases")
        for c in mine:
            if st.button(f"Resume case #{c['id']} ({c['queue']}, {c['account']})", key=f"resume{c['id']}"):
                open_case(client, c)


def timeline_chart(events: list[dict[str, Any]]) -> None:
    if not events:
        st.info("No signals recorded for this account yet.")
        return
    df = pd.DataFrame(events)
    df["time"] = pd.to_datetime(df["ts"], unit="ms")
    scores = df[df["kind"].isin(["score", "shadow_score"])]
    others = df[~df["kind"].isin(["score", "shadow_score"])].copy()
    others["lane"] = others["kind"]
    # One time axis for both charts, so a ban lines up with the scores before it.
    domain = [df["time"].min().isoformat(), df["time"].max().isoformat()]
    x = alt.X("time:T", title=None, scale=alt.Scale(domain=domain))
    layers = []
    if not scores.empty:
        layers.append(alt.Chart(scores).mark_line(point=True).encode(
            x=x, y=alt.Y("value:Q", title="score", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("kind:N", title="series"), tooltip=["time:T", "kind:N", "value:Q", "detail:N"]))
    if layers:
        st.altair_chart(alt.layer(*layers).properties(height=180), width="stretch")
    if not others.empty:
        st.altair_chart(alt.Chart(others).mark_tick(thickness=3, size=18).encode(
            x=x, y=alt.Y("lane:N", title=None), color=alt.Color("kind:N", legend=None),
            tooltip=["time:T", "kind:N", "detail:N"]).properties(height=40 + 22 * others["lane"].nunique()),
            width="stretch")


def features_panel(features: list[dict[str, Any]]) -> None:
    if not features:
        st.info("No features yet.")
        return
    df = pd.DataFrame(features)[["feature", "source", "value", "percentile", "population_median"]]
    st.dataframe(df, hide_index=True, width="stretch", column_config={
        "percentile": st.column_config.ProgressColumn("percentile", min_value=0.0, max_value=1.0, format="%.2f"),
        "value": st.column_config.NumberColumn(format="%.3f"),
    })


def explanation_panel(explanation: dict[str, Any]) -> None:
    if explanation.get("score") is None:
        st.info("Not scored yet.")
        return
    st.markdown(f"Score **{explanation['score']:.3f}** from model `{explanation['model_version']}` "
                f"at {when(explanation['ts'])}")
    top = pd.DataFrame(explanation["top"])
    if not top.empty:
        st.altair_chart(alt.Chart(top).mark_bar().encode(
            x=alt.X("value:Q", title="contribution"), y=alt.Y("feature:N", sort="-x", title=None),
            color=alt.condition("datum.value > 0", alt.value("#c0392b"), alt.value("#2e86c1"))).properties(height=200),
            width="stretch")


def neighbourhood_dot(hood: dict[str, Any]) -> str:
    colours = {"contact": "#7f8c8d", "queued": "#e67e22", "blocked": "#c0392b", "reported": "#8e44ad",
               "member": "#27ae60", "created": "#16a085"}
    lines = ["digraph G {", 'rankdir=LR; size="7,5"; node [fontname="Helvetica", fontsize=10, style=filled];']
    for n in hood["nodes"]:
        shape = "box" if n["kind"] == "group" else "ellipse"
        fill = "#f5b7b1" if n["banned"] else ("#f9e79f" if n["focus"] else "#eaf2f8")
        label = n["id"][:9] + ("…" if len(n["id"]) > 9 else "")
        lines.append(f'"{n["id"]}" [label="{label}", shape={shape}, fillcolor="{fill}"'
                     + (", penwidth=2" if n["focus"] else "") + "];")
    for e in hood["edges"]:
        lines.append(f'"{e["source"]}" -> "{e["target"]}" [label="{e["kind"]}", fontsize=8, '
                     f'color="{colours.get(e["kind"], "#555")}"];')
    lines.append("}")
    return "\n".join(lines)


def action_panel(client: ApiClient, account: str, case: dict[str, Any] | None) -> None:
    st.subheader("Act")
    c1, c2 = st.columns([1, 1])
    reason = c1.selectbox("Reason", REASONS, key="reason")
    hours = c2.number_input("Ban/restrict expiry in hours (0 = none)", min_value=0, max_value=24 * 365, value=0,
                            key="expiry_hours")
    note = st.text_area("Note (audit log only)", key="note", max_chars=2000)
    cols = st.columns(len(ACTIONS))
    for col, (label, action) in zip(cols, ACTIONS, strict=True):
        if col.button(label, key=f"act_{action}", type="primary" if action == "ban" else "secondary"):
            body: dict[str, Any] = {"account": account, "action": action, "reason_code": reason,
                                    "note": note or None}
            if case is not None:
                body["case_id"] = case["id"]
            if hours and action in ("ban", "restrict"):
                body["expires_at"] = int(datetime.now(tz=UTC).timestamp() * 1000) + int(hours) * 3_600_000
            try:
                result = client.post("/decisions", body)
            except ApiError as exc:
                say("err", f"{label} refused: {exc.detail}")
            else:
                done = f"{label} recorded for {account}"
                say("ok", done + (f" — decision {result['decision_id']}" if result.get("decision_id") else ""))
                st.session_state.pop("case", None)
            st.rerun()


def account_page(client: ApiClient) -> None:
    st.header("Account")
    flash()
    st.session_state.setdefault("account_input", st.session_state.get("account", ""))
    account = st.text_input("Account id", key="account_input").strip()
    if not account:
        st.info("Open a case from the queues, or type an account id.")
        return
    st.session_state["account"] = account
    case = st.session_state.get("case")
    if case is not None and case["account"] != account:
        case = None
    data = client.get(f"/accounts/{account}")
    info = data["account"]
    m = st.columns(5)
    m[0].metric("Status", data["status"])
    m[1].metric("Latest score", "—" if data["explanation"]["score"] is None else f"{data['explanation']['score']:.3f}")
    m[2].metric("Reports received", len(data["reports"]))
    m[3].metric("Fanout", data["neighbourhood"]["fanout"])
    m[4].metric("Decisions", len(data["enforcement"]))
    st.caption(f"net bucket `{info['net_bucket']}` · client {info['client_kind']} · registered "
               f"{when(info['registered_at'])}" + (f" · deleted {when(info['deleted_at'])}" if info["deleted_at"] else ""))
    if case is not None:
        st.info(f"Working case #{case['id']} · {case['queue']} · priority {case['priority']:.2f}"
                + (f" · rules {', '.join(case['rule_ids'])}" if case["rule_ids"] else ""))
        if st.button("Release case"):
            client.post(f"/cases/{case['id']}/release")
            st.session_state.pop("case", None)
            st.rerun()
    st.subheader("Signal timeline")
    timeline_chart(data["timeline"])
    left, right = st.columns(2)
    with left:
        st.subheader("Explanation")
        explanation_panel(data["explanation"])
        st.subheader("Features vs population")
        features_panel(data["features"])
    with right:
        st.subheader("Fanout neighbourhood")
        if data["neighbourhood"]["edges"]:
            st.graphviz_chart(neighbourhood_dot(data["neighbourhood"]))
            st.caption("yellow: this account · red: banned · boxes: groups")
            for group in [n["id"] for n in data["neighbourhood"]["nodes"] if n["kind"] == "group"][:5]:
                if st.button(f"Group action on {group}", key=f"group_{group}"):
                    st.session_state.update(group_id=group, goto="Bulk actions")
                    st.session_state.pop("group_preview", None)
                    st.rerun()
        else:
            st.info("No contacts, recipients, blocks, reports or groups recorded.")
        st.subheader("Reports received")
        if data["reports"]:
            st.dataframe(pd.DataFrame([{**r, "ts": when(r["ts"])} for r in data["reports"]])[
                ["ts", "reporter", "reason_code", "messages_named", "messages_verified", "verified"]],
                hide_index=True, width="stretch")
        else:
            st.caption("None.")
    st.subheader("Enforcement history")
    if data["enforcement"]:
        st.dataframe(pd.DataFrame([{
            "created": when(d["created_at"]), "action": d["action"], "reason": d["reason_code"],
            "source": d["source"], "actor": d["actor"], "status": d["status"], "expires": when(d["expires_at"]),
            "applied": ", ".join(a["node"] for a in d["applied"]),
            "appeal": (d["appeal"] or {}).get("status", ""), "decision": d["decision_id"],
        } for d in data["enforcement"]]), hide_index=True, width="stretch")
    else:
        st.caption("No decisions.")
    action_panel(client, account, case)
