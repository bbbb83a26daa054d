"""Typed moderation errors: an error-code enum, each error knowing its HTTP status.

The tree (every error the API answers with, besides FastAPI's own 422 for malformed bodies):

    ModerationError (400 bad_request)            root: anything the caller got wrong
    ├── Unauthenticated (401)                    no token, bad token, expired token, bad login
    ├── Forbidden (403)                          the role may not do this
    ├── NotFound (404)                           unknown account, case, decision, appeal, group, reviewer
    ├── DecisionRejected (409)                   a double decision, lifting what is not there
    ├── Conflict (409)                           claimed by someone else, stale claim, duplicate appeal,
    │                                            a bulk preview that no longer matches
    ├── BadSignature (422)                       malformed or wrong appeal/report signature, stale timestamp
    └── TooManyAttempts (429)                    repeated failed logins for one username, a reporter
                                                 past its report budget

The API turns each into `{"error": code, "detail": message}` with the error's status, so the
console and `sealguard chat` can show the reason without parsing prose.
"""

from __future__ import annotations

import enum


class ErrorCode(str, enum.Enum):
    bad_request = "bad_request"
    unauthenticated = "unauthenticated"
    token_expired = "token_expired"
    forbidden = "forbidden"
    not_found = "not_found"
    unknown_account = "unknown_account"
    double_decision = "double_decision"
    nothing_to_lift = "nothing_to_lift"
    conflict = "conflict"
    claimed_by_other = "claimed_by_other"
    stale_claim = "stale_claim"
    case_closed = "case_closed"
    duplicate = "duplicate"
    preview_mismatch = "preview_mismatch"
    bad_signature = "bad_signature"
    stale_timestamp = "stale_timestamp"
    too_many_attempts = "too_many_attempts"
    replayed = "replayed"
    rate_limited = "rate_limited"


class ModerationError(Exception):
    """Root of moderation errors; `status` is the HTTP status the API answers with."""

    status = 400
    default_code = ErrorCode.bad_request

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code

    def to_json(self) -> dict[str, str]:
        return {"error": self.code.value, "detail": self.message}


class Unauthenticated(ModerationError):
    status = 401
    default_code = ErrorCode.unauthenticated


class Forbidden(ModerationError):
    status = 403
    default_code = ErrorCode.forbidden


class NotFound(ModerationError):
    status = 404
    default_code = ErrorCode.not_found


class DecisionRejected(ModerationError):
    status = 409
    default_code = ErrorCode.double_decision


class Conflict(ModerationError):
    status = 409
    default_code = ErrorCode.conflict


class BadSignature(ModerationError):
    status = 422
    default_code = ErrorCode.bad_signature


class TooManyAttempts(ModerationError):
    status = 429
    default_code = ErrorCode.too_many_attempts
