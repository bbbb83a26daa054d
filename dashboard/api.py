"""The console's only way to the data: the moderation API over HTTP (so authorization and the
audit log stay in one place). Errors carry the API's code and reason for the reviewer to read."""

from __future__ import annotations

from typing import Any

import httpx


class ApiError(RuntimeError):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{detail} ({code}, HTTP {status})")
        self.status, self.code, self.detail = status, code, detail


class ApiClient:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 15.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            r = httpx.request(method, self.base_url + path, headers=headers, timeout=self.timeout, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(0, "unreachable", f"the moderation API at {self.base_url} is unreachable: {exc}") from exc
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = {}
            detail = body.get("detail", r.text) if isinstance(body, dict) else r.text
            if isinstance(detail, list):  # FastAPI validation errors
                detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
            raise ApiError(r.status_code, str(body.get("error", "invalid") if isinstance(body, dict) else "error"),
                           str(detail))
        return r.json() if r.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self._request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._request("POST", path, json=body or {})

    def login(self, username: str, password: str) -> dict[str, Any]:
        data = self.post("/auth/login", {"username": username, "password": password})
        self.token = data["token"]
        return dict(data)
