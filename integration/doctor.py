"""`ecgbridge doctor`: check every configured dependency and say in plain words what is wrong.

Each check returns a `Check`; none raises. Checks: the inbox database (reachable, schema),
the broker (Redis PING and its eviction policy, or the embedded broker folder), the FHIR
server (``/metadata``), the HL7 v2 result listener (in ``hl7v2`` write-back mode: it accepts
a connection, TLS handshake included; no message is sent), the model weights (SHA-256),
the data and output folders (writable), and the audit/PHI keys (present outside
development). Messages name settings, hosts and files, never passwords or patient data.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from integration.settings import Settings

if TYPE_CHECKING:
    from integration.audit.config import AuditSettings

log = logging.getLogger(__name__)


class Status(StrEnum):
    OK = "ok"
    FAIL = "FAIL"
    #: Not configured: the embedded default is in use, nothing to check.
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    message: str

    @property
    def ok(self) -> bool:
        return self.status is not Status.FAIL

    def line(self) -> str:
        return f"[{self.status.value:>4}] {self.name}: {self.message}"


def _first_line(exc: BaseException) -> str:
    text_ = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text_[0] if text_ else ''}".strip(": ")


def _safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


# -- database -------------------------------------------------------------------------------
def check_database(settings: Settings) -> Check:
    from integration.inbox import inbox_table, make_engine

    url = settings.effective_database_url
    where = "ECGBRIDGE_DATABASE_URL" if settings.database_url else "the embedded SQLite file"
    try:
        make_url(url)
    except ArgumentError:
        return Check(
            "database",
            Status.FAIL,
            f"{where} is not a database URL; expected e.g. postgresql://user:pass@host:5432/db",
        )
    shown = _safe_url(url)
    if url.startswith("sqlite:///"):
        try:  # as `Inbox.from_url` does: the SQLite file's folder is made on first start
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return Check("database", Status.FAIL, f"cannot create the folder of {shown}: {exc}")
    try:
        engine = make_engine(url)
    except (ArgumentError, ImportError, SQLAlchemyError) as exc:
        return Check("database", Status.FAIL, f"cannot use {shown}: {_first_line(exc)}")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            insp = inspect(conn)
            if not insp.has_table(inbox_table.name):
                return Check(
                    "database",
                    Status.OK,
                    f"reachable at {shown}; no inbox table yet (`ecgbridge serve` creates it)",
                )
            have = {c["name"] for c in insp.get_columns(inbox_table.name)}
    except SQLAlchemyError as exc:
        return Check(
            "database",
            Status.FAIL,
            f"cannot connect to the database at {shown} ({where}): {_first_line(exc)}. "
            "Is the server running, the host and port right, and the user allowed in?",
        )
    finally:
        engine.dispose()
    missing = sorted({c.name for c in inbox_table.columns} - have)
    if missing:
        return Check(
            "database",
            Status.FAIL,
            f"table {inbox_table.name} at {shown} lacks columns {', '.join(missing)}: "
            "the schema is older than this version",
        )
    return Check("database", Status.OK, f"reachable at {shown}; inbox schema up to date")


# -- broker ---------------------------------------------------------------------------------
def check_broker(settings: Settings) -> Check:
    if not settings.broker_url:
        return _writable("broker", settings.broker_dir, "the embedded broker folder")
    import redis

    shown = _safe_url(settings.broker_url)
    if not settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
        return Check("broker", Status.FAIL, f"ECGBRIDGE_BROKER_URL {shown} is not a Redis URL")
    client = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        return Check(
            "broker",
            Status.FAIL,
            f"cannot reach Redis at {shown}: {_first_line(exc)}. Is redis-server running?",
        )
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.RedisError:  # CONFIG is often disabled on managed Redis
        return Check("broker", Status.OK, f"Redis at {shown} answers PING")
    finally:
        client.close()
    if policy != "noeviction":
        return Check(
            "broker",
            Status.FAIL,
            f"Redis at {shown} has maxmemory-policy {policy}: it may evict queued ECGs "
            "under memory pressure; set maxmemory-policy noeviction",
        )
    return Check("broker", Status.OK, f"Redis at {shown} answers PING; maxmemory-policy noeviction")


# -- FHIR -----------------------------------------------------------------------------------
def check_fhir(settings: Settings, *, transport: httpx.BaseTransport | None = None) -> Check:
    if not settings.fhir_base_url:
        return Check(
            "fhir",
            Status.SKIP,
            f"ECGBRIDGE_FHIR_BASE_URL not set: reports go to ndjson files in {settings.out_dir}",
        )
    url = settings.fhir_base_url.rstrip("/") + "/metadata"
    try:
        with httpx.Client(timeout=settings.fhir_timeout_s, transport=transport) as client:
            resp = client.get(url, headers={"Accept": "application/fhir+json"})
    except httpx.HTTPError as exc:
        return Check(
            "fhir",
            Status.FAIL,
            f"cannot reach the FHIR server at {url}: {_first_line(exc)}. "
            "Check ECGBRIDGE_FHIR_BASE_URL and that the server is up",
        )
    if resp.status_code != 200:
        return Check("fhir", Status.FAIL, f"the FHIR server answered {resp.status_code} for {url}")
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or body.get("resourceType") != "CapabilityStatement":
        return Check("fhir", Status.FAIL, f"{url} did not return a CapabilityStatement")
    version = str(body.get("fhirVersion", "?"))
    if not version.startswith("4.0"):
        return Check(
            "fhir", Status.FAIL, f"the FHIR server speaks FHIR {version}, ecgbridge writes R4"
        )
    return Check("fhir", Status.OK, f"{url} answers, FHIR {version}")


# -- HL7 v2 result listener -----------------------------------------------------------------
def check_v2_result(settings: Settings) -> Check:
    from integration.writeback import client_tls_context

    where = f"{settings.v2_result_host}:{settings.v2_result_port}"
    try:
        sock = socket.create_connection(
            (str(settings.v2_result_host), settings.v2_result_port),
            timeout=settings.v2_result_timeout_s,
        )
        with sock:
            if settings.v2_result_tls_ca is None:
                return Check("hl7v2 results", Status.OK, f"{where} accepts connections")
            ctx = client_tls_context(
                ca=settings.v2_result_tls_ca,
                cert=settings.v2_result_tls_cert,
                key=settings.v2_result_tls_key,
            )
            with ctx.wrap_socket(sock, server_hostname=settings.v2_result_host):
                return Check("hl7v2 results", Status.OK, f"{where} accepts TLS connections")
    except OSError as exc:
        return Check(
            "hl7v2 results",
            Status.FAIL,
            f"cannot connect to the result listener at {where}: {_first_line(exc)}. "
            "Check ECGBRIDGE_V2_RESULT_HOST / _PORT (and _TLS_* when TLS is on)",
        )


# -- model ----------------------------------------------------------------------------------
def check_model(verify: Callable[[], str] | None = None) -> Check:
    try:
        if verify is None:
            from inference.registry import DEFAULT_WEIGHTS

            verify = DEFAULT_WEIGHTS.verify
        digest = verify()
    except Exception as exc:
        return Check("model", Status.FAIL, f"model weights unusable: {exc}")
    return Check("model", Status.OK, f"weights hash verified (sha256 {digest[:12]}...)")


# -- folders --------------------------------------------------------------------------------
def _writable(name: str, folder: Path, what: str) -> Check:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check(
            name,
            Status.FAIL,
            f"{what} {folder} is not writable by this user (uid {os.getuid()}): "
            f"{exc.strerror or exc}",
        )
    return Check(name, Status.OK, f"{what} {folder} is writable")


def check_folders(settings: Settings) -> list[Check]:
    out = [_writable("data dir", settings.data_dir, "ECGBRIDGE_DATA_DIR")]
    if settings.effective_writeback_mode == "ndjson":
        out.append(_writable("out dir", settings.out_dir, "ECGBRIDGE_OUT_DIR"))
    return out


# -- keys -----------------------------------------------------------------------------------
def check_keys(audit: AuditSettings | None = None) -> Check:
    from integration.audit.config import get_audit_settings, load_phi_keys
    from integration.audit.signing import HeadSigner

    s = audit or get_audit_settings()
    if s.development:
        return Check(
            "keys",
            Status.OK,
            f"ECGBRIDGE_ENVIRONMENT={s.environment}: missing keys are generated under "
            f"{s.data_dir / 'keys'} (set production keys before go-live)",
        )
    if not s.key_file.is_file():
        return Check(
            "keys",
            Status.FAIL,
            f"no audit signing key at {s.key_file}: set ECGBRIDGE_AUDIT_KEY_FILE to an "
            "Ed25519 PEM key (openssl genpkey -algorithm ed25519)",
        )
    try:
        HeadSigner.load(s.key_file)
    except Exception as exc:
        return Check(
            "keys", Status.FAIL, f"the audit key {s.key_file} is not an Ed25519 PEM key: {exc}"
        )
    try:
        load_phi_keys(s)
    except Exception as exc:
        return Check("keys", Status.FAIL, f"PHI keys unusable: {exc}")
    return Check("keys", Status.OK, "audit signing key and PHI keys present")


def run_doctor(
    settings: Settings,
    *,
    audit: AuditSettings | None = None,
    fhir_transport: httpx.BaseTransport | None = None,
    verify_weights: Callable[[], str] | None = None,
) -> list[Check]:
    """Every check, in order. `ecgbridge doctor` prints `Check.line()` for each and exits 1
    when any failed."""
    return [
        check_database(settings),
        check_broker(settings),
        check_fhir(settings, transport=fhir_transport),
        *([check_v2_result(settings)] if settings.effective_writeback_mode == "hl7v2" else []),
        check_model(verify_weights),
        *check_folders(settings),
        check_keys(audit),
    ]
