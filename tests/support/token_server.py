"""A small OAuth 2.0 token endpoint for SMART Backend Services tests, run as a real process.

``POST /token`` takes ``grant_type=client_credentials`` with a JWT client assertion
(``client_assertion_type`` jwt-bearer), checks it as a SMART authorization server would:
the client (``iss`` = ``sub``) is registered, ``kid`` is one of its keys, the algorithm is
RS384 or ES384, ``aud`` is this token URL, ``exp`` at most 5 minutes ahead, ``jti`` never
seen before, the requested scopes allowed. It answers a JWT access token (RS256, this
server's key, ``aud`` = ``--audience``) valid ``--ttl-s`` seconds. ``GET /jwks.json`` is
the server's public JWKS; ``GET /stats`` counts the tokens issued and the kids used.

Usage: ``python -m tests.support.token_server --port N --clients clients.json
--audience AUD [--ttl-s 300]``; clients.json is ``{client_id: {"jwks": {...}, "scopes":
[...]}}``. It prints ``token server listening on <base URL>`` when ready.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.processes import _Process, free_port, wait_until

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
READY = "token server listening on "


class OAuthError(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


class TokenService:
    def __init__(self, *, base_url: str, clients: dict[str, Any], audience: str, ttl_s: int):
        self.base_url = base_url
        self.token_url = f"{base_url}/token"
        self.clients = clients
        self.audience = audience
        self.ttl_s = ttl_s
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "server-" + uuid.uuid4().hex[:8]
        self.seen_jti: set[str] = set()
        self.issued_kids: list[str] = []
        self.lock = threading.Lock()

    def jwks(self) -> dict[str, Any]:
        jwk = jwt.get_algorithm_by_name("RS256").to_jwk(self.key.public_key(), as_dict=True)
        return {"keys": [dict(jwk) | {"kid": self.kid, "alg": "RS256", "use": "sig"}]}

    def token(self, form: dict[str, str]) -> dict[str, Any]:
        if form.get("grant_type") != "client_credentials":
            raise OAuthError(400, "unsupported_grant_type", "client_credentials only")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise OAuthError(400, "invalid_request", "client_assertion_type must be jwt-bearer")
        assertion = form.get("client_assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise OAuthError(400, "invalid_request", f"malformed assertion: {exc}") from None
        client_id = str(unverified.get("iss", ""))
        client = self.clients.get(client_id)
        if client is None or unverified.get("sub") != client_id:
            raise OAuthError(401, "invalid_client", "unknown client or iss != sub")
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ("RS384", "ES384"):
            raise OAuthError(401, "invalid_client", f"algorithm {alg} not allowed")
        jwk = next((k for k in client["jwks"]["keys"] if k.get("kid") == kid), None)
        if jwk is None:
            raise OAuthError(401, "invalid_client", f"unknown kid {kid}")
        try:
            claims = jwt.decode(
                assertion,
                jwt.PyJWK(jwk, algorithm=alg).key,
                algorithms=[alg],
                audience=self.token_url,
                options={"require": ["exp", "iat", "jti", "iss", "sub", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise OAuthError(401, "invalid_client", f"assertion refused: {exc}") from None
        now = time.time()
        if claims["exp"] - now > 300 + 5:
            raise OAuthError(401, "invalid_client", "exp more than 5 minutes ahead")
        allowed = set(client.get("scopes", []))
        requested = set(form.get("scope", "").split())
        if not requested or not requested <= allowed:
            raise OAuthError(400, "invalid_scope", f"allowed: {' '.join(sorted(allowed))}")
        with self.lock:
            if claims["jti"] in self.seen_jti:
                raise OAuthError(401, "invalid_client", "jti replayed")
            self.seen_jti.add(claims["jti"])
            self.issued_kids.append(str(kid))
        access = jwt.encode(
            {
                "iss": self.base_url,
                "sub": client_id,
                "client_id": client_id,
                "aud": self.audience,
                "scope": " ".join(sorted(requested)),
                "iat": int(now),
                "exp": int(now) + self.ttl_s,
                "jti": uuid.uuid4().hex,
            },
            self.key,
            algorithm="RS256",
            headers={"kid": self.kid},
        )
        return {
            "access_token": access,
            "token_type": "bearer",
            "expires_in": self.ttl_s,
            "scope": " ".join(sorted(requested)),
        }


def make_handler(service: TokenService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/jwks.json":
                self._send(200, service.jwks())
            elif self.path == "/stats":
                with service.lock:
                    kids = list(service.issued_kids)
                self._send(200, {"issued": len(kids), "kids": kids})
            else:
                self._send(404, {"error": "not_found"})

        def do_POST(self) -> None:
            if self.path != "/token":
                self._send(404, {"error": "not_found"})
                return
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
            form = {k: v[0] for k, v in parse_qs(raw).items()}
            try:
                self._send(200, service.token(form))
            except OAuthError as exc:
                self._send(exc.status, {"error": exc.error, "error_description": exc.description})

        def log_message(self, format: str, *args: object) -> None:
            sys.stderr.write("token-server: " + (format % args) + "\n")

    return Handler


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--clients", type=Path, required=True)
    ap.add_argument("--audience", required=True)
    ap.add_argument("--ttl-s", type=int, default=300)
    args = ap.parse_args(argv)
    base = f"http://127.0.0.1:{args.port}"
    service = TokenService(
        base_url=base,
        clients=json.loads(args.clients.read_text()),
        audience=args.audience,
        ttl_s=args.ttl_s,
    )
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(service))
    print(READY + base, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


class TokenServerProcess(_Process):
    """This server as a child process on a free port (a context manager)."""

    def __init__(self, *, clients: Path, audience: str, log_path: Path, ttl_s: int = 300):
        self.port = free_port()
        argv = [sys.executable, "-m", "tests.support.token_server", "--port", str(self.port)]
        argv += ["--clients", str(clients), "--audience", audience, "--ttl-s", str(ttl_s)]
        super().__init__(argv, env=os.environ, log_path=log_path)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/token"

    def stats(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.base_url}/stats", timeout=5).json()
        return body

    def start(self) -> None:
        super().start()

        def ready() -> bool:
            if not self.alive():
                raise RuntimeError("token server exited:\n" + self.log_tail())
            return READY in self.log_path.read_text(errors="replace")

        wait_until(ready, timeout_s=30, what="token server")


if __name__ == "__main__":
    raise SystemExit(main())
