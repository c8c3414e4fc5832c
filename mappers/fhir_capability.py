"""FHIR R4 (4.0.1) CapabilityStatement of ecgbridge's HTTP API (``GET /fhir/metadata``).

Two ``rest`` entries, because ecgbridge plays both parts:

* ``server``: what the API in `integration.api` answers. ``POST [base]/Observation`` (create:
  an ECG Observation, MDC 131328 with one SampledData component per lead) and ``POST [base]``
  with a Bundle of them (declared as ``batch``: each entry is taken on its own), both answered
  ``202 Accepted`` with a ``Location`` to poll; ``GET [base]/StructureDefinition/[id]`` (read)
  for the published profiles and extensions; ``GET [base]/DiagnosticReport/[id]`` (read) and
  ``GET [base]/DiagnosticReport?subject=...`` (search-type) for the reports ecgbridge wrote,
  when they can be read back; and ``POST [base]/subscription-notification``, a rest-hook
  endpoint for FHIR Subscriptions Backport (R4) notifications of the accepted topics
  (documented in ``rest.documentation``: it is no FHIR interaction a CapabilityStatement
  has a code for).
* ``client``: what ecgbridge writes back to the EHR's FHIR server, each with
  ``PUT [type]/[id]`` (update-as-create): the DiagnosticReport and its Observations, their
  Provenance and the AuditEvent of each write, the model as a Device and its model-card
  DocumentReference (once per model version), all declaring the project's profiles
  (``supportedProfile``), and the ED-alert Communication (profile ``ecgbridge-ed-alert``).

``instantiates`` is not used: it names other CapabilityStatements, not profiles. The profiles
are in ``supportedProfile`` (and ``profile``) of the resources they constrain.
Pure: the statement is built from its arguments and validated as an R4 model.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from mappers.fhir_json import validate_resource
from mappers.profiles import (
    AI_DEVICE_PROFILE,
    AI_OBSERVATION_PROFILE,
    AI_PROVENANCE_PROFILE,
    CANONICAL_ROOT,
    ED_ALERT_PROFILE,
    MODEL_CARD_PROFILE,
    REPORT_AUDIT_PROFILE,
    REPORT_PROFILE,
)

CAPABILITY_URL = f"{CANONICAL_ROOT}/CapabilityStatement/ecgbridge"
FHIR_VERSION = "4.0.1"


def _interactions(*codes: tuple[str, str]) -> list[dict[str, str]]:
    return [{"code": code, "documentation": doc} for code, doc in codes]


#: How every resource is written back (`integration.writeback`).
_WRITTEN = "PUT [type]/[id] (update-as-create, deterministic id: a retry never duplicates)"


def _written(resource_type: str, profile: str, documentation: str = "") -> dict[str, Any]:
    """A client-side resource entry: a type ecgbridge writes, under its profile."""
    entry: dict[str, Any] = {
        "type": resource_type,
        "profile": profile,
        "supportedProfile": [profile],
    }
    if documentation:
        entry["documentation"] = documentation
    entry["interaction"] = _interactions(("update", _WRITTEN))
    return entry


def capability_statement(
    *,
    software_version: str,
    base_url: str,
    date: datetime,
    bearer_auth: bool = False,
    report_read: bool = False,
    subscription_topics: Sequence[str] = (),
) -> CapabilityStatement:
    """The statement for an ecgbridge API at `base_url` (``https://host/fhir``); `date` is
    when it last changed (the app's start); `bearer_auth` when the intake needs a token;
    `report_read` when the written DiagnosticReports can be read and searched;
    `subscription_topics` the SubscriptionTopic URLs whose notifications are accepted."""
    accepted = (
        "202 Accepted once the ECG is committed, with a Location (/ecg/<id>) to poll for the "
        "report; invalid resources get a 422 OperationOutcome naming the element"
    )
    server: dict[str, Any] = {
        "mode": "server",
        "documentation": "ECG intake (asynchronous: the report is written back to the EHR).",
        "resource": [
            {
                "type": "Observation",
                "documentation": (
                    "A resting 12-lead ECG: code MDC 131328 (MDC_ECG_ELEC_POTL), one component "
                    "per lead with valueSampledData (R4 period or R5 interval accepted)."
                ),
                "interaction": _interactions(("create", accepted)),
            },
            {
                "type": "StructureDefinition",
                "documentation": "The profiles and extensions ecgbridge publishes.",
                "interaction": _interactions(("read", "The JSON file as published.")),
            },
        ]
        + ([_report_resource()] if report_read else []),
        "interaction": _interactions(
            (
                "batch",
                "POST [base] with a Bundle (any type) of ECG Observations and their Patients; "
                "each ECG is taken on its own. " + accepted,
            )
        ),
    }
    if subscription_topics:
        server["documentation"] += (
            " Subscription notifications (FHIR Subscriptions R5 Backport, R4 "
            "backport-subscription-notification-r4 Bundles, rest-hook): POST "
            "[base]/subscription-notification, for the topics "
            + ", ".join(sorted(subscription_topics))
            + "; handshake and heartbeat answered 200, event notifications 202 once each "
            "focused ECG Observation (read from the EHR for id-only payloads) is committed."
        )
    if bearer_auth:
        server["security"] = {
            "description": (
                "The intake and subscription notifications need an Authorization: Bearer "
                "token (system/Observation.write); report reads system/DiagnosticReport.read."
            ),
        }
    client: dict[str, Any] = {
        "mode": "client",
        "documentation": "Write-back of results to the EHR's FHIR server.",
        "resource": [
            _written("DiagnosticReport", REPORT_PROFILE),
            _written("Observation", AI_OBSERVATION_PROFILE),
            _written(
                "Provenance",
                AI_PROVENANCE_PROFILE,
                "Author: the model's Device; entities: the ECG, the model card.",
            ),
            _written(
                "AuditEvent",
                REPORT_AUDIT_PROFILE,
                "One per report write (IHE BALP RESTful create).",
            ),
            _written(
                "Device",
                AI_DEVICE_PROFILE,
                "The AI model (AI Transparency on FHIR), once per version.",
            ),
            _written(
                "DocumentReference",
                MODEL_CARD_PROFILE,
                "The model card (MODEL_CARD.md), once per model version.",
            ),
            _written(
                "Communication",
                ED_ALERT_PROFILE,
                "ED alert for a high-risk result (when alerts are configured).",
            ),
        ],
    }
    when = date if date.tzinfo else date.replace(tzinfo=UTC)
    data: dict[str, Any] = {
        "resourceType": "CapabilityStatement",
        "id": "ecgbridge",
        "url": CAPABILITY_URL,
        "version": software_version,
        "name": "EcgbridgeCapabilityStatement",
        "title": "ecgbridge ECG decision support",
        "status": "active",
        "experimental": False,
        "date": when.isoformat(),
        "publisher": "ecgbridge",
        "description": (
            "ECG decision support plugin: takes resting 12-lead ECGs as FHIR R4 Observations "
            "and writes back an AI DiagnosticReport (acute MI / occlusion triage). Not a "
            "diagnosis."
        ),
        "kind": "instance",
        "software": {"name": "ecgbridge", "version": software_version},
        "implementation": {"description": "ecgbridge HTTP API", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": ["json"],
        "rest": [server, client],
    }
    return validate_resource(CapabilityStatement, data, path="CapabilityStatement")


def _report_resource() -> dict[str, Any]:
    reference = "http://hl7.org/fhir/SearchParameter/clinical-patient"
    return {
        "type": "DiagnosticReport",
        "profile": REPORT_PROFILE,
        "supportedProfile": [REPORT_PROFILE],
        "documentation": (
            "The reports ecgbridge wrote, as written (the final version once explanations "
            "are in); found through its own store, keyed by a hash of the patient identifier."
        ),
        "interaction": _interactions(
            ("read", "404 OperationOutcome for a report ecgbridge did not write."),
            (
                "search-type",
                "By patient only; newest first; _count (default 50, at most 200) per page, "
                "a next link (_offset) while there are more.",
            ),
        ),
        "searchParam": [
            {
                "name": "subject",
                "definition": "http://hl7.org/fhir/SearchParameter/DiagnosticReport-subject",
                "type": "reference",
                "documentation": "Patient/<id>; the :identifier modifier takes [system|]value.",
            },
            {
                "name": "patient",
                "definition": reference,
                "type": "reference",
                "documentation": "Patient/<id> or <id>; :identifier as for subject.",
            },
        ],
    }
