"""The project's profiles and extensions on a real FHIR server that enforces them.

One test FHIR server (Medplum's engine, tests/fhir_server) for the module, started with
``--profiles mappers/profiles``: every resource whose ``meta.profile`` names a loaded profile is
validated against its snapshot. The report resources of real analyses (a positive, a negative,
a quality-refused sample ECG, and a preliminary report), with their Provenance and AuditEvent,
the model's Device and model card (the real MODEL_CARD.md), and the ED alert Communication of the
positive one, are accepted; wrong ones are
rejected with an OperationOutcome naming the problem, and the same wrong resource without
``meta.profile`` is accepted, so the rejection is the profile's doing (the server enforces).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from inference.analyzer import Analyzer
from inference.record import EcgRecord
from inference.result import AnalysisResult
from integration.alerts import AlertSender, AlertSettings, alert_identity, build_communication
from integration.api import create_app
from integration.inbox import Inbox
from integration.ingest import IngestService
from integration.samples import load_samples
from integration.writeback import load_model_card
from mappers.fhir_device import MODEL_CARD_EXTENSION, ModelResources, model_resources
from mappers.fhir_extensions import EXPLANATION_URL, EXTENSION_URLS, FAIRNESS_URL
from mappers.fhir_json import resource_json
from mappers.fhir_r4 import ReportResources, build_report, report_bundle
from mappers.profiles import (
    AI_DEVICE_PROFILE,
    AI_OBSERVATION_PROFILE,
    AI_PROVENANCE_PROFILE,
    ED_ALERT_PROFILE,
    MODEL_CARD_PROFILE,
    PROFILES_DIR,
    REPORT_AUDIT_PROFILE,
    REPORT_PROFILE,
    conformance_file,
    structure_definition_ids,
)
from tests.support.fhir_server import FhirServerProcess

pytestmark = pytest.mark.e2e

JSON = dict[str, Any]
#: Every profile of a resource the project writes, by resource type.
RESOURCE_PROFILES = {
    "DiagnosticReport": REPORT_PROFILE,
    "Observation": AI_OBSERVATION_PROFILE,
    "Provenance": AI_PROVENANCE_PROFILE,
    "AuditEvent": REPORT_AUDIT_PROFILE,
    "Device": AI_DEVICE_PROFILE,
    "DocumentReference": MODEL_CARD_PROFILE,
    "Communication": ED_ALERT_PROFILE,
}
FHIR_HEADERS = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
ISSUED = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
EXPLANATION: JSON = {
    "attributions": [{"lead": "V2", "segment": "ST", "share": 0.31}],
    "counterfactual": {
        "edits": [
            {"lead": "V3", "segment": "T", "delta_mv": -0.2},
            {"lead": "V1", "segment": "QRS", "wave": "R", "delta_mv": -0.15},
        ],
        "valid": True,
        "new_probability": 0.1,
        "original_probability": 0.8,
        "method": "gradient",
    },
    "rule": "IF ST(V2) > 0.10 mV THEN first edit on V2 ST",
    "rule_fidelity": 0.8,
    "method": "integrated-gradients+counterfactual",
    "seconds": 0.9,
}


@pytest.fixture(scope="module")
def server() -> Iterator[FhirServerProcess]:
    with FhirServerProcess(profiles_dir=PROFILES_DIR) as proc:
        yield proc


@pytest.fixture
def client(server: FhirServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers=FHIR_HEADERS, timeout=30) as c:
        yield c


def _build(result: AnalysisResult, record: EcgRecord, name: str, **kwargs: Any) -> ReportResources:
    return build_report(result, record, report_id=f"ecg-profiles-{name}", issued=ISSUED, **kwargs)


def _json(res: ReportResources) -> list[JSON]:
    """Observations, DiagnosticReport, Provenance, AuditEvent: the write-back order."""
    assert res.audit_event is not None
    return [
        resource_json(m)
        for m in (*res.observations, res.diagnostic_report, res.provenance, res.audit_event)
    ]


@pytest.fixture(scope="module")
def analysed() -> dict[str, tuple[EcgRecord, AnalysisResult]]:
    """(record, result) of a positive, a negative and a quality-refused sample ECG."""
    analyzer = Analyzer.load(device="cpu")
    results = [(s, analyzer.analyze(s.record)) for s in load_samples()]
    positive = next((s, r) for s, r in results if r.triage is not None and r.triage.positive)
    negative = next((s, r) for s, r in results if r.triage is not None and not r.triage.positive)
    assert positive[1].fairness is not None and negative[1].fairness is not None
    flat = dataclasses.replace(
        negative[0].record,
        signals_mv=np.zeros_like(negative[0].record.signals_mv),
        record_id="flat-line",
    )
    refused = analyzer.analyze(flat)
    assert not refused.analysed
    return {
        "positive": (positive[0].record, positive[1]),
        "negative": (negative[0].record, negative[1]),
        "refused": (flat, refused),
    }


@pytest.fixture(scope="module")
def built(analysed: dict[str, tuple[EcgRecord, AnalysisResult]]) -> dict[str, ReportResources]:
    """The report resources of a positive, a negative and a quality-refused sample ECG, and
    the preliminary report of the positive one (no explanation yet)."""
    (pos_record, pos), (neg_record, neg) = analysed["positive"], analysed["negative"]
    return {
        "positive": _build(dataclasses.replace(pos, explanation=EXPLANATION), pos_record, "pos"),
        "negative": _build(dataclasses.replace(neg, explanation=EXPLANATION), neg_record, "neg"),
        "refused": _build(analysed["refused"][1], analysed["refused"][0], "refused"),
        # triage written first, explanations to follow
        "preliminary": _build(pos, pos_record, "prelim", preliminary=True),
    }


ALERT_SETTINGS = AlertSettings(recipient="PractitionerRole/ed-triage")


@pytest.fixture(scope="module")
def alert(
    analysed: dict[str, tuple[EcgRecord, AnalysisResult]], built: dict[str, ReportResources]
) -> JSON:
    """The ED alert Communication of the positive ECG, as `integration.alerts` builds it."""
    record, result = analysed["positive"]
    report_ref = f"DiagnosticReport/{built['positive'].diagnostic_report.id}"
    alert_id = alert_identity(report_ref)
    sender = AlertSender(ALERT_SETTINGS)
    try:
        comm = build_communication(
            result,
            record,
            alert_id=alert_id,
            report_ref=report_ref,
            recipient="PractitionerRole/ed-triage",
            sent=ISSUED,
            ack_url=sender.ack_url(alert_id, record.record_id),
        )
    finally:
        sender.close()
    return resource_json(comm)


@pytest.fixture(scope="module")
def reports(built: dict[str, ReportResources]) -> dict[str, list[JSON]]:
    return {name: _json(res) for name, res in built.items()}


@pytest.fixture(scope="module")
def model(built: dict[str, ReportResources]) -> ModelResources:
    """The Device and model card (the repository's MODEL_CARD.md, inline) of the model."""
    return model_resources(built["positive"].model_version, load_model_card())


@pytest.fixture(scope="module")
def bundles(built: dict[str, ReportResources], model: ModelResources) -> dict[str, JSON]:
    """Transactions as the writer sends them: the first one with the model's resources."""
    return {
        name: report_bundle(res, model=model if n == 0 else None)
        for n, (name, res) in enumerate(built.items())
    }


def _put(client: httpx.Client, resource: JSON) -> httpx.Response:
    return client.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)


