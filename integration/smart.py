"""SMART Backend Services (SMART App Launch 2.x, "Backend Services"): outbound OAuth 2.0
client credentials with a JWT client assertion, and inbound bearer-token validation.

Outbound, `BackendServicesAuth` (an ``httpx.Auth``, usable by any ``httpx.Client``, e.g. the
FHIR write-back): the assertion is signed RS384 or ES384 with the active key (the first of
``keys``), header ``kid``; claims ``iss`` = ``sub`` = client id, ``aud`` = the token URL, a
unique ``jti``, ``exp`` at most 5 minutes ahead. The access token is reused until shortly
before it expires, and fetched again once when a resource server answers 401. Key rotation:
publish both keys' JWKS (`jwks`), put the new key first, drop the old one later.

Inbound, `BearerValidator` checks a JWT against a JWKS (URL or static) with audience, issuer
and expiry; `require_bearer` is a FastAPI dependency that answers 401 (no/invalid token) or
403 (missing scope), each audited as ``auth.failure`` (no token contents are logged).
"""

# No `from __future__ import annotations`: FastAPI reads the live annotations.

import logging
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import HTTPException, Request
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from inference.errors import EcgBridgeError
from integration.audit import AuditEvent, EventKind, Outcome
from integration.auditing import Auditor

