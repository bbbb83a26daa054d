"""Report intake over HTTP. The relay writes the reports it receives in-band (and can verify the
messages named against its commitments); a report sent here is signed by the reporter's identity
key but names no verifiable message, so it counts as unverified (`messages_verified = 0`).

Either way the report lands in the `reports` table, from which `cases.sync_report_cases` opens
the `user_reports` case, and `decisions.notify_reporters` tells the reporter when it led to action.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

from moderation.appeals import APPEAL_WINDOW_S, verify_identity
from moderation.errors import BadSignature, Conflict, ErrorCode, ModerationError, NotFound, TooManyAttempts
from relay.server.limits import RateLimiter
from sealguard.contracts import Limit, ReasonCode, now_ms
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


class ReportGuard:
    """One API process's defence against report replay and flooding over HTTP.

    A signed report is accepted once (its signature is remembered for the signing window, after
    which the timestamp check refuses it anyway), and every reporter spends from the same budget
    as in-band reports — the relay's own `report` row of its limits table — so HTTP is no way
    around it. In memory, like the relay's buckets: a restart refills them.
    """

    def __init__(self) -> None:
        self._limiter = RateLimiter()
        self._seen: dict[str, int] = {}  # signature digest -> when it may be forgotten (ms)
        self._lock = threading.Lock()

    def admit(self, filing: ReportFiling) -> None:
        """Raise Conflict for a replayed report, TooManyAttempts past the reporter's budget."""
        digest = hashlib.sha256(filing.signature.encode()).hexdigest()
        now = now_ms()
        with self._lock:
            if len(self._seen) > 4096:
                self._seen = {k: until for k, until in self._seen.items() if until > now}
            if digest in self._seen:
                raise Conflict("this signed report was already filed", ErrorCode.replayed)
            if not self._limiter.take(Limit.report, filing.reporter):
                raise TooManyAttempts(f"{filing.reporter} filed too many reports; try again later",
                                      ErrorCode.rate_limited)
            self._seen[digest] = now + 2 * APPEAL_WINDOW_S * 1000


def do_file_report(db: Database, filing: ReportFiling, guard: ReportGuard | None = None) -> ReportRow:
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
        if guard is not None:
            guard.admit(filing)  # only a correctly signed report spends the reporter's budget
        row = ReportRow(reporter=filing.reporter, reported=filing.reported, reason_code=filing.reason_code.value,
                        messages_named=filing.messages_named, messages_verified=0, ts=now)
        s.add(row)
        s.flush()
        s.add(AuditLogRow(ts=now, actor=filing.reporter, action="report.file", target=filing.reported,
                          reason_code=filing.reason_code.value,
                          evidence={"report_id": row.id, "messages_named": filing.messages_named, "via": "http"}))
    return row