def _report(resources: list[JSON]) -> JSON:
    return copy.deepcopy(next(r for r in resources if r["resourceType"] == "DiagnosticReport"))


def _issues(resp: httpx.Response) -> list[tuple[str, str]]:
    """(expression, text) of each issue of an OperationOutcome."""
    outcome = resp.json()
    assert outcome["resourceType"] == "OperationOutcome", outcome
    return [
        (
            ",".join(issue.get("expression", [])),
            (issue.get("details") or {}).get("text", "") + issue.get("diagnostics", ""),
        )
        for issue in outcome["issue"]
        if issue["severity"] == "error"
    ]


# ---------------------------------------------------------------------------------- (a)


def _is_ai(resource: JSON) -> bool:
    return any(s.get("code") == "AIAST" for s in resource.get("meta", {}).get("security", []))


def test_model_device_and_card_are_accepted_with_profiles_enforced(
    client: httpx.Client, model: ModelResources
) -> None:
    device, card = resource_json(model.device), resource_json(model.model_card)
    assert device["meta"]["profile"] == [AI_DEVICE_PROFILE]
    assert card["meta"]["profile"] == [MODEL_CARD_PROFILE]
    assert len(card["content"][0]["attachment"]["data"]) > 1000  # the real card, inline
    for resource in (card, device):
        first = _put(client, resource)
        assert first.status_code in (200, 201), first.text
        assert first.json()["meta"]["profile"] == resource["meta"]["profile"]
        again = _put(client, resource)  # idempotent: the same resource, same id
        assert again.status_code == 200, again.text
        assert again.json()["id"] == resource["id"]
    stored = client.get(f"/Device/{device['id']}").json()
    assert (
        stored["extension"][0]["valueReference"]["reference"] == f"DocumentReference/{card['id']}"
    )