log = logging.getLogger(__name__)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME_S = 300
Alg = Literal["RS384", "ES384"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class SmartSettings(BaseSettings):
    """``ECGBRIDGE_SMART_*`` (outbound) and ``ECGBRIDGE_AUTH_*`` (inbound) knobs."""

    model_config = SettingsConfigDict(env_prefix="ECGBRIDGE_", extra="ignore")

    smart_token_url: str | None = None
    smart_client_id: str | None = None
    smart_scope: str = "system/DiagnosticReport.write system/Observation.write"
    #: ``kid=ALG:path`` comma-separated, active key first, e.g. ``k2=ES384:/keys/k2.pem``.
    smart_keys: str = ""
    #: Inbound bearer tokens: JWKS URL, expected audience and issuer. Unset: no auth.
    auth_jwks_url: str | None = None
    auth_audience: str | None = None
    auth_issuer: str | None = None
    auth_leeway_s: float = Field(default=30.0, ge=0)

    def signing_keys(self) -> list["SigningKey"]:
        from pathlib import Path

        keys = []
        for item in filter(None, (x.strip() for x in self.smart_keys.split(","))):
            kid, _, rest = item.partition("=")
            name, _, path = rest.partition(":")
            alg: Alg
            if name == "RS384":
                alg = "RS384"
            elif name == "ES384":
                alg = "ES384"
            else:
                raise ValueError(f"ECGBRIDGE_SMART_KEYS: {kid}: algorithm must be RS384/ES384")
            keys.append(SigningKey.from_pem(kid, alg, Path(path).read_bytes()))
        return keys


def get_smart_settings() -> SmartSettings:
    return SmartSettings()


class TokenError(EcgBridgeError, PermissionError):
    """The token endpoint refused the client (bad assertion, unknown key, scope) or could
    not be reached. Write-back treats it as transient only when ``transient``."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    alg: Alg
    private_key: PrivateKey

    @classmethod
    def generate(cls, kid: str, alg: Alg) -> "SigningKey":
        key: PrivateKey
        if alg == "RS384":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            key = ec.generate_private_key(ec.SECP384R1())
        return cls(kid, alg, key)

    @classmethod
    def from_pem(cls, kid: str, alg: Alg, pem: bytes) -> "SigningKey":
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ValueError(f"key {kid}: not an RSA or EC private key")
        return cls(kid, alg, key)

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_jwk(self) -> dict[str, Any]:
        algo = jwt.get_algorithm_by_name(self.alg)
        jwk: dict[str, Any] = dict(algo.to_jwk(self.private_key.public_key(), as_dict=True))
        return jwk | {"kid": self.kid, "alg": self.alg, "use": "sig", "key_ops": ["verify"]}


def jwks(keys: Iterable[SigningKey]) -> dict[str, Any]:
    """The public JWKS to register with the EHR (every key still in rotation)."""
    return {"keys": [k.public_jwk() for k in keys]}


class BackendServicesAuth(httpx.Auth):
    """OAuth 2.0 client-credentials with a signed JWT assertion (thread-safe)."""

    def __init__(
        self,
        *,
        token_url: str,
        client_id: str,
        scope: str,
        keys: Sequence[SigningKey],
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
        timeout_s: float = 10.0,
        assertion_lifetime_s: int = MAX_ASSERTION_LIFETIME_S,
        refresh_margin_s: float = 30.0,
    ) -> None:
        if not keys:
            raise ValueError("at least one signing key is required")
        if not 0 < assertion_lifetime_s <= MAX_ASSERTION_LIFETIME_S:
            raise ValueError("the assertion lifetime must be at most 300 s")
        self.token_url = token_url
        self.client_id = client_id
        self.scope = scope
        self._keys = list(keys)
        self._clock = clock
        self._lifetime = assertion_lifetime_s
        self._margin = refresh_margin_s
        self._http = httpx.Client(timeout=timeout_s, transport=transport)
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self.tokens_fetched = 0

    def rotate(self, keys: Sequence[SigningKey]) -> None:
        """Replace the keys (active first); the next token request uses the new one."""
        if not keys:
            raise ValueError("at least one signing key is required")
        with self._lock:
            self._keys = list(keys)

    @property
    def active_kid(self) -> str:
        return self._keys[0].kid

    def client_assertion(self) -> str:
        key = self._keys[0]
        now = int(self._clock())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_url,
            "iat": now,
            "exp": now + self._lifetime,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(
            claims, key.private_key, algorithm=key.alg, headers={"kid": key.kid, "typ": "JWT"}
        )

    def invalidate(self) -> None:
        with self._lock:
            self._token = None

    def access_token(self) -> str:
        with self._lock:
            if self._token is not None and self._clock() < self._expires_at - self._margin:
                return self._token
            form = {
                "grant_type": "client_credentials",
                "scope": self.scope,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": self.client_assertion(),
            }
            try:
                resp = self._http.post(self.token_url, data=form)
            except httpx.HTTPError as exc:
                raise TokenError(
                    f"token endpoint unreachable: {exc.__class__.__name__}", transient=True
                ) from exc
            if resp.status_code != 200:
                raise TokenError(
                    f"token endpoint refused ({resp.status_code}): {_oauth_error(resp)}",
                    transient=resp.status_code >= 500 or resp.status_code == 429,
                )
            body = resp.json()
            token = body.get("access_token")
            if not isinstance(token, str) or str(body.get("token_type", "")).lower() != "bearer":
                raise TokenError("token endpoint gave no bearer access_token")
            self._token = token
            self._expires_at = self._clock() + float(body.get("expires_in") or 300)
            self.tokens_fetched += 1
            log.info("SMART access token fetched (kid %s)", self._keys[0].kid)
            return token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.access_token()}"
        response = yield request
        if response.status_code == 401:
            self.invalidate()
            request.headers["Authorization"] = f"Bearer {self.access_token()}"
            yield request

    def close(self) -> None:
        self._http.close()


def _oauth_error(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    return f"{body.get('error')}: {body.get('error_description', '')}"[:300]


# --- inbound --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Principal:
    """Who called: the token's subject and client, and its scopes."""

    subject: str
    client_id: str
    scopes: frozenset[str]
    token_id: str | None = None


class InvalidTokenError(EcgBridgeError, PermissionError):
    """The bearer token is missing, malformed, badly signed, expired or for another
    audience: HTTP 401 with ``WWW-Authenticate: Bearer error="invalid_token"``."""


def scope_satisfied(required: str, granted: Iterable[str]) -> bool:
    """SMART scopes: ``system/DiagnosticReport.read`` is granted by itself or by
    ``system/*.read``; v2 permission letters (``.rs``) by any superset (``.cruds``)."""
    ctx, _, rest = required.partition("/")
    rtype, _, rperm = rest.partition(".")
    for g in granted:
        if g == required:
            return True
        gctx, _, grest = g.partition("/")
        gtype, _, gperm = grest.partition(".")
        if gctx != ctx or gtype not in (rtype, "*"):
            continue
        if gperm == rperm or gperm == "*" or (rperm and set(rperm) <= set(gperm) - {"*"}):
            return True
    return False


class BearerValidator:
    """Validate JWT access tokens against a JWKS URL (fetched and cached) or a static JWKS."""

    def __init__(
        self,
        *,
        audience: str,
        jwks_url: str | None = None,
        jwks: Mapping[str, Any] | None = None,
        issuer: str | None = None,
        algorithms: Sequence[str] = ("RS256", "RS384", "ES256", "ES384"),
        leeway_s: float = 30.0,
    ) -> None:
        if (jwks_url is None) == (jwks is None):
            raise ValueError("give exactly one of jwks_url and jwks")
        self.audience = audience
        self.issuer = issuer
        self._algorithms = list(algorithms)
        self._leeway = leeway_s
        self._client = jwt.PyJWKClient(jwks_url, cache_keys=True) if jwks_url else None
        self._set = jwt.PyJWKSet.from_dict(dict(jwks)) if jwks is not None else None

    def _key(self, token: str) -> Any:
        if self._client is not None:
            return self._client.get_signing_key_from_jwt(token).key
        assert self._set is not None
        kid = jwt.get_unverified_header(token).get("kid")
        for k in self._set.keys:
            if k.key_id == kid:
                return k.key
        raise InvalidTokenError("unknown signing key")

    def validate(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._key(token),
                algorithms=self._algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub"]},
            )
        except (jwt.PyJWTError, ValueError) as exc:
            raise InvalidTokenError(f"invalid token: {exc.__class__.__name__}") from None
        scope = claims.get("scope") or ""
        scopes = scope.split() if isinstance(scope, str) else [str(s) for s in scope]
        return Principal(
            subject=str(claims["sub"]),
            client_id=str(claims.get("client_id") or claims.get("azp") or claims["sub"]),
            scopes=frozenset(scopes),
            token_id=None if claims.get("jti") is None else str(claims["jti"]),
        )


def require_bearer(
    validator: BearerValidator, *scopes: str, audit: Auditor | None = None
) -> Callable[[Request], Principal]:
    """A FastAPI dependency: the caller's `Principal`, or 401/403 (audited)."""

    def _fail(request: Request, status: int, reason: str, who: str = "anonymous") -> NoReturn:
        if audit is not None:
            audit.append(
                AuditEvent(
                    kind=EventKind.AUTH_FAILURE,
                    actor=who,
                    outcome=Outcome.MINOR_FAILURE,
                    detail={
                        "status": status,
                        "reason": reason[:200],
                        "method": request.method,
                        "path": request.url.path,
                        "client": request.client.host if request.client else None,
                    },
                )
            )
        log.info("auth failure %d on %s: %s", status, request.url.path, reason)
        error = "insufficient_scope" if status == 403 else "invalid_token"
        header = f'Bearer error="{error}"' + (f', scope="{" ".join(scopes)}"' if scopes else "")
        raise HTTPException(status, reason, headers={"WWW-Authenticate": header})

    def dependency(request: Request) -> Principal:
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer ") or not auth[7:].strip():
            _fail(request, 401, "bearer token required")
        try:
            who = validator.validate(auth[7:].strip())
        except InvalidTokenError as exc:
            _fail(request, 401, str(exc))
        missing = [s for s in scopes if not scope_satisfied(s, who.scopes)]
        if missing:
            _fail(request, 403, f"missing scope {' '.join(missing)}", who=f"client:{who.client_id}")
        return who

    return dependency
