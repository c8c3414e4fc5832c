"""FHIR R4 (4.0.1) AuditEvent for one report write, after IHE Basic Audit Log Patterns (BALP,
"RESTful activity": type ``rest``, subtype the FHIR interaction).

* ``type`` audit-event-type ``rest``; ``subtype`` restful-interaction ``create`` (the report
  is written as update-as-create, ``PUT`` with its deterministic id); ``action`` ``C``;
  ``recorded`` the report's issue time; ``outcome`` ``0`` (the AuditEvent travels with the
  report: written with it, or not at all).
* ``agent``: the model's Device (DICOM ``110153`` Source Role ID, the requestor); ``source``:
  site ``ecgbridge``, observer the same Device, type ``4`` Application Server.
* ``entity``: the DiagnosticReport (System Object, role Domain Resource, the report
  ``status`` as detail) and the patient (Person, role Patient) as the report names it.

Id ``<report_id>-audit-<status>``: the preliminary and the final write are two events, and a
retried write is the same resource. Built from the report alone: pure, no audit-log access
(`integration.audit.export` turns the tamper-evident log's entries into AuditEvents; this
one is what the EHR gets beside the report).
"""

from __future__ import annotations

from typing import Any, Final

from fhir.resources.R4B.auditevent import AuditEvent

from mappers.fhir_device import model_reference
from mappers.fhir_json import validate_resource
from mappers.profiles import REPORT_AUDIT_PROFILE

DCM: Final[str] = "http://dicom.nema.org/resources/ontology/DCM"
AUDIT_EVENT_TYPE: Final[str] = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION: Final[str] = "http://hl7.org/fhir/restful-interaction"
ENTITY_TYPE: Final[str] = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE: Final[str] = "http://terminology.hl7.org/CodeSystem/object-role"


def report_audit_event(
    *,
    report_id: str,
    status: str,
    model_version: str,
    recorded: str,
    subject: dict[str, Any] | None,
) -> AuditEvent:
    """The AuditEvent of writing DiagnosticReport `report_id` (`status` as written) made by
    `model_version`; `recorded` an R4 instant; `subject` the report's subject Reference."""
    model = model_reference(model_version)
    entities: list[dict[str, Any]] = [
        {
            "what": {"reference": f"DiagnosticReport/{report_id}"},
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
            "detail": [{"type": "status", "valueString": status}],
        }
    ]
    if subject:
        entities.append(
            {
                "what": dict(subject),
                "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
            }
        )
    data: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": f"{report_id}-audit-{status}",
        "meta": {"profile": [REPORT_AUDIT_PROFILE]},
        "type": {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": RESTFUL_INTERACTION, "code": "create", "display": "create"}],
        "action": "C",
        "recorded": recorded,
        "outcome": "0",
        "agent": [
            {
                "type": {
                    "coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]
                },
                "who": model,
                "requestor": True,
            }
        ],
        "source": {
            "site": "ecgbridge",
            "observer": model,
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4",
                    "display": "Application Server",
                }
            ],
        },
        "entity": entities,
    }
    return validate_resource(AuditEvent, data, path="AuditEvent")