@pytest.mark.parametrize("case", ["positive", "negative", "refused", "preliminary"])
def test_report_resources_are_accepted_with_profiles_enforced(
    client: httpx.Client, reports: dict[str, list[JSON]], case: str
) -> None:
    resources = reports[case]
    by_type = {r["resourceType"]: r for r in resources}
    assert by_type["Provenance"]["meta"]["profile"] == [AI_PROVENANCE_PROFILE]
    assert by_type["AuditEvent"]["meta"]["profile"] == [REPORT_AUDIT_PROFILE]
    assert by_type["Provenance"]["agent"][0]["who"]["reference"].startswith("Device/")
    report = _report(resources)
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    ai = [o for o in observations if _is_ai(o)]
    assert report["meta"]["profile"] == [REPORT_PROFILE]
    assert all(o["meta"]["profile"] == [AI_OBSERVATION_PROFILE] for o in ai)
    # Delineation measurements (if any) are not AI outputs: no AIAST, no AI profile.
    assert all("profile" not in o.get("meta", {}) for o in observations if not _is_ai(o))
    if case == "refused":
        assert report["status"] == "cancelled" and not observations
        assert "extension" not in report
    else:
        urls = {e["url"] for e in report["extension"]}
        assert urls == (
            {FAIRNESS_URL} if case == "preliminary" else {FAIRNESS_URL, EXPLANATION_URL}
        )
        assert report["status"] == ("preliminary" if case == "preliminary" else "final")
        # triage, 3 territories, ischaemia, rhythm (CodeableConcept), stenosis (no value)
        assert len(ai) == 7
        assert any("valueCodeableConcept" in o for o in ai)
        assert any("dataAbsentReason" in o for o in ai)
    for resource in resources:
        resp = _put(client, resource)
        assert resp.status_code in (200, 201), resp.text
        profiles = resource.get("meta", {}).get("profile")
        assert resp.json()["meta"].get("profile") == profiles
    assert client.get(f"/DiagnosticReport/{report['id']}").json()["status"] == report["status"]


def test_report_bundle_is_accepted_as_a_transaction(
    client: httpx.Client, bundles: dict[str, JSON]
) -> None:
    """`report_bundle`: one transaction of idempotent PUTs, every entry validated."""
    types: set[str] = set()
    for bundle in bundles.values():
        resp = client.post("", json=bundle)
        assert resp.status_code == 200, resp.text
        statuses = [e["response"]["status"][:3] for e in resp.json()["entry"]]
        assert len(statuses) == len(bundle["entry"])
        assert set(statuses) <= {"200", "201"}, resp.text
        types |= {e["resource"]["resourceType"] for e in bundle["entry"]}
    assert types == {
        "DocumentReference",
        "Device",
        "DiagnosticReport",
        "Observation",
        "Provenance",
        "AuditEvent",
    }


def test_ed_alert_is_accepted_with_its_profile_enforced(
    client: httpx.Client,
    server: FhirServerProcess,
    alert: JSON,
    analysed: dict[str, tuple[EcgRecord, AnalysisResult]],
    built: dict[str, ReportResources],
) -> None:
    assert alert["meta"]["profile"] == [ED_ALERT_PROFILE]
    assert alert["priority"] == "stat" and "subject" in alert
    resp = _put(client, alert)
    assert resp.status_code in (200, 201), resp.text
    assert resp.json()["meta"]["profile"] == [ED_ALERT_PROFILE]
    # an ECG without a patient (a file) still alerts; a patient known by identifier only too
    for n, subject in enumerate([None, {"identifier": {"system": "urn:mrn", "value": "M-1"}}]):
        variant = {k: v for k, v in alert.items() if k != "subject"}
        variant["id"] = f"{alert['id'][:40]}-{n}"
        if subject is not None:
            variant["subject"] = subject
        assert _put(client, variant).status_code in (200, 201)
    # ... and the same through the sender's own PUT (update-as-create), as a task sends it
    record, result = analysed["positive"]
    report_ref = f"DiagnosticReport/{built['positive'].diagnostic_report.id}/_history/1"
    sender = AlertSender(ALERT_SETTINGS, fhir_base_url=server.base_url)
    try:
        outcome = sender.send_alert(result, record, report_ref, ecg_id="inbox-1")
    finally:
        sender.close()
    assert outcome.delivered, outcome.error
    assert outcome.alert_id == alert["id"]
    stored = client.get(f"/Communication/{alert['id']}").json()
    assert stored["meta"]["profile"] == [ED_ALERT_PROFILE]
    assert stored["about"] == alert["about"]


