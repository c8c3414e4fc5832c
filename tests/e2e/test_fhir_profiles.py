"""The project's profiles and extensions on a real FHIR server that enforces them.

One test FHIR server (Medplum's engine, tests/fhir_server) for the module, started with
``--profiles mappers/profiles``: every resource whose ``meta.profile`` names a loaded profile is
validated against its snapshot. The report resources of real analyses (a positive, a negative,
a quality-refused sample ECG, and a preliminary report) are accepted; wrong ones are rejected
with an OperationOutcome naming the problem, and the same wrong resource without
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
from integration.api import create_app
from integration.inbox import Inbox
from integration.ingest import IngestService
from integration.samples import load_samples
from mappers.fhir_extensions import EXPLANATION_URL, EXTENSION_URLS, FAIRNESS_URL
from mappers.fhir_json import resource_json
from mappers.fhir_r4 import ReportResources, build_report, report_bundle
from mappers.profiles import (
    AI_OBSERVATION_PROFILE,
    PROFILES_DIR,
    REPORT_PROFILE,
    conformance_file,
    structure_definition_ids,
)
from tests.support.fhir_server import FhirServerProcess

pytestmark = pytest.mark.e2e

JSON = dict[str, Any]
FHIR_HEADERS = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
ISSUED = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
EXPLANATION: JSON = {
    "attributions": [{"lead": "V2", "segment": "ST", "share": 0.31}],
    "counterfactual": {
        "edits": [{"lead": "V3", "segment": "T", "delta_mv": -0.2}],
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
    """Observations, DiagnosticReport, Provenance: the write-back order."""
    return [resource_json(m) for m in (*res.observations, res.diagnostic_report, res.provenance)]


@pytest.fixture(scope="module")
def built() -> dict[str, ReportResources]:
    """The report resources of a positive, a negative and a quality-refused sample ECG, and
    the preliminary report of the positive one (no explanation yet)."""
    analyzer = Analyzer.load(device="cpu")
    analysed = [(s, analyzer.analyze(s.record)) for s in load_samples()]
    positive = next((s, r) for s, r in analysed if r.triage is not None and r.triage.positive)
    negative = next((s, r) for s, r in analysed if r.triage is not None and not r.triage.positive)
    assert positive[1].fairness is not None and negative[1].fairness is not None
    flat = dataclasses.replace(
        negative[0].record,
        signals_mv=np.zeros_like(negative[0].record.signals_mv),
        record_id="flat-line",
    )
    refused = analyzer.analyze(flat)
    assert not refused.analysed
    return {
        "positive": _build(
            dataclasses.replace(positive[1], explanation=EXPLANATION), positive[0].record, "pos"
        ),
        "negative": _build(
            dataclasses.replace(negative[1], explanation=EXPLANATION), negative[0].record, "neg"
        ),
        "refused": _build(refused, flat, "refused"),
        # triage written first, explanations to follow
        "preliminary": _build(positive[1], positive[0].record, "prelim", preliminary=True),
    }


@pytest.fixture(scope="module")
def reports(built: dict[str, ReportResources]) -> dict[str, list[JSON]]:
    return {name: _json(res) for name, res in built.items()}


@pytest.fixture(scope="module")
def bundles(built: dict[str, ReportResources]) -> dict[str, JSON]:
    return {name: report_bundle(res) for name, res in built.items()}


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


@pytest.mark.parametrize("case", ["positive", "negative", "refused", "preliminary"])
def test_report_resources_are_accepted_with_profiles_enforced(
    client: httpx.Client, reports: dict[str, list[JSON]], case: str
) -> None:
    resources = reports[case]
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
    for bundle in bundles.values():
        resp = client.post("", json=bundle)
        assert resp.status_code == 200, resp.text
        statuses = [e["response"]["status"][:3] for e in resp.json()["entry"]]
        assert len(statuses) == len(bundle["entry"])
        assert set(statuses) <= {"200", "201"}, resp.text


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
    for url in (*EXTENSION_URLS, REPORT_PROFILE, AI_OBSERVATION_PROFILE):
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
    profiles = {u for r in client_rest["resource"] for u in r.get("supportedProfile", [])}
    assert profiles == {REPORT_PROFILE, AI_OBSERVATION_PROFILE}
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
