"""ED alert for a high-risk triage result: a FHIR R4 Communication (priority ``stat``) to the
configured recipient and a signed webhook to the paging system, with retries, plus the
acknowledgement URL (``GET``/``POST /alerts/{alert_id}/ack``).

Raised as soon as triage is done, before explanations. The alert id derives from the report
reference (itself deterministic per message and model version), so a retried task sends the
same alert id again: the Communication is written with ``PUT`` (update-as-create) and the
webhook carries ``Idempotency-Key: <alert id>`` for the pager to de-duplicate.

Webhook signature (verify with `verify_signature`): headers ``X-Ecgbridge-Timestamp``
(Unix seconds) and ``X-Ecgbridge-Signature: sha256=<hex>``, the HMAC-SHA256 with the shared
secret over ``<timestamp>.<body bytes>``; receivers refuse timestamps older than 5 minutes.
Retries: transport errors, 408, 429 and 5xx, with exponential backoff (capped); other 4xx
are permanent. The ack URL carries ``t``, an HMAC over ``<alert id>|<ecg id>``, so only the
holder of the link can acknowledge.
"""

# No `from __future__ import annotations`: FastAPI reads the live annotations.

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from fhir.resources.R4B.communication import Communication
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from inference.errors import EcgBridgeError
from inference.record import EcgRecord
from inference.result import AnalysisResult
from integration.audit import AuditEvent, EventKind, Outcome
from integration.auditing import Auditor, patient_of
from mappers.fhir_json import resource_json
from mappers.fhir_report import AIAST, MODEL_SYSTEM
from mappers.profiles import ED_ALERT_PROFILE

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
ALERT_SYSTEM = "urn:ecgbridge:alert"
SIGNATURE_HEADER = "X-Ecgbridge-Signature"
TIMESTAMP_HEADER = "X-Ecgbridge-Timestamp"
SIGNATURE_TOLERANCE_S = 300
_COMM_CATEGORY = "http://terminology.hl7.org/CodeSystem/communication-category"


class AlertSettings(BaseSettings):
    """``ECGBRIDGE_ALERT_*``. Alerts are off until a recipient or a webhook is set."""

    model_config = SettingsConfigDict(env_prefix="ECGBRIDGE_ALERT_", extra="ignore")

    #: FHIR reference of the Communication's recipient, e.g. ``PractitionerRole/ed-triage``.
    recipient: str | None = None
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    #: Public base URL of ecgbridge for the acknowledgement link.
    ack_base_url: str = "http://127.0.0.1:8080"
    max_attempts: int = Field(default=5, ge=1)
    backoff_initial_s: float = Field(default=0.2, ge=0)
    backoff_max_s: float = Field(default=5.0, ge=0)
    timeout_s: float = Field(default=2.0, gt=0)

    @property
    def enabled(self) -> bool:
        return bool(self.recipient or self.webhook_url)


def get_alert_settings() -> AlertSettings:
    return AlertSettings()


class AlertDeliveryError(EcgBridgeError, OSError):
    """The webhook or the Communication write failed after every retry. The alert is audited
    as failed (``alert.sent``, serious failure); the analysis itself still completes."""


# --- pure parts -----------------------------------------------------------------------


def alert_identity(report_ref: str) -> str:
    """A deterministic FHIR id for the alert about one report (history suffix ignored)."""
    base = report_ref.split("/_history/")[0]
    return "alert-" + hashlib.sha256(base.encode()).hexdigest()[:40]