def _alert_routine(c: JSON) -> None:
    c["priority"] = "routine"


def _alert_without_aiast(c: JSON) -> None:
    c["meta"]["security"] = [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}
    ]


def _alert_without_about(c: JSON) -> None:
    del c["about"]


def _alert_about_an_observation(c: JSON) -> None:
    c["about"] = [{"reference": "Observation/ecg-1-triage"}]


def _alert_without_recipient(c: JSON) -> None:
    del c["recipient"]


def _alert_notification(c: JSON) -> None:
    c["category"][0]["coding"][0]["code"] = "notification"


def _alert_in_progress(c: JSON) -> None:
    c["status"] = "in-progress"


def _alert_without_sent(c: JSON) -> None:
    del c["sent"]


def _alert_sender_by_display_only(c: JSON) -> None:
    c["sender"] = {"display": "someone"}


def _alert_subject_by_display_only(c: JSON) -> None:
    c["subject"] = {"display": "a patient"}


def _alert_payload_attachment(c: JSON) -> None:
    c["payload"][1] = {"contentAttachment": {"contentType": "text/plain", "data": "YWNr"}}


ALERT_DEFECTS: list[tuple[Callable[[JSON], None], str, str]] = [
    (_alert_routine, "Communication.priority", "did not match expected pattern"),
    (_alert_without_aiast, "Communication.meta.security", "slice 'aiast'"),
    (_alert_without_about, "Communication.about", "Missing required property"),
    (_alert_about_an_observation, "Communication", "ecgal-report"),
    (_alert_without_recipient, "Communication.recipient", "Missing required property"),
    (_alert_notification, "Communication.category", "slice 'alert'"),
    (_alert_in_progress, "Communication.status", "did not match expected pattern"),
    (_alert_without_sent, "Communication.sent", "Missing required property"),
    (_alert_sender_by_display_only, "Communication", "ecgal-sender"),
    (_alert_payload_attachment, "Communication", "ecgal-payload"),
    (_alert_subject_by_display_only, "Communication", "ecgal-subject"),
]


@pytest.mark.parametrize(
    ("defect", "expression", "text"), ALERT_DEFECTS, ids=[d[0].__name__ for d in ALERT_DEFECTS]
)
def test_wrong_ed_alert_is_rejected_naming_the_problem(
    client: httpx.Client,
    alert: JSON,
    defect: Callable[[JSON], None],
    expression: str,
    text: str,
) -> None:
    wrong = copy.deepcopy(alert)
    defect(wrong)
    _assert_rejected_then_accepted_without_profile(client, wrong, expression, text)


# ---------------------------------------------------------------------------------- (b)


def _ext(report: JSON, url: str) -> JSON:
    ext: JSON = next(e for e in report["extension"] if e["url"] == url)
    return ext


def _sub(ext: JSON, *names: str) -> JSON:
    for name in names:
        ext = next(e for e in ext["extension"] if e["url"] == name)
    return ext


def _verdict_outside_value_set(r: JSON) -> None:
    _sub(_ext(r, FAIRNESS_URL), "verdict")["valueCode"] = "unfair"


def _fairness_without_max_shift(r: JSON) -> None:
    fairness = _ext(r, FAIRNESS_URL)
    fairness["extension"] = [e for e in fairness["extension"] if e["url"] != "maxShift"]


def _delta_in_microvolts(r: JSON) -> None:
    delta = _sub(_ext(r, EXPLANATION_URL), "counterfactual", "edit", "delta")
    delta["valueQuantity"] |= {"value": -200, "unit": "uV", "code": "uV"}


def _without_aiast(r: JSON) -> None:
    r["meta"]["security"] = [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}
    ]


