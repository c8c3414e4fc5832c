"""HTTP API (FastAPI): FHIR R4 ECG intake, status polling, health.

``POST /fhir/Observation`` and ``POST /fhir`` (a Bundle) answer 202 with a ``Location`` to
poll once the ECG is committed to the inbox; invalid resources get a 422 OperationOutcome
whose ``expression`` names the offending element.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from integration.alerts import get_alert_settings
from integration.audit import AuditLog
from integration.cds import LatestAnalysis
from integration.errors import DuplicateConflictError, InboxError
from integration.inbox import Inbox, InboxItem
from integration.ingest import FhirAccepted, IngestService
from integration.metrics import Metrics, metrics_asgi_app
from integration.report_store import ReportStore
from integration.subscriptions import SubscriptionReceiver
from mappers.errors import MappingError
from mappers.fhir_capability import capability_statement
from mappers.fhir_json import resource_json
from mappers.profiles import load_structure_definition

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
MAX_BODY_BYTES = 64 * 1024 * 1024


def operation_outcome(
    status: int, *, code: str, text: str, expression: str = "", severity: str = "error"
) -> JSONResponse:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": text}
    if expression:
        issue["expression"] = [expression]
    return JSONResponse(
        {"resourceType": "OperationOutcome", "issue": [issue]},
        status_code=status,
        media_type=FHIR_JSON,
    )


def _status_json(item: InboxItem) -> dict[str, Any]:
    import json

    return {
        "id": item.id,
        "status": item.status.value,
        "record_id": item.record_id,
        "channel": item.channel,
        "received_at": item.received_at.isoformat(),
        "updated_at": item.updated_at.isoformat(),
        "report": item.report_ref,
        "result": None if item.result_json is None else json.loads(item.result_json),
        "error": item.error,
    }


def create_app(
    *,
    ingest: IngestService,
    inbox: Inbox,
    health: Callable[[], dict[str, Any]],
    audit: AuditLog | None = None,
    metrics: Metrics | None = None,
    latest: LatestAnalysis | None = None,
    intake_auth: Callable[..., object] | None = None,
    cds_auth: Callable[..., object] | None = None,
    subscriptions: SubscriptionReceiver | None = None,
    reports: ReportStore | None = None,
) -> FastAPI:
    """The HTTP app. Optional parts: the audit review router (with `audit`), Prometheus
    `/metrics` (with `metrics`), CDS Hooks (with `audit` and `latest`), the ED-alert
    acknowledgement links (when alerts are configured), and bearer-token auth on the FHIR
    intake and CDS routes (`intake_auth`, a FastAPI dependency). Subscription notifications
    (`subscriptions`, behind `intake_auth`) and reads of the written reports (`reports`,
    behind `cds_auth`: scope ``system/DiagnosticReport.read``) are built from the settings
    when not given."""
    app = FastAPI(title="ecgbridge", version="0.1.0")
    guard = [Depends(intake_auth)] if intake_auth is not None else []
    read_guard = [Depends(cds_auth)] if cds_auth is not None else []
    if subscriptions is None or reports is None:
        from integration.settings import get_settings

        settings = get_settings()
        if subscriptions is None:
            from integration.subscriptions import receiver_from_settings

            subscriptions = receiver_from_settings(ingest, audit=audit, settings=settings)
        if reports is None:
            from integration.report_store import store_from_settings

            reports = store_from_settings(
                inbox,
                patient_key=None if audit is None else audit.patient_key,
                settings=settings,
            )
    if metrics is not None:
        app.mount("/metrics", metrics_asgi_app(metrics))  # type: ignore[arg-type]
    if audit is not None and latest is not None:
        from integration.cds import make_cds_router

        app.include_router(make_cds_router(latest=latest, audit=audit, auth=cds_auth))
    alert_settings = get_alert_settings()
    if audit is not None and alert_settings.webhook_secret is not None:
        from integration.alerts import make_alert_ack_router

        secret = alert_settings.webhook_secret.get_secret_value().encode()
        app.include_router(make_alert_ack_router(audit, secret=secret))
    if audit is not None:
        from integration.audit.config import get_audit_settings
        from integration.audit.router import bearer_reviewers, make_audit_router

        tokens = get_audit_settings().reviewer_tokens()
        app.include_router(make_audit_router(audit, reviewer=bearer_reviewers(tokens)))

    async def _intake(request: Request, expected: str) -> Response:
        ctype = request.headers.get("content-type", "").split(";")[0].strip()
        if ctype not in (FHIR_JSON, "application/json"):
            return operation_outcome(
                415, code="not-supported", text=f"send {FHIR_JSON}, not {ctype or 'nothing'}"
            )
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return operation_outcome(413, code="too-costly", text="request body too large")
        try:
            import json

            kind = json.loads(body).get("resourceType") if body else None
        except (ValueError, AttributeError):
            kind = None
        if kind is not None and kind != expected:
            return operation_outcome(
                422,
                code="invalid",
                text=f"this endpoint takes a {expected}, got {kind}",
                expression="resourceType",
            )
        try:
            accepted = await _run(ingest.receive_fhir, body)
        except MappingError as exc:
            log.info("FHIR intake refused: %s", exc)
            return operation_outcome(
                422, code=exc.fhir_issue, text=str(exc), expression=exc.location
            )
        except DuplicateConflictError as exc:
            return operation_outcome(409, code="conflict", text=str(exc))
        except InboxError as exc:
            log.error("FHIR intake not committed: %s", exc)
            return operation_outcome(
                503, code="transient", text="the ECG could not be stored; retry later"
            )
        return _accepted_response(accepted)

    @app.post("/fhir/Observation", dependencies=guard)
    async def post_observation(request: Request) -> Response:
        return await _intake(request, "Observation")

    @app.post("/fhir", dependencies=guard)
    async def post_bundle(request: Request) -> Response:
        return await _intake(request, "Bundle")

    from integration.report_store import make_report_router
    from integration.subscriptions import make_subscription_router

    app.include_router(make_subscription_router(subscriptions, dependencies=guard))
    app.include_router(make_report_router(reports, dependencies=read_guard, audit=audit))

    started = datetime.now(UTC)

    @app.get("/fhir/metadata")
    async def get_metadata(request: Request) -> Response:
        statement = capability_statement(
            software_version=app.version,
            base_url=str(request.base_url).rstrip("/") + "/fhir",
            date=started,
            bearer_auth=intake_auth is not None,
            report_read=reports is not None,
            subscription_topics=sorted(subscriptions.topics),
        )
        return JSONResponse(resource_json(statement), media_type=FHIR_JSON)

    @app.get("/fhir/StructureDefinition/{sd_id}")
    async def get_structure_definition(sd_id: str) -> Response:
        sd = await _run(load_structure_definition, sd_id)
        if sd is None:
            return operation_outcome(404, code="not-found", text=f"no StructureDefinition {sd_id}")
        return JSONResponse(sd, media_type=FHIR_JSON)

    @app.get("/ecg/{item_id}")
    async def get_status(item_id: str) -> Response:
        item = await _run(inbox.get, item_id)
        if item is None:
            return operation_outcome(404, code="not-found", text=f"no ECG {item_id}")
        return JSONResponse(_status_json(item))

    @app.get("/ecg")
    async def find_status(key: str) -> Response:
        item = await _run(inbox.find_by_key, key)
        if item is None:
            return operation_outcome(404, code="not-found", text="no ECG with that key")
        return JSONResponse(_status_json(item))

    @app.get("/health")
    async def get_health() -> Response:
        return JSONResponse(await _run(health))

    return app


def _accepted_response(accepted: list[FhirAccepted]) -> JSONResponse:
    items = [
        {
            "entry": a.entry_index,
            "id": a.accepted.item.id,
            "location": f"/ecg/{a.accepted.item.id}",
            "replay": not a.accepted.created,
            "status": a.accepted.item.status.value,
        }
        for a in accepted
    ]
    return JSONResponse(
        {"accepted": items},
        status_code=202,
        headers={"Location": f"/ecg/{accepted[0].accepted.item.id}"},
    )


async def _run(fn: Callable[..., Any], *args: Any) -> Any:
    import anyio

    return await anyio.to_thread.run_sync(fn, *args)
