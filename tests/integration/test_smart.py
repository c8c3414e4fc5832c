"""SMART Backend Services against a real token endpoint process
(`tests/support/token_server.py`), and inbound bearer-token validation on FastAPI routes."""

# No `from __future__ import annotations`: FastAPI reads the live annotations.

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import httpx
import jwt
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from integration.audit import AuditLog, EventKind, SearchQuery
from integration.cds import make_cds_router
from integration.smart import (
    BackendServicesAuth,
    BearerValidator,
    Principal,
    SigningKey,
    SmartSettings,
    TokenError,
    jwks,
    require_bearer,
    scope_satisfied,
)
from tests.support.token_server import TokenServerProcess

pytestmark = pytest.mark.e2e  # starts the token server process

CLIENT = "ecgbridge"
AUDIENCE = "https://ecgbridge.example/fhir"
SCOPE = "system/DiagnosticReport.write system/Observation.write"
K1 = SigningKey.generate("k1", "RS384")
K2 = SigningKey.generate("k2", "ES384")
K3 = SigningKey.generate("k3", "ES384")  # never registered


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServerProcess]:
    d = tmp_path_factory.mktemp("token")
    clients = {CLIENT: {"jwks": jwks([K1, K2]), "scopes": [*SCOPE.split(), "system/*.read"]}}
    (d / "clients.json").write_text(json.dumps(clients))
    with TokenServerProcess(
        clients=d / "clients.json", audience=AUDIENCE, log_path=d / "server.log"
    ) as proc:
        yield proc


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _resource_server(seen: list[str], unauthorized_first: int = 0) -> httpx.MockTransport:
    state = {"left": unauthorized_first}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization", ""))
        if state["left"] > 0:
            state["left"] -= 1
            return httpx.Response(401)
        return httpx.Response(200, json={"resourceType": "Bundle"})

    return httpx.MockTransport(handler)


def test_assertion_has_kid_unique_jti_and_short_expiry(server: TokenServerProcess) -> None:
    auth = BackendServicesAuth(token_url=server.token_url, client_id=CLIENT, scope=SCOPE, keys=[K1])
    a, b = auth.client_assertion(), auth.client_assertion()
    assert jwt.get_unverified_header(a) == {"alg": "RS384", "kid": "k1", "typ": "JWT"}
    ca = jwt.decode(a, K1.private_key.public_key(), algorithms=["RS384"], audience=server.token_url)
    cb = jwt.decode(b, options={"verify_signature": False})
    assert ca["iss"] == ca["sub"] == CLIENT
    assert 0 < ca["exp"] - ca["iat"] <= 300
    assert ca["jti"] != cb["jti"]
    with pytest.raises(ValueError, match="300"):
        BackendServicesAuth(
            token_url="x", client_id=CLIENT, scope=SCOPE, keys=[K1], assertion_lifetime_s=301
        )


def test_token_is_fetched_once_and_reused_until_expiry(server: TokenServerProcess) -> None:
    clock = Clock()
    clock.now -= 290  # the first token is fetched "290 s ago" (its assertion still valid)
    before = server.stats()["issued"]
    auth = BackendServicesAuth(
        token_url=server.token_url, client_id=CLIENT, scope=SCOPE, keys=[K1], clock=clock
    )
    seen: list[str] = []
    with httpx.Client(auth=auth, transport=_resource_server(seen)) as fhir:
        for _ in range(3):
            assert fhir.get("https://ehr.example/fhir/Patient").status_code == 200
        assert server.stats()["issued"] == before + 1
        assert len(set(seen)) == 1
        assert seen[0].startswith("Bearer ")
        clock.now += 290  # now: within the 30 s refresh margin of the 300 s token
        fhir.get("https://ehr.example/fhir/Patient")
    assert server.stats()["issued"] == before + 2
    assert len(set(seen)) == 2


def test_a_401_from_the_resource_server_fetches_a_new_token_once(
    server: TokenServerProcess,
) -> None:
    auth = BackendServicesAuth(token_url=server.token_url, client_id=CLIENT, scope=SCOPE, keys=[K1])
    seen: list[str] = []
    with httpx.Client(auth=auth, transport=_resource_server(seen, unauthorized_first=1)) as c:
        assert c.get("https://ehr.example/fhir/Patient").status_code == 200
    assert len(seen) == 2
    assert seen[0] != seen[1]
    assert auth.tokens_fetched == 2


def test_key_rotation_uses_the_new_kid_and_unknown_keys_are_refused(
    server: TokenServerProcess,
) -> None:
    auth = BackendServicesAuth(token_url=server.token_url, client_id=CLIENT, scope=SCOPE, keys=[K1])
    auth.access_token()
    auth.rotate([K2, K1])
    auth.invalidate()
    auth.access_token()
    assert server.stats()["kids"][-2:] == ["k1", "k2"]
    assert auth.active_kid == "k2"
    stranger = BackendServicesAuth(
        token_url=server.token_url, client_id=CLIENT, scope=SCOPE, keys=[K3]
    )
    with pytest.raises(TokenError, match="unknown kid k3") as err:
        stranger.access_token()
    assert not err.value.transient
    wrong_scope = BackendServicesAuth(
        token_url=server.token_url, client_id=CLIENT, scope="system/*.write", keys=[K1]
    )
    with pytest.raises(TokenError, match="invalid_scope"):
        wrong_scope.access_token()