def _without_security(r: JSON) -> None:
    del r["meta"]["security"]


def _segment_outside_value_set(r: JSON) -> None:
    _sub(_ext(r, EXPLANATION_URL), "attribution", "segment")["valueCode"] = "PR"


def _probability_in_percent(r: JSON) -> None:
    _sub(_ext(r, FAIRNESS_URL), "ownProbability")["valueDecimal"] = 74.0


def _unknown_sub_extension(r: JSON) -> None:
    _ext(r, FAIRNESS_URL)["extension"].append({"url": "confidence", "valueDecimal": 0.5})


def _verdict_as_string(r: JSON) -> None:
    verdict = _sub(_ext(r, FAIRNESS_URL), "verdict")
    verdict["valueString"] = verdict.pop("valueCode")


def _two_fairness_checks(r: JSON) -> None:
    r["extension"].append(copy.deepcopy(_ext(r, FAIRNESS_URL)))


def _category_cytogenetics(r: JSON) -> None:
    r["category"][0]["coding"][0] |= {"code": "CG", "display": "Cytogenetics"}


def _other_loinc_code(r: JSON) -> None:
    r["code"]["coding"][0] |= {"code": "34534-8", "display": "12 lead EKG panel"}


def _no_conclusion(r: JSON) -> None:
    del r["conclusion"]


def _registered(r: JSON) -> None:
    r["status"] = "registered"


def _final_without_results(r: JSON) -> None:
    del r["result"]


REPORT_DEFECTS: list[tuple[Callable[[JSON], None], str, str]] = [
    # (defect, expression of the issue, text the issue must contain)
    (_verdict_outside_value_set, "DiagnosticReport.extension[", "ecgfc-verdict"),
    (_fairness_without_max_shift, "DiagnosticReport.extension[", "ecgfc-maxShift"),
    (_delta_in_microvolts, "DiagnosticReport.extension[", "ecgex-counterfactual.edit.delta"),
    (_without_aiast, "DiagnosticReport.meta.security", "slice 'aiast'"),
    (_without_security, "DiagnosticReport.meta.security", "Missing required property"),
    (_segment_outside_value_set, "DiagnosticReport.extension[", "ecgex-attribution.segment"),
    (_probability_in_percent, "DiagnosticReport.extension[", "ecgfc-ownProbability"),
    (_unknown_sub_extension, "DiagnosticReport.extension[", "ecgfc-closed"),
    (_verdict_as_string, "DiagnosticReport.extension[", "ecgfc-verdict"),
    (_two_fairness_checks, "DiagnosticReport.extension", "slice 'fairnessCheck'"),
    (_category_cytogenetics, "DiagnosticReport.category", "slice 'electrocardiac'"),
    (_other_loinc_code, "DiagnosticReport.code", "did not match expected pattern"),
    (_no_conclusion, "DiagnosticReport.conclusion", "Missing required property"),
    (_registered, "DiagnosticReport", "ecgr-status"),
    (_final_without_results, "DiagnosticReport", "ecgr-result"),
]


def _obs_unit_one(o: JSON) -> None:
    o["valueQuantity"] |= {"value": 0.8, "unit": "1", "code": "1"}


def _obs_over_100_percent(o: JSON) -> None:
    o["valueQuantity"]["value"] = 150.0


def _obs_without_device(o: JSON) -> None:
    del o["device"]


def _obs_device_by_identifier_only(o: JSON) -> None:
    o["device"] = {"identifier": {"system": "urn:ecgbridge:model", "value": "x"}}


def _obs_value_string(o: JSON) -> None:
    o["valueString"] = str(o.pop("valueQuantity")["value"])


def _obs_without_aiast(o: JSON) -> None:
    o["meta"]["security"] = [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}
    ]


def _obs_without_result(o: JSON) -> None:
    for key in ("valueQuantity", "component", "interpretation", "referenceRange"):
        o.pop(key, None)


OBSERVATION_DEFECTS: list[tuple[Callable[[JSON], None], str, str]] = [
    (_obs_unit_one, "Observation", "ecgo-percent"),
    (_obs_over_100_percent, "Observation", "ecgo-percent"),
    (_obs_without_device, "Observation.device", "Missing required property"),
    (_obs_device_by_identifier_only, "Observation.device", "ecgo-device"),
    (_obs_value_string, "Observation", "ecgo-value-type"),
    (_obs_without_aiast, "Observation.meta.security", "slice 'aiast'"),
    (_obs_without_result, "Observation", "ecgo-result"),
]


