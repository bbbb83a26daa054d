"""Report intake over HTTP. The relay writes the reports it receives in-band (and can verify the
messages named against its commitments); a report sent here is signed by the reporter's identity
key but names no verifiable message, so it counts as unverified (`messages_verified = 0`).

Either way the report lands in the `reports` table, from which `cases.sync_report_cases` opens
the `user_reports` case, and `decisions.notify_reporters` tells the reporter when it led to action.
"""

from __future__ import annotations

from dataclasses import dataclass

from moderation.appeals import APPEAL_WINDOW_S, verify_identity
from moderation.errors import BadSignature, ErrorCode, ModerationError, NotFound
from sealguard.contracts import ReasonCode, now_ms
from sealguard.storage import AccountRow, AuditLogRow, Database, ReportRow

REPORTABLE = {ReasonCode.spam, ReasonCode.bulk_messaging, ReasonCode.automated_behaviour, ReasonCode.scam,
              ReasonCode.harassment, ReasonCode.impersonation, ReasonCode.fake_accounts, ReasonCode.group_spam,
              ReasonCode.other_policy}


def report_message(reporter: str, reported: str, reason_code: str, messages_named: int, ts: int) -> bytes:
    """The exact bytes a reporter signs to file a report over HTTP."""
    return f"sealguard-report:v1:{reporter}:{reported}:{reason_code}:{messages_named}:{ts}".encode()


@dataclass(frozen=True)
class ReportFiling:
    reporter: str
    reported: str
    reason_code: ReasonCode
    messages_named: int
    ts: int
    signature: str


def do_file_report(db: Database, filing: ReportFiling) -> ReportRow:
    if filing.reason_code not in REPORTABLE:
        raise ModerationError(f"{filing.reason_code.value} is not a reason a user can report for")
    if filing.reporter == filing.reported:
        raise ModerationError("an account cannot report itself")
    if abs(now_ms() - filing.ts) > APPEAL_WINDOW_S * 1000:
        raise BadSignature(f"the signed timestamp is more than {APPEAL_WINDOW_S}s from now",
                           ErrorCode.stale_timestamp)
    now = now_ms()
    with db.session() as s, s.begin():
        reporter = s.get(AccountRow, filing.reporter)
        if reporter is None or reporter.deleted_at is not None:
            raise NotFound(f"unknown reporter {filing.reporter}", ErrorCode.unknown_account)
        reported = s.get(AccountRow, filing.reported)
        if reported is None or reported.deleted_at is not None:
            raise NotFound(f"unknown account {filing.reported}", ErrorCode.unknown_account)
        verify_identity(reporter.identity_key, report_message(filing.reporter, filing.reported,
                                                              filing.reason_code.value, filing.messages_named,
                                                              filing.ts), filing.signature)
        row = ReportRow(reporter=filing.reporter, reported=filing.reported, reason_code=filing.reason_code.value,
                        messages_named=filing.messages_named, messages_verified=0, ts=now)
        s.add(row)
        s.flush()
        s.add(AuditLogRow(ts=now, actor=filing.reporter, action="report.file", target=filing.reported,
                          reason_code=filing.reason_code.value,
                          evidence={"report_id": row.id, "messages_named": filing.messages_named, "via": "http"}))
    return row
