"""Moderation: cases, decisions, appeals, reports, the audit log, and the FastAPI app.

Write paths follow `check_*` (validate, authorize) → `do_*` (write, then publish); enforcement
decisions have exactly one: `moderation.decisions.do_decide`. Errors: `moderation.errors`.
"""