def _device_without_model_card(d: JSON) -> None:
    del d["extension"]


def _device_model_card_not_a_document(d: JSON) -> None:
    d["extension"][0]["valueReference"] = {"reference": "Binary/card"}


def _device_other_manufacturer(d: JSON) -> None:
    d["manufacturer"] = "Acme"


def _device_without_aiast(d: JSON) -> None:
    d["meta"]["security"] = [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}
    ]


def _device_not_ai(d: JSON) -> None:
    d["type"] = {"coding": [{"system": "http://snomed.info/sct", "code": "706689003"}]}


def _device_without_name_type(d: JSON) -> None:
    d["deviceName"][0]["type"] = "user-friendly-name"


DEVICE_DEFECTS: list[tuple[Callable[[JSON], None], str, str]] = [
    (_device_without_model_card, "Device", "ecgd-model-card"),
    (_device_model_card_not_a_document, "Device", "ecgd-model-card"),
    (_device_other_manufacturer, "Device", "ecgd-manufacturer"),
    (_device_without_aiast, "Device.meta.security", "slice 'aiast'"),
    (_device_not_ai, "Device.type", "did not match expected pattern"),
    (_device_without_name_type, "Device", "ecgd-name"),
]


@pytest.mark.parametrize(
    ("defect", "expression", "text"), DEVICE_DEFECTS, ids=[d[0].__name__ for d in DEVICE_DEFECTS]
)
def test_wrong_device_is_rejected_naming_the_problem(
    client: httpx.Client,
    model: ModelResources,
    defect: Callable[[JSON], None],
    expression: str,
    text: str,
) -> None:
    device = resource_json(model.device)
    assert device["extension"][0]["url"] == MODEL_CARD_EXTENSION
    defect(device)
    _assert_rejected_then_accepted_without_profile(client, device, expression, text)


def _card_inline_without_hash(r: JSON) -> None:
    del r["content"][0]["attachment"]["hash"]


def _provenance_agent_by_identifier_only(r: JSON) -> None:
    del r["agent"][0]["who"]["reference"]


def _audit_requestor_not_the_device(r: JSON) -> None:
    r["agent"][0]["who"] = {"display": "someone"}


def test_wrong_model_card_provenance_and_audit_event_are_rejected(
    client: httpx.Client, model: ModelResources, reports: dict[str, list[JSON]]
) -> None:
    by_type = {r["resourceType"]: r for r in reports["positive"]}
    cases: list[tuple[JSON, Callable[[JSON], None], str, str]] = [
        (resource_json(model.model_card), _card_inline_without_hash, "DocumentReference", "ecgmc-"),
        (by_type["Provenance"], _provenance_agent_by_identifier_only, "Provenance", "ecgp-device"),
        (by_type["AuditEvent"], _audit_requestor_not_the_device, "AuditEvent", "ecga-agent"),
    ]
    for resource, defect, expression, text in cases:
        wrong = copy.deepcopy(resource)
        defect(wrong)
        _assert_rejected_then_accepted_without_profile(client, wrong, expression, text)


def _assert_rejected_then_accepted_without_profile(
    client: httpx.Client, wrong: JSON, expression: str, text: str
) -> None:
    wrong["id"] = f"wrong-{uuid.uuid4().hex[:12]}"
    resp = _put(client, wrong)
    assert resp.status_code == 400, resp.text
    issues = _issues(resp)
    assert any(e.startswith(expression) and text in t for e, t in issues), issues
    assert client.get(f"/{wrong['resourceType']}/{wrong['id']}").status_code == 404
    # Without meta.profile only the base R4 definition applies: the same resource is stored.
    # So the rejection above is the profile's doing.
    del wrong["meta"]["profile"]
    assert _put(client, wrong).status_code in (200, 201)


@pytest.mark.parametrize(
    ("defect", "expression", "text"), REPORT_DEFECTS, ids=[d[0].__name__ for d in REPORT_DEFECTS]
)
def test_wrong_report_is_rejected_naming_the_problem(
    client: httpx.Client,
    reports: dict[str, list[JSON]],
    defect: Callable[[JSON], None],
    expression: str,
    text: str,
) -> None:
    wrong = _report(reports["positive"])
    defect(wrong)
    _assert_rejected_then_accepted_without_profile(client, wrong, expression, text)


