"""FHIR R4 AuditEvent export following IHE Basic Audit Log Patterns (BALP).

Each entry becomes one `fhir.resources.R4B` AuditEvent (validated on construction):
``type``/``subtype`` (DICOM DCM + the ecgbridge event kind), ``action``, ``recorded``,
``outcome``, two agents (the requestor and ecgbridge), ``source`` (the ecgbridge observer),
and entities for the patient (role 1), the message or resource, and the model version.
The patient is named by identifier only when the exporter may see PHI; otherwise by its
HMAC search key. The log position travels in an extension (index, leaf hash) so an
exported record can be checked against an inclusion proof.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any, TextIO

from fhir.resources.R4B.auditevent import AuditEvent as FhirAuditEvent

from integration.audit.errors import PhiDecryptionError
from integration.audit.events import AuditEvent, EventKind, PatientRef, StoredEvent
from integration.audit.log import AuditLog
from integration.audit.store import SearchQuery

DCM = "http://dicom.nema.org/resources/ontology/DCM"
KIND_SYSTEM = "https://ecgbridge.example/fhir/CodeSystem/audit-event-kind"
PATIENT_KEY_SYSTEM = "https://ecgbridge.example/fhir/NamingSystem/patient-hmac"
LOG_ENTRY_EXT = "https://ecgbridge.example/fhir/StructureDefinition/audit-log-entry"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"

# kind -> (DCM event type code, display, FHIR action C/R/U/D/E)
_TYPES: dict[EventKind, tuple[str, str, str]] = {
    EventKind.MESSAGE_RECEIVED: ("110110", "Patient Record", "C"),
    EventKind.ACK_SENT: ("110110", "Patient Record", "E"),
    EventKind.ANALYSIS_STARTED: ("110110", "Patient Record", "E"),
    EventKind.ANALYSIS_FINISHED: ("110110", "Patient Record", "E"),
    EventKind.REPORT_WRITTEN: ("110110", "Patient Record", "C"),
    EventKind.ALERT_SENT: ("110110", "Patient Record", "E"),
    EventKind.ALERT_ACKNOWLEDGED: ("110110", "Patient Record", "E"),
    EventKind.CDS_CARD_SHOWN: ("110110", "Patient Record", "R"),
    EventKind.CDS_FEEDBACK: ("110110", "Patient Record", "E"),
    EventKind.AUTH_FAILURE: ("110114", "User Authentication", "E"),
    EventKind.CONFIG_CHANGED: ("110113", "Security Alert", "U"),
    EventKind.CONFIG_LOADED: ("110100", "Application Activity", "E"),
    EventKind.AUDIT_EXPORTED: ("110106", "Export", "R"),
    EventKind.AUDIT_ARCHIVED: ("110106", "Export", "E"),
    EventKind.AUDIT_VIEWED: ("110112", "Query", "E"),
    EventKind.FAIRNESS_DRIFT: ("110100", "Application Activity", "E"),
    EventKind.REPORT_READ: ("110110", "Patient Record", "R"),
    EventKind.APP_ACK_SENT: ("110110", "Patient Record", "E"),
    EventKind.APP_ACK_SKIPPED: ("110110", "Patient Record", "E"),
}


def to_fhir(event: StoredEvent, *, patient: PatientRef | None = None) -> FhirAuditEvent:
    """One stored entry as a validated R4 AuditEvent. ``patient`` (decrypted) is used only
    when given; otherwise the patient entity carries the HMAC search key."""
    code, display, action = _TYPES[event.kind]
    entities: list[dict[str, Any]] = []
    person = {"system": ENTITY_TYPE, "code": "1", "display": "Person"}
    patient_role = {"system": OBJECT_ROLE, "code": "1", "display": "Patient"}
    if patient is not None:
        ident = {
            "value": patient.identifier,
            **({"system": patient.system} if patient.system else {}),
        }
        entities.append({"what": {"identifier": ident}, "type": person, "role": patient_role})
    elif event.patient_key is not None:
        entities.append(
            {
                "what": {"identifier": {"system": PATIENT_KEY_SYSTEM, "value": event.patient_key}},
                "type": person,
                "role": patient_role,
            }
        )
    details = [
        {"type": k, "valueString": str(v)} for k, v in sorted(event.detail.items()) if v is not None
    ]
    for name, value in (
        ("model_version", event.model_version),
        ("finding", event.finding),
        ("override", "true" if event.override else None),
        ("ecg_id", event.ecg_id),
    ):
        if value is not None:
            details.append({"type": name, "valueString": value})
    obj: dict[str, Any] = {
        "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
        "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
    }
    if event.resource is not None:
        obj["what"] = (
            {"reference": event.resource}
            if "/" in event.resource
            else {"identifier": {"value": event.resource}}
        )
    elif event.message_id:
        obj["what"] = {"identifier": {"value": event.message_id}}
        obj["role"] = {"system": OBJECT_ROLE, "code": "3", "display": "Report"}
    if "what" in obj or details:
        if details:
            obj["detail"] = details
        entities.append(obj)
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": f"audit-{event.index}",
        "extension": [
            {
                "url": LOG_ENTRY_EXT,
                "extension": [
                    {"url": "index", "valueString": str(event.index)},
                    {
                        "url": "leafHash",
                        "valueBase64Binary": base64.b64encode(event.leaf_hash).decode(),
                    },
                ],
            }
        ],
        "type": {"system": DCM, "code": code, "display": display},
        "subtype": [{"system": KIND_SYSTEM, "code": event.kind.value}],
        "action": action,
        "recorded": event.recorded_at.isoformat(timespec="milliseconds"),
        "outcome": event.outcome.value,
        "agent": [
            {
                "type": {
                    "coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]
                },
                "who": {"identifier": {"value": event.actor}},
                "requestor": True,
            },
            {
                "type": {
                    "coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]
                },
                "who": {"display": "ecgbridge"},
                "requestor": False,
            },
        ],
        "source": {
            "site": "ecgbridge",
            "observer": {"display": "ecgbridge"},
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4",
                    "display": "Application Server",
                }
            ],
        },
    }
    if entities:
        resource["entity"] = entities
    return FhirAuditEvent.model_validate(resource)


def iter_matching(log: AuditLog, query: SearchQuery, *, batch: int = 1000) -> Iterator[StoredEvent]:
    """Every entry matching ``query`` (oldest first), paging through the store."""
    offset = 0
    while True:
        page = log.search(
            SearchQuery(
                **{**_fields(query), "limit": batch, "offset": offset, "newest_first": False}
            )
        )
        yield from page
        if len(page) < batch:
            return
        offset += batch


def _fields(q: SearchQuery) -> dict[str, Any]:
    return {f: getattr(q, f) for f in q.__dataclass_fields__}


def export_ndjson(
    log: AuditLog, query: SearchQuery, out: TextIO, *, actor: str, include_phi: bool = False
) -> int:
    """Write matching entries as AuditEvent ndjson; the export itself is audited (an
    ``audit.exported`` entry naming the exporter and the count). Returns the count."""
    n = 0
    for event in iter_matching(log, query):
        patient = None
        if include_phi:
            try:
                patient = log.patient(event)
            except PhiDecryptionError:
                patient = None
        out.write(to_fhir(event, patient=patient).model_dump_json(exclude_none=True) + "\n")
        n += 1
    log.append(
        AuditEvent(
            kind=EventKind.AUDIT_EXPORTED,
            actor=actor,
            detail={"count": n, "include_phi": include_phi, "filter": describe(query)},
        )
    )
    return n


def describe(q: SearchQuery) -> str:
    """A query in words, without the patient key (it is pseudonymous, not for logs)."""
    parts = ["patient"] if q.patient_key else []
    if q.since:
        parts.append(f"since={q.since.isoformat()}")
    if q.until:
        parts.append(f"until={q.until.isoformat()}")
    if q.kinds:
        parts.append("kind=" + "|".join(q.kinds))
    for name in ("model_version", "finding", "override", "ecg_id"):
        value = getattr(q, name)
        if value is not None:
            parts.append(f"{name}={value}")
    return ",".join(parts) or "all"
