"""Bulk actions with a preview, the appeals queue, the metrics page and the model page."""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from dashboard.api import ApiClient, ApiError
from dashboard.views_cases import REASONS, flash, say, when


def bulk_page(client: ApiClient) -> None:
    st.header("Group and bulk actions")
    flash()
    st.caption("A preview shows how many accounts an action would touch; the action only runs for that count "
               "(leads only).")
    action = st.selectbox("Action", ["ban", "restrict", "warn", "lift"], key="bulk_action")
    reason = st.selectbox("Reason", REASONS, index=REASONS.index("group_spam"), key="bulk_reason")
    note = st.text_input("Note (audit log only)", key="bulk_note")
    tab_group, tab_cluster = st.tabs(["Spam group", "Cluster"])
    with tab_group:
        group = st.text_input("Group id", key="group_id").strip()
        if st.button("Preview group", key="preview_group") and group:
            try:
                st.session_state["group_preview"] = client.get(f"/groups/{group}/preview", action=action)
            except ApiError as exc:
                st.error(exc.detail)
        preview = st.session_state.get("group_preview")
        if preview and preview["group_id"] == group:
            st.metric("Accounts this would touch", preview["count"], help=f"{preview['members']} members")
            st.dataframe(pd.DataFrame({"account": preview["accounts"]}), hide_index=True)
            if st.button(f"{action.capitalize()} {preview['count']} accounts of this group", key="run_group"):
                try:
                    r = client.post(f"/groups/{group}/action", {"action": action, "reason_code": reason,
                                                                 "expected_count": preview["count"],
                                                                 "note": note or None})
                    say("ok", f"{action} applied to {r['count']} accounts")
                except ApiError as exc:
                    say("err", exc.detail)
                st.session_state.pop("group_preview", None)
                st.rerun()
    with tab_cluster:
        kind = st.selectbox("Cluster", ["net_bucket", "registration_burst", "shared_targets"], key="cluster_kind")
        seed = st.text_input("Seed account", value=st.session_state.get("account", ""), key="cluster_seed").strip()
        c1, c2 = st.columns(2)
        window = c1.number_input("Registration window (s)", 1, 86_400, 60, key="cluster_window")
        shared = c2.number_input("Min shared targets", 1, 1000, 2, key="cluster_shared")
        body = {"kind": kind, "seed": seed, "action": action, "window_s": int(window), "min_shared": int(shared)}
        if st.button("Preview cluster", key="preview_cluster") and seed:
            try:
                st.session_state["cluster_preview"] = (body, client.post("/clusters/preview", body))
            except ApiError as exc:
                st.error(exc.detail)
        saved = st.session_state.get("cluster_preview")
        if saved and saved[0] == body:
            preview = saved[1]
            st.metric("Accounts this would touch", preview["count"], help=f"cluster size {preview['size']}")
            st.dataframe(pd.DataFrame({"account": preview["accounts"]}), hide_index=True)
            if st.button(f"{action.capitalize()} {preview['count']} accounts of this cluster", key="run_cluster"):
                try:
                    r = client.post("/clusters/action", {**body, "reason_code": reason,
                                                         "expected_count": preview["count"], "note": note or None})
                    say("ok", f"{action} applied to {r['count']} accounts")
                except ApiError as exc:
                    say("err", exc.detail)
                st.session_state.pop("cluster_preview", None)
                st.rerun()


def appeals_page(client: ApiClient) -> None:
    st.header("Appeals")
    flash()
    appeals = client.get("/appeals", status="open")
    st.caption(f"{len(appeals)} open appeal(s), oldest first. Overturning lifts the ban (leads only).")
    for a in appeals:
        d = a["decision"] or {}
        with st.container(border=True):
            st.markdown(f"**Appeal #{a['id']}** · account `{a['account']}` · filed {when(a['filed_at'])}")
            st.caption(f"Appealed decision {a['decision_id']}: {d.get('action')} for {d.get('reason_code')} by "
                       f"{d.get('source')} ({d.get('actor')}) at {when(d.get('created_at'))}; evidence "
                       f"{d.get('evidence')}")
            note = st.text_input("Note (audit log only)", key=f"appeal_note_{a['id']}")
            c1, c2, c3 = st.columns([1, 1, 4])
            for col, label, outcome in ((c1, "Uphold", "uphold"), (c2, "Overturn", "overturn")):
                if col.button(label, key=f"{outcome}_{a['id']}"):
                    try:
                        client.post(f"/appeals/{a['id']}/resolve", {"outcome": outcome, "note": note or None})
                        say("ok", f"Appeal #{a['id']}: {outcome} recorded")
                    except ApiError as exc:
                        say("err", f"Appeal #{a['id']}: {exc.detail}")
                    st.rerun()
            if c3.button("Open account", key=f"open_{a['id']}"):
                st.session_state.update(account=a["account"], account_input=a["account"], goto="Account")
                st.session_state.pop("case", None)
                st.rerun()


