"""The client side of an appeal: sign the canonical message with the account's identity key and
submit it. `sealguard chat /appeal` calls `submit_appeal`.

`identity` is anything with `sign(bytes)` returning a base64 Ed25519 signature (or a vodozemac
signature object): the relay SDK's `Identity`, or a bare `vodozemac.Account`.
"""

from __future__ import annotations

from typing import Any, Protocol

import httpx

from moderation.appeals import appeal_message
from moderation.errors import ErrorCode, ModerationError
from moderation.reports import report_message
from sealguard.contracts import now_ms


class Signer(Protocol):
    def sign(self, message: bytes) -> Any: ...


class AppealClientError(ModerationError):
    """The API refused the appeal; `code` and `message` are the API's reason."""


def _signature(identity: Signer, message: bytes) -> str:
    sig = identity.sign(message)
    return sig if isinstance(sig, str) else sig.to_base64()


def _post(api_url: str, path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    try:
        response = httpx.post(api_url.rstrip("/") + path, json=body, timeout=timeout)
    except httpx.HTTPError as exc:
        raise AppealClientError(f"the moderation API at {api_url} is unreachable: {exc}") from exc
    data = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if response.status_code >= 400:
        err = AppealClientError(str(data.get("detail") or response.text))
        err.status = response.status_code
        code = data.get("error")
        if isinstance(code, str) and code in ErrorCode._value2member_map_:
            err.code = ErrorCode(code)
        raise err
    return dict(data)


def submit_appeal(api_url: str, identity: Signer, decision_id: str, *, timeout: float = 10.0) -> int:
    """Appeal `decision_id` as the account `identity` belongs to; returns the appeal id."""
    ts = now_ms()
    body = {"decision_id": decision_id, "ts": ts, "signature": _signature(identity, appeal_message(decision_id, ts))}
    return int(_post(api_url, "/appeals", body, timeout)["appeal_id"])


def submit_report(api_url: str, identity: Signer, reporter: str, reported: str, reason_code: str,
                  messages_named: int = 0, *, timeout: float = 10.0) -> int:
    """File a report over HTTP (unverified: the relay's in-band report is the verified path)."""
    ts = now_ms()
    message = report_message(reporter, reported, reason_code, messages_named, ts)
    body = {"reporter": reporter, "reported": reported, "reason_code": reason_code,
            "messages_named": messages_named, "ts": ts, "signature": _signature(identity, message)}
    return int(_post(api_url, "/reports", body, timeout)["report_id"])