def test_unreachable_token_endpoint_is_transient() -> None:
    from tests.support.processes import free_port

    auth = BackendServicesAuth(
        token_url=f"http://127.0.0.1:{free_port()}/token", client_id=CLIENT, scope=SCOPE, keys=[K1]
    )
    with pytest.raises(TokenError) as err:
        auth.access_token()
    assert err.value.transient


def test_keys_from_settings(tmp_path: Path) -> None:
    (tmp_path / "k2.pem").write_bytes(K2.private_pem())
    (tmp_path / "k1.pem").write_bytes(K1.private_pem())
    s = SmartSettings(smart_keys=f"k2=ES384:{tmp_path}/k2.pem, k1=RS384:{tmp_path}/k1.pem")
    keys = s.signing_keys()
    assert [(k.kid, k.alg) for k in keys] == [("k2", "ES384"), ("k1", "RS384")]
    assert keys[0].public_jwk()["x"] == K2.public_jwk()["x"]


# --- inbound ----------------------------------------------------------------------------


def _app(validator: BearerValidator, audit: AuditLog) -> TestClient:
    app = FastAPI()
    caller = require_bearer(validator, "system/DiagnosticReport.read", audit=audit)

    @app.get("/fhir/DiagnosticReport")
    def reports(who: Annotated[Principal, Depends(caller)]) -> dict[str, str]:
        return {"client": who.client_id}

    return TestClient(app)


def _token(server: TokenServerProcess, scope: str) -> str:
    auth = BackendServicesAuth(token_url=server.token_url, client_id=CLIENT, scope=scope, keys=[K1])
    return auth.access_token()


def _failures(audit: AuditLog) -> list[int]:
    events = audit.search(SearchQuery(kinds=(EventKind.AUTH_FAILURE.value,), newest_first=False))
    return [int(e.detail["status"] or 0) for e in events]


def test_inbound_tokens_are_checked_against_the_servers_jwks(server: TokenServerProcess) -> None:
    audit = AuditLog.in_memory()
    validator = BearerValidator(
        jwks_url=f"{server.base_url}/jwks.json", audience=AUDIENCE, issuer=server.base_url
    )
    client = _app(validator, audit)
    good = _token(server, "system/*.read")
    resp = client.get("/fhir/DiagnosticReport", headers={"Authorization": f"Bearer {good}"})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"client": CLIENT}

    resp = client.get("/fhir/DiagnosticReport")
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    bad = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    assert (
        client.get("/fhir/DiagnosticReport", headers={"Authorization": f"Bearer {bad}"}).status_code
        == 401
    )
    write_only = _token(server, "system/Observation.write")
    resp = client.get("/fhir/DiagnosticReport", headers={"Authorization": f"Bearer {write_only}"})
    assert resp.status_code == 403
    assert "insufficient_scope" in resp.headers["www-authenticate"]
    other_aud = BearerValidator(jwks_url=f"{server.base_url}/jwks.json", audience="https://other")
    resp = _app(other_aud, audit).get(
        "/fhir/DiagnosticReport", headers={"Authorization": f"Bearer {good}"}
    )
    assert resp.status_code == 401
    assert _failures(audit) == [401, 401, 403, 401]
    for e in audit.search(SearchQuery(kinds=(EventKind.AUTH_FAILURE.value,))):
        assert good not in json.dumps(dict(e.detail))


def test_expired_and_foreign_tokens_are_401() -> None:
    audit = AuditLog.in_memory()
    key = SigningKey.generate("t1", "ES384")
    validator = BearerValidator(jwks=jwks([key]), audience=AUDIENCE, leeway_s=0)
    client = _app(validator, audit)
    now = int(time.time())

    def make(exp: int, signer: SigningKey = key) -> str:
        claims = {"sub": "c", "aud": AUDIENCE, "exp": exp, "scope": "system/*.read"}
        return jwt.encode(claims, signer.private_key, algorithm="ES384", headers={"kid": "t1"})

    ok = make(now + 60)
    assert (
        client.get("/fhir/DiagnosticReport", headers={"Authorization": f"Bearer {ok}"}).status_code
        == 200
    )
    for token in (make(now - 1), make(now + 60, SigningKey.generate("t1", "ES384"))):
        resp = client.get("/fhir/DiagnosticReport", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 401
    assert _failures(audit) == [401, 401]


def test_cds_services_behind_bearer_auth() -> None:
    audit = AuditLog.in_memory()
    key = SigningKey.generate("t1", "RS384")
    validator = BearerValidator(jwks=jwks([key]), audience=AUDIENCE)
    app = FastAPI()
    app.include_router(
        make_cds_router(
            latest=lambda k: None,
            audit=audit,
            auth=require_bearer(validator, "system/*.read", audit=audit),
        )
    )
    client = TestClient(app)
    assert client.get("/cds-services").status_code == 401
    token = jwt.encode(
        {"sub": "ehr", "aud": AUDIENCE, "exp": int(time.time()) + 60, "scope": "system/*.read"},
        key.private_key,
        algorithm="RS384",
        headers={"kid": "t1"},
    )
    resp = client.get("/cds-services", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200


def test_scope_matching() -> None:
    assert scope_satisfied("system/DiagnosticReport.read", {"system/DiagnosticReport.read"})
    assert scope_satisfied("system/DiagnosticReport.read", {"system/*.read"})
    assert scope_satisfied("system/DiagnosticReport.rs", {"system/DiagnosticReport.cruds"})
    assert not scope_satisfied("system/DiagnosticReport.read", {"system/*.write"})
    assert not scope_satisfied("system/DiagnosticReport.read", {"user/*.read"})
    assert not scope_satisfied("system/DiagnosticReport.read", {"system/Observation.read"})