def is_high_risk(result: AnalysisResult) -> bool:
    return result.triage is not None and result.triage.positive


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: bytes,
    body: bytes,
    *,
    timestamp: str,
    signature: str,
    now: float,
    tolerance_s: int = SIGNATURE_TOLERANCE_S,
) -> bool:
    """What the paging system does: check the HMAC and refuse stale timestamps (replays)."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs(now - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, ts), signature)


def ack_token(secret: bytes, alert_id: str, ecg_id: str) -> str:
    return hmac.new(secret, f"{alert_id}|{ecg_id}".encode(), hashlib.sha256).hexdigest()


def alert_text(result: AnalysisResult) -> str:
    tri = result.triage
    assert tri is not None
    vessels = ", ".join(f"{t.vessel} ({t.territory})" for t in result.territories if t.positive)
    where = f" Suspected culprit territory: {vessels}." if vessels else ""
    return (
        f"STAT ECG AI alert: acute MI / injury pattern likely (probability "
        f"{tri.probability:.0%}, threshold {tri.threshold:.0%}).{where} Review the ECG now. "
        "AI decision support, not a diagnosis."
    )


def build_communication(
    result: AnalysisResult,
    record: EcgRecord,
    *,
    alert_id: str,
    report_ref: str,
    recipient: str,
    sent: datetime,
    ack_url: str,
) -> Communication:
    """The ED alert as a FHIR R4 Communication (validated with `fhir.resources.R4B`),
    declaring the ``ecgbridge-ed-alert`` profile."""
    data: dict[str, Any] = {
        "resourceType": "Communication",
        "id": alert_id,
        "meta": {"profile": [ED_ALERT_PROFILE], "security": [AIAST]},
        "identifier": [{"system": ALERT_SYSTEM, "value": alert_id}],
        "status": "completed",
        "category": [{"coding": [{"system": _COMM_CATEGORY, "code": "alert"}]}],
        "priority": "stat",
        "about": [{"reference": report_ref.split("/_history/")[0]}],
        "sent": sent.isoformat(),
        "recipient": [{"reference": recipient}],
        "sender": {
            "identifier": {"system": MODEL_SYSTEM, "value": result.model_version},
            "display": f"ecgbridge model {result.model_version}",
        },
        "payload": [
            {"contentString": alert_text(result)},
            {"contentString": f"Acknowledge: {ack_url}"},
        ],
    }
    p = record.patient
    if p is not None and p.reference:
        data["subject"] = {"reference": p.reference}
    elif p is not None and p.value:
        data["subject"] = {"identifier": {"system": p.system, "value": p.value}}
    return Communication.model_validate(data)


# --- the sender -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlertOutcome:
    """What happened to one result's alert. ``raised`` is False for results that are not
    high-risk (nothing was sent). ``elapsed_ms`` runs from the call to the last delivery."""

    raised: bool
    alert_id: str | None = None
    communication_ref: str | None = None
    webhook_status: int | None = None
    webhook_attempts: int = 0
    delivered: bool = False
    error: str | None = None
    elapsed_ms: float = 0.0


class AlertSender:
    """Sends ED alerts. ``transport`` (an httpx transport) is injectable for tests; the
    Communication goes to ``fhir_base_url`` (PUT) when given, with ``fhir_auth`` (e.g.
    `integration.smart.BackendServicesAuth`)."""

    def __init__(
        self,
        settings: AlertSettings,
        *,
        fhir_base_url: str | None = None,
        fhir_auth: httpx.Auth | None = None,
        transport: httpx.BaseTransport | None = None,
        audit: Auditor | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if settings.webhook_url and settings.webhook_secret is None:
            raise ValueError("ECGBRIDGE_ALERT_WEBHOOK_SECRET is required with a webhook URL")
        self.settings = settings
        self._secret = (
            settings.webhook_secret.get_secret_value().encode() if settings.webhook_secret else b""
        )
        self._fhir_base = fhir_base_url.rstrip("/") if fhir_base_url else None
        self._client = httpx.Client(timeout=settings.timeout_s, transport=transport)
        self._fhir_auth = fhir_auth
        self._audit = audit
        self._sleep = sleep
        self._clock = clock

    def close(self) -> None:
        self._client.close()

    def ack_url(self, alert_id: str, ecg_id: str) -> str:
        query = urlencode({"ecg": ecg_id, "t": ack_token(self._secret, alert_id, ecg_id)})
        return f"{self.settings.ack_base_url.rstrip('/')}/alerts/{alert_id}/ack?{query}"

    def send_alert(
        self,
        result: AnalysisResult,
        record: EcgRecord,
        report_ref: str,
        *,
        ecg_id: str | None = None,
    ) -> AlertOutcome:
        """Alert for a high-risk result (no-op otherwise). Never raises for delivery
        failures: they are in the outcome and the audit log."""
        if not is_high_risk(result) or not self.settings.enabled:
            return AlertOutcome(raised=False)
        t0 = time.perf_counter()
        alert_id = alert_identity(report_ref)
        ecg = ecg_id or record.record_id
        now = self._clock()
        comm = build_communication(
            result,
            record,
            alert_id=alert_id,
            report_ref=report_ref,
            recipient=self.settings.recipient or "Group/ed-alerts",
            sent=now,
            ack_url=self.ack_url(alert_id, ecg),
        )
        errors: list[str] = []
        comm_ref = None
        if self._fhir_base:
            try:
                comm_ref = self._put_communication(comm)
            except AlertDeliveryError as exc:
                errors.append(str(exc))
        status, attempts = None, 0
        if self.settings.webhook_url:
            body = self._webhook_body(result, record, comm, ecg_id=ecg, report_ref=report_ref)
            status, attempts, err = self._post_webhook(body, alert_id)
            if err:
                errors.append(err)
        elapsed = (time.perf_counter() - t0) * 1000.0
        outcome = AlertOutcome(
            raised=True,
            alert_id=alert_id,
            communication_ref=comm_ref,
            webhook_status=status,
            webhook_attempts=attempts,
            delivered=not errors,
            error="; ".join(errors) or None,
            elapsed_ms=elapsed,
        )
        self._audit_sent(outcome, result, record, ecg)
        return outcome

    def _webhook_body(
        self,
        result: AnalysisResult,
        record: EcgRecord,
        comm: Communication,
        *,
        ecg_id: str,
        report_ref: str,
    ) -> bytes:
        tri = result.triage
        assert tri is not None
        payload = {
            "alertId": comm.id,
            "priority": "stat",
            "ecgId": ecg_id,
            "report": report_ref,
            "patient": None if record.patient is None else record.patient.reference,
            "summary": alert_text(result),
            "triage": {"probability": tri.probability, "threshold": tri.threshold},
            "territories": [t.vessel for t in result.territories if t.positive],
            "modelVersion": result.model_version,
            "ackUrl": self.ack_url(str(comm.id), ecg_id),
            "communication": resource_json(comm),
        }
        return json.dumps(payload, separators=(",", ":")).encode()

    def _post_webhook(self, body: bytes, alert_id: str) -> tuple[int | None, int, str | None]:
        s = self.settings
        assert s.webhook_url is not None
        status: int | None = None
        error = ""
        for attempt in range(1, s.max_attempts + 1):
            ts = int(self._clock().timestamp())
            headers = {
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: str(ts),
                SIGNATURE_HEADER: sign(self._secret, body, ts),
                "Idempotency-Key": alert_id,
            }
            try:
                resp = self._client.post(s.webhook_url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                status, error = None, f"webhook: {exc.__class__.__name__}"
            else:
                status = resp.status_code
                if status < 300:
                    return status, attempt, None
                error = f"webhook: HTTP {status}"
                if status < 500 and status not in (408, 429):
                    break  # permanent
            if attempt < s.max_attempts:
                delay = min(s.backoff_max_s, s.backoff_initial_s * 2 ** (attempt - 1))
                log.warning("alert %s %s; retry %d in %.2f s", alert_id, error, attempt, delay)
                self._sleep(delay)
        log.error("alert %s not delivered: %s after %d attempts", alert_id, error, attempt)
        return status, attempt, error

    def _put_communication(self, comm: Communication) -> str:
        url = f"{self._fhir_base}/Communication/{comm.id}"
        try:
            resp = self._client.put(
                url,
                content=json.dumps(resource_json(comm)),
                headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON},
                auth=self._fhir_auth if self._fhir_auth is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError as exc:
            raise AlertDeliveryError(f"Communication: {exc.__class__.__name__}") from exc
        if resp.status_code >= 300:
            raise AlertDeliveryError(f"Communication: HTTP {resp.status_code}")
        version = (resp.json().get("meta") or {}).get("versionId")
        return f"Communication/{comm.id}" + (f"/_history/{version}" if version else "")

    def _audit_sent(
        self, outcome: AlertOutcome, result: AnalysisResult, record: EcgRecord, ecg_id: str
    ) -> None:
        if self._audit is None:
            return
        self._audit.append(
            AuditEvent(
                kind=EventKind.ALERT_SENT,
                actor="alerts",
                outcome=Outcome.SUCCESS if outcome.delivered else Outcome.SERIOUS_FAILURE,
                patient=patient_of(record),
                ecg_id=ecg_id,
                message_id=record.identifier("msh10"),
                resource=outcome.communication_ref or f"Communication/{outcome.alert_id}",
                model_version=result.model_version,
                finding="triage-positive",
                detail={
                    "alert_id": outcome.alert_id,
                    "recipient": self.settings.recipient,
                    "webhook_status": outcome.webhook_status,
                    "webhook_attempts": outcome.webhook_attempts,
                    "elapsed_ms": round(outcome.elapsed_ms, 2),
                    "error": outcome.error,
                },
            )
        )


# --- acknowledgement ------------------------------------------------------------------


def make_alert_ack_router(audit: Auditor, *, secret: bytes) -> APIRouter:
    """``GET`` or ``POST /alerts/{alert_id}/ack?ecg=...&t=...`` (``by`` optional: who
    acknowledged, e.g. the pager user). A valid link answers 200 and audits
    ``alert.acknowledged``; a wrong or missing ``t`` answers 403 and audits
    ``auth.failure``. GET is allowed because pagers open links; it is idempotent in effect
    (each acknowledgement is recorded, the alert stays acknowledged)."""
    router = APIRouter(prefix="/alerts")

    async def acknowledge(alert_id: str, request: Request) -> Response:
        q = request.query_params
        ecg_id, token, by = q.get("ecg", ""), q.get("t", ""), q.get("by", "")
        if request.method == "POST" and not by:
            form = await _maybe_json(request)
            by = str(form.get("by") or "")
        good = ecg_id and hmac.compare_digest(token, ack_token(secret, alert_id, ecg_id))
        if not good:
            audit.append(
                AuditEvent(
                    kind=EventKind.AUTH_FAILURE,
                    actor="alerts:ack",
                    outcome=Outcome.MINOR_FAILURE,
                    resource=f"Communication/{alert_id}",
                    detail={"reason": "bad acknowledgement token", "path": request.url.path},
                )
            )
            return JSONResponse({"error": "invalid acknowledgement link"}, status_code=403)
        audit.append(
            AuditEvent(
                kind=EventKind.ALERT_ACKNOWLEDGED,
                actor=f"pager:{by[:100]}" if by else "pager",
                ecg_id=ecg_id,
                resource=f"Communication/{alert_id}",
                detail={"alert_id": alert_id, "method": request.method},
            )
        )
        return JSONResponse({"alertId": alert_id, "acknowledged": True})

    router.add_api_route("/{alert_id}/ack", acknowledge, methods=["GET", "POST"])
    return router


async def _maybe_json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
