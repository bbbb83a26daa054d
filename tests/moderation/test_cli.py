"""`sealguard api`, `sealguard console`, `sealguard reviewer add`, `sealguard account delete` as an
operator runs them: real processes, the readiness line on stdout, clean exit on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import vodozemac

from sealguard.contracts import new_account_id, now_ms
from sealguard.settings import Settings
from sealguard.storage import AccountRow, Database


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    return {**os.environ, "SEALGUARD_STATE_DIR": str(settings.state_dir), "SEALGUARD_DB_URL": settings.database_url,
            "SEALGUARD_KAFKA": settings.kafka or "", "SEALGUARD_ENFORCEMENT_TOPIC": settings.enforcement_topic,
            **extra}


def sealguard(settings: Settings, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sealguard", *args], env=env_for(settings, **extra),
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)


def start(settings: Settings, *args: str, **extra: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "sealguard", *args], env=env_for(settings, **extra),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    return proc, line


def stop(proc: subprocess.Popen[Any]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(20)


def test_api_console_and_admin_commands(topics: Settings, tmp_path: Path) -> None:
    settings = topics
    added = sealguard(settings, "reviewer", "add", "olga", "--role", "lead", "--password", "olga password")
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == "reviewer: id=r:olga username=olga role=lead"

    api, line = start(settings, "api")
    try:
        assert line.startswith("api: listening=http://127.0.0.1:"), line
        url = line.split("=", 1)[1]
        assert httpx.get(f"{url}/health").json() == {"status": "ok", "publisher": True}
        token = httpx.post(f"{url}/auth/login", json={"username": "olga", "password": "olga password"}).json()
        assert token["role"] == "lead"

        console, cline = start(settings, "console", "--api-url", url)
        try:
            assert cline.startswith("console: listening=http://127.0.0.1:"), cline
            assert httpx.get(cline.split("=", 1)[1], timeout=20).status_code == 200
        finally:
            assert stop(console) == 0
    finally:
        assert stop(api) == 0

    db = Database(settings.database_url)
    account = new_account_id()
    with db.session() as s, s.begin():
        s.add(AccountRow(id=account, identity_key=vodozemac.Account().ed25519_key.to_base64(), curve_key="c",
                         net_bucket="n0000000000aa", client_kind="cli", registered_at=now_ms()))
    db.dispose()
    deleted = sealguard(settings, "account", "delete", account)
    assert deleted.returncode == 0 and deleted.stdout.startswith(f"account: deleted={account}")
    assert sealguard(settings, "console", SEALGUARD_API_URL="").returncode == 2