def _fmt(value: Any, pattern: str = "{:.3f}") -> str:
    return "n/a" if value is None else pattern.format(value)


def metrics_page(client: ApiClient) -> None:
    st.header("Metrics")
    window = st.select_slider("Drift window", options=[900, 3600, 6 * 3600, 86_400], value=3600,
                              format_func=lambda s: f"{s // 60} min" if s < 3600 else f"{s // 3600} h")
    m = client.get("/stats", drift_window_s=window)
    cols = st.columns(len(m["queue_depth"]))
    for col, (queue, n) in zip(cols, m["queue_depth"].items(), strict=True):
        col.metric(f"Queue · {queue}", n)
    c = st.columns(4)
    ttd = m["time_to_decision_s"]
    c[0].metric("Time to decision p50", _fmt(ttd["p50"], "{:.0f} s"), help=f"p90 {_fmt(ttd['p90'], '{:.0f} s')}, "
                f"{ttd['closed_cases']} closed cases")
    c[1].metric("Automatic decisions", m["decisions"]["auto"])
    c[2].metric("Manual decisions", m["decisions"]["manual"])
    p = m["auto_ban_precision"]
    c[3].metric("Auto-ban precision (est.)", _fmt(p["estimate"]), help=f"from {p['judged']} reviewed or appealed "
                "automatic bans")
    drift = m["score_drift"]
    st.subheader("Score distribution drift")
    st.markdown(f"PSI between the last window and the one before: **{_fmt(drift['psi'])}** "
                f"({drift['recent']} vs {drift['previous']} scores; above 0.2 deserves a look)")
    hist = pd.DataFrame({"bin": [f"{i / 10:.1f}" for i in range(10)], "scores": drift["recent_histogram"]})
    st.altair_chart(alt.Chart(hist).mark_bar().encode(x=alt.X("bin:O", title="score"), y="scores:Q")
                    .properties(height=200), width="stretch")
    by_action = m["decisions"]["by_action"]
    if by_action:
        st.subheader("Decisions by source and action")
        st.dataframe(pd.DataFrame([{"source:action": k, "count": v} for k, v in by_action.items()]), hide_index=True)


def _flat(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[f"{prefix}{k}"] = v
    return out


def models_page(client: ApiClient) -> None:
    st.header("Models: champion vs challenger")
    m = client.get("/models")
    c1, c2 = st.columns(2)
    for col, name in ((c1, "champion"), (c2, "challenger")):
        with col:
            st.subheader(name.capitalize())
            card = m[name]
            if card:
                st.metric("Version", str(card.get("version")))
                st.caption(f"trained {when(card.get('trained_at'))} · {card.get('features', '?')} features · "
                           f"{'calibrated' if card.get('calibrated') else 'uncalibrated'}")
            else:
                st.caption(f"No {name} registered.")
    cards = {name: _flat((m[name] or {}).get("metrics") or {}) for name in ("champion", "challenger")}
    keys = sorted(set(cards["champion"]) | set(cards["challenger"]))
    if keys:
        st.subheader("Evaluation metrics")
        st.dataframe(pd.DataFrame([{"metric": k, "champion": cards["champion"].get(k),
                                    "challenger": cards["challenger"].get(k)} for k in keys]).astype(
            {"champion": "string", "challenger": "string"}), hide_index=True, width="stretch")
    st.subheader("Shadow agreement")
    agreement = m["shadow_agreement"]
    if not agreement:
        st.caption("No shadow scoring yet.")
    elif "error" in agreement:
        st.warning(f"Shadow agreement unavailable: {agreement['error']}")
    else:
        shown = [("ban_agreement", "Ban agreement"), ("review_agreement", "Review agreement"),
                 ("spearman", "Spearman"), ("mean_abs_diff", "Mean |Δscore|"), ("pairs", "Score pairs")]
        cols = st.columns(len(shown))
        for col, (key, label) in zip(cols, shown, strict=True):
            value = agreement.get(key)
            col.metric(label, "n/a" if value is None else (f"{value:.3f}" if isinstance(value, float) else value))
        with st.expander("All agreement figures"):
            st.json(agreement)
    if m["scores_by_version"]:
        st.subheader("Scores by model version")
        st.dataframe(pd.DataFrame(m["scores_by_version"]), hide_index=True)
