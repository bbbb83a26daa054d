"""The Sealguard review console (Streamlit). Run by `sealguard console`; it reads the API's URL
from SEALGUARD_API_URL and talks to nothing else.

Pages: Queues (claim the top case), Account (investigate and act), Bulk (group and cluster
actions with a preview), Appeals, Metrics, Models. Everything shown is metadata, scores and
explanations; a reviewer's note is sent to the API, which keeps it in the audit log only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import streamlit as st

if str(Path(__file__).resolve().parent.parent) not in sys.path:  # `streamlit run dashboard/app.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dashboard import views_cases, views_ops
from dashboard.api import ApiClient, ApiError

PAGES = {
    "Queues": views_cases.queues_page,
    "Account": views_cases.account_page,
    "Bulk actions": views_ops.bulk_page,
    "Appeals": views_ops.appeals_page,
    "Metrics": views_ops.metrics_page,
    "Models": views_ops.models_page,
}


def api_url() -> str:
    return os.environ.get("SEALGUARD_API_URL", "http://127.0.0.1:8000")


def login_form() -> None:
    st.title("Sealguard review console")
    st.caption("Metadata, scores and explanations only — no message content exists here.")
    with st.form("login"):
        username = st.text_input("Username")
        password = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Log in")
    if submitted:
        client = ApiClient(api_url())
        try:
            me = client.login(username, password)
        except ApiError as exc:
            st.error(f"Login failed: {exc.detail}")
            return
        st.session_state.update(token=me["token"], username=me["username"], role=me["role"],
                                reviewer_id=me["reviewer_id"])
        st.rerun()


def main() -> None:
    st.set_page_config(page_title="Sealguard console", layout="wide")
    if "token" not in st.session_state:
        login_form()
        return
    client = ApiClient(api_url(), st.session_state["token"])
    with st.sidebar:
        st.markdown(f"**{st.session_state['username']}** · {st.session_state['role']}")
        if "goto" in st.session_state:  # a page asked to switch (before the widget exists this run)
            st.session_state["nav"] = st.session_state.pop("goto")
        page = st.radio("Page", list(PAGES), key="nav")
        if st.button("Log out"):
            st.session_state.clear()
            st.rerun()
    try:
        PAGES[page](client)
    except ApiError as exc:
        if exc.status == 401:
            st.session_state.clear()
            st.warning(f"Session ended: {exc.detail}")
            st.button("Log in again")
        else:
            st.error(exc.detail)


main()
