"""Schemathesis against the OpenAPI schema of the real API (uvicorn on a random port, SQLite),
with a token of each role and without one: valid and invalid requests alike must never get a
server error. Prints `server_errors=0 requests=N`."""

from __future__ import annotations

import warnings
from typing import Any

import httpx
import pytest
import requests as requests_lib
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from moderation.auth import Role, do_add_reviewer
from moderation.server import ApiServer
from sealguard.contracts import new_account_id, now_ms
from sealguard.settings import Settings
from sealguard.storage import AccountRow, CaseRow, Database

EXAMPLES_PER_ROLE = 4  # per operation and role: 4 roles x ~28 operations
PASSWORD = "fuzzing password"


class Recorder:
    def publish(self, enforcement: Any) -> None:
        pass


def _seed(db: Database) -> None:
    import vodozemac

    with db.session() as s, s.begin():
        for i in range(5):
            account = new_account_id()
            s.add(AccountRow(id=account, identity_key=vodozemac.Account().ed25519_key.to_base64(), curve_key="k",
                             net_bucket="n0000000000a1", client_kind="sdk", registered_at=now_ms()))
            s.add(CaseRow(account=account, queue="model_review", priority=i / 5, status="open", created_at=now_ms()))
    for name, role in (("fz_reviewer", Role.reviewer), ("fz_lead", Role.lead), ("fz_admin", Role.admin)):
        do_add_reviewer(db, name, PASSWORD, role)


def test_no_server_errors_for_any_role(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import schemathesis
        from schemathesis import GenerationMode

    db = Database(settings.database_url)
    _seed(db)
    requests = 0
    failures: list[str] = []
    with ApiServer(settings, db, Recorder()) as api:
        tokens = {"anonymous": None}
        for name in ("fz_reviewer", "fz_lead", "fz_admin"):
            r = httpx.post(f"{api.url}/auth/login", json={"username": name, "password": PASSWORD})
            tokens[name] = r.json()["token"]
        schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
        session = requests_lib.Session()  # keep-alive: one connection for the whole run
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 20
        def exercise(op: Any, who: str) -> None:
            strategy = st.one_of(op.as_strategy(generation_mode=GenerationMode.POSITIVE),
                                 op.as_strategy(generation_mode=GenerationMode.NEGATIVE))
            token = tokens[who]
            headers = {"Authorization": f"Bearer {token}"} if token else {}

            @hsettings(max_examples=EXAMPLES_PER_ROLE, deadline=None, database=None, derandomize=True,
                       phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def one(case: Any) -> None:
                nonlocal requests
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    response = case.call(base_url=api.url, headers=headers, timeout=30, session=session)
                requests += 1
                if response.status_code >= 500:
                    failures.append(f"{op.method.upper()} {op.path} as {who}: {response.status_code} "
                                    f"{response.text[:200]}")

            one()

        for op in operations:
            for who in tokens:
                exercise(op, who)
    db.dispose()
    line = f"server_errors={len(failures)} requests={requests}"
    with capsys.disabled():
        print(f"\nschemathesis: {line}")
    assert not failures, "\n".join(failures[:10])
    assert requests >= len(operations) * len(tokens)  # every operation, with every role and without one