@pytest.mark.parametrize(
    ("defect", "expression", "text"),
    OBSERVATION_DEFECTS,
    ids=[d[0].__name__ for d in OBSERVATION_DEFECTS],
)
def test_wrong_observation_is_rejected_naming_the_problem(
    client: httpx.Client,
    reports: dict[str, list[JSON]],
    defect: Callable[[JSON], None],
    expression: str,
    text: str,
) -> None:
    triage = copy.deepcopy(reports["positive"][0])
    assert triage["id"].endswith("-triage")
    defect(triage)
    _assert_rejected_then_accepted_without_profile(client, triage, expression, text)


def test_required_binding_alone_is_not_enforced_by_medplum(
    client: httpx.Client, reports: dict[str, list[JSON]]
) -> None:
    """Why the code lists are also invariants: Medplum does not check required bindings. A
    made-up ``status`` (bound, required, to R4's report-status codes) passes the base R4
    definition; the profile's ecgr-status invariant rejects it. The verdict and segment
    bindings of the extensions are carried by invariants the same way (tests above)."""
    wrong = _report(reports["positive"])
    wrong["status"] = "made-up"
    wrong["id"] = f"wrong-{uuid.uuid4().hex[:12]}"
    assert _issues(_put(client, wrong))[0][1].startswith("Constraint ecgr-status")
    del wrong["meta"]["profile"]
    assert _put(client, wrong).status_code in (200, 201)


# ---------------------------------------------------------------------------------- (c)


def test_every_extension_url_has_a_structure_definition(
    client: httpx.Client,
) -> None:
    published = structure_definition_ids()
    for url in (*EXTENSION_URLS, *RESOURCE_PROFILES.values()):
        sd_id = url.rsplit("/", 1)[-1]
        assert sd_id in published
        sd = json.loads(conformance_file("StructureDefinition", sd_id).read_text("utf-8"))
        assert sd["url"] == url
        # loaded by the server (and stored as a StructureDefinition resource)
        found = client.get("/StructureDefinition", params={"url": url}).json()
        assert found["total"] == 1, url
    metadata = client.get("/metadata").json()
    by_type = {r["type"]: r for r in metadata["rest"][0]["resource"]}
    assert by_type["DiagnosticReport"]["supportedProfile"] == [REPORT_PROFILE]
    assert by_type["Observation"]["supportedProfile"] == [AI_OBSERVATION_PROFILE]
    assert len(published) == len(EXTENSION_URLS) + len(RESOURCE_PROFILES)


# ---------------------------------------------------------------------------------- (d)


@pytest.fixture
def api(tmp_path: Path) -> TestClient:
    inbox = Inbox.from_url(f"sqlite:///{tmp_path}/inbox.sqlite3")
    ingest = IngestService(inbox=inbox, enqueue=lambda _item_id, _p: None)
    return TestClient(create_app(ingest=ingest, inbox=inbox, health=lambda: {"status": "ok"}))


def test_api_serves_its_capability_statement_and_structure_definitions(
    api: TestClient, client: httpx.Client
) -> None:
    resp = api.get("/fhir/metadata")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/fhir+json")
    cs = resp.json()
    CapabilityStatement.model_validate(cs)
    assert cs["fhirVersion"] == "4.0.1" and cs["kind"] == "instance"
    assert cs["implementation"]["url"] == "http://testserver/fhir"
    client_rest = next(r for r in cs["rest"] if r["mode"] == "client")
    profiles = {r["type"]: r.get("supportedProfile") for r in client_rest["resource"]}
    assert profiles == {rtype: [url] for rtype, url in RESOURCE_PROFILES.items()}
    # Medplum's R4 validator accepts the statement too.
    stored = client.post("/CapabilityStatement", json=cs)
    assert stored.status_code == 201, stored.text

    for sd_id in structure_definition_ids():
        resp = api.get(f"/fhir/StructureDefinition/{sd_id}")
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("application/fhir+json")
        file = conformance_file("StructureDefinition", sd_id)
        assert resp.json() == json.loads(file.read_text("utf-8"))
    missing = api.get("/fhir/StructureDefinition/no-such-profile")
    assert missing.status_code == 404
    assert missing.json()["resourceType"] == "OperationOutcome"
    assert missing.json()["issue"][0]["code"] == "not-found"
