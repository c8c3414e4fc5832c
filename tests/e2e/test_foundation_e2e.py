"""One ECG from the EHR to a DiagnosticReport, on real components.

Starts a real `redis-server`, the Medplum-based FHIR server (Node), a separate
`ecgbridge worker` (Celery) process and `ecgbridge serve`; sends a real PTB-XL record as
HL7 v2 ORU^R01 over TCP from another process and another as a FHIR Bundle over HTTP; reads
the DiagnosticReports back from the FHIR server and checks they are the ones for the ECGs
sent: subject, model version, and probabilities equal to the model's own output.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from inference.analyzer import Analyzer
from integration.mllp_client import MllpClient, ack_code
from integration.pipeline import report_identity
from integration.samples import Sample, load_samples
from mappers.fhir_r4 import patient_resource, record_to_observation
from mappers.hl7v2 import build_oru_r01
from tests.support.processes import run_cli, wait_until
from tests.support.stack import EcgbridgeStack, ecgbridge_stack

pytestmark = pytest.mark.e2e
PROFILES_DIR = Path(__file__).resolve().parents[2] / "mappers" / "profiles"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, fresh_postgres_url: str
) -> Iterator[EcgbridgeStack]:
    # The FHIR server enforces the project's profiles: every report the pipeline writes
    # (preliminary and final) must conform to them.
    with ecgbridge_stack(
        tmp_path_factory.mktemp("e2e"),
        fhir=True,
        fhir_profiles_dir=PROFILES_DIR,
        database_url=fresh_postgres_url,
        # the product's defaults: explanations and the ECG picture in every report
        explain="true",
        report_png="true",
        report_pdf="true",
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return load_samples()


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer.load(device="cpu")


def _read_report(stack: EcgbridgeStack, report_id: str, timeout_s: float = 120) -> dict[str, Any]:
    url = f"{stack.require_fhir().base_url}/DiagnosticReport/{report_id}"
    found: dict[str, Any] = {}

    def ready() -> bool:
        worker = stack.require_worker()
        assert worker.alive(), worker.log_tail()
        resp = httpx.get(url, timeout=5)
        # "preliminary" (triage) comes first; "final" once the explanations are added
        if resp.status_code == 200 and resp.json()["status"] == "final":
            found.update(resp.json())
            return True
        return False

    wait_until(ready, timeout_s=timeout_s, what=f"DiagnosticReport/{report_id}")
    return found


def _result_observations(
    stack: EcgbridgeStack, report: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for ref in report["result"]:
        obs = httpx.get(f"{stack.require_fhir().base_url}/{ref['reference']}", timeout=5).json()
        out[obs["id"]] = obs
    return out


def _probability(obs: dict[str, Any]) -> float:
    q = obs["valueQuantity"]
    value = float(q["value"])
    return value / 100.0 if q.get("unit") == "%" or q.get("code") == "%" else value


def _check_report(
    stack: EcgbridgeStack, report: dict[str, Any], sample: Sample, analyzer: Analyzer
) -> None:
    expected = analyzer.analyze(sample.record)
    assert expected.triage is not None
    patient = sample.record.patient
    assert patient is not None
    subject = report["subject"]
    if "reference" in subject:  # FHIR intake: the sender's Patient reference
        assert subject["reference"] == patient.reference
    else:  # HL7 intake: PID-3, a business identifier (MRN) with its assigning authority
        assert subject["identifier"]["value"] == patient.value
    obs = _result_observations(stack, report)
    triage = obs[f"{report['id']}-triage"]
    assert _probability(triage) == pytest.approx(expected.triage.probability, abs=1e-5)
    for finding in expected.territories:
        terr = obs[f"{report['id']}-territory-{finding.vessel.lower()}"]
        assert _probability(terr) == pytest.approx(finding.probability, abs=1e-5)
    prov = httpx.get(
        f"{stack.require_fhir().base_url}/Provenance",
        params={"target": f"DiagnosticReport/{report['id']}"},
        timeout=5,
    ).json()
    entries = prov.get("entry") or []
    assert len(entries) == 1
    assert analyzer.model_version in str(entries[0]["resource"])


def test_hl7_over_mllp_from_another_process_gets_its_report(
    stack: EcgbridgeStack, samples: list[Sample], analyzer: Analyzer, tmp_path: Path
) -> None:
    sample = next(s for s in samples if s.label.startswith("MI"))
    control_id = "E2E" + datetime.now(UTC).strftime("%H%M%S%f")
    message = build_oru_r01(sample.record, control_id=control_id, now=datetime.now(UTC))
    path = tmp_path / "ecg.hl7"
    path.write_bytes(message)
    peer = subprocess.run(
        [
            sys.executable,
            "-m",
            "integration.mllp_client",
            "--port",
            str(stack.serve.mllp_port),
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert peer.returncode == 0, peer.stdout + peer.stderr
    assert peer.stdout.strip().endswith("AA")
    report_id = report_identity(f"hl7:WARD|{control_id}", analyzer.model_version)
    report = _read_report(stack, report_id)
    _check_report(stack, report, sample, analyzer)

    # The same message again: the byte-identical ACK, and still exactly one report.
    with MllpClient("127.0.0.1", stack.serve.mllp_port) as client:
        first = client.send(message)
        second = client.send(message)
    assert ack_code(first) == "AA" and first == second
    status = httpx.get(
        f"{stack.serve.http_url}/ecg", params={"key": f"hl7:WARD|{control_id}"}, timeout=5
    ).json()
    assert status["status"] == "done"
    found = httpx.get(
        f"{stack.require_fhir().base_url}/DiagnosticReport",
        params={"identifier": f"urn:ecgbridge:report|{report_id}"},
        timeout=5,
    ).json()
    assert len(found.get("entry") or []) == 1


def test_fhir_bundle_over_http_gets_its_report(
    stack: EcgbridgeStack, samples: list[Sample], analyzer: Analyzer
) -> None:
    sample = samples[1]
    obs = record_to_observation(sample.record)
    entries: list[dict[str, Any]] = [{"resource": obs}]
    patient = patient_resource(sample.record)
    if patient is not None:
        entries.append({"resource": patient})
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    resp = httpx.post(
        f"{stack.serve.http_url}/fhir",
        json=bundle,
        headers={"Content-Type": "application/fhir+json"},
        timeout=30,
    )
    assert resp.status_code == 202, resp.text
    location = resp.headers["Location"]

    def done() -> bool:
        return bool(
            httpx.get(f"{stack.serve.http_url}{location}", timeout=5).json()["status"] == "done"
        )

    wait_until(done, timeout_s=120, what="FHIR-submitted ECG done")
    status = httpx.get(f"{stack.serve.http_url}{location}", timeout=5).json()
    report_id = status["report"].split("/")[1]
    report = _read_report(stack, report_id)
    _check_report(stack, report, sample, analyzer)


def test_the_report_is_preliminary_first_then_final_with_its_explanation(
    stack: EcgbridgeStack, samples: list[Sample], analyzer: Analyzer
) -> None:
    """The triage report is written at once as "preliminary"; the same DiagnosticReport is
    updated to "final" with the explanation, the fairness check, the measurements and the
    ECG picture (PNG and PDF): two versions on the FHIR server."""
    sample = next(s for s in samples if s.label.startswith("MI"))
    control_id = "E2EX" + datetime.now(UTC).strftime("%H%M%S%f")
    message = build_oru_r01(sample.record, control_id=control_id, now=datetime.now(UTC))
    with MllpClient("127.0.0.1", stack.serve.mllp_port) as client:
        assert ack_code(client.send(message)) == "AA"
    report_id = report_identity(f"hl7:WARD|{control_id}", analyzer.model_version)
    report = _read_report(stack, report_id)
    history = httpx.get(
        f"{stack.require_fhir().base_url}/DiagnosticReport/{report_id}/_history", timeout=5
    ).json()
    statuses = [e["resource"]["status"] for e in history["entry"]]
    assert statuses[-1] == "preliminary" and statuses[0] == "final", statuses  # newest first
    prelim = history["entry"][-1]["resource"]
    assert "presentedForm" not in prelim
    urls = {e["url"].rsplit("/", 1)[1]: e for e in report["extension"]}
    assert set(urls) == {"ecg-fairness-check", "ecg-explanation"}
    parts = {e["url"] for e in urls["ecg-explanation"]["extension"]}
    assert {"method", "modelVersion", "attribution", "counterfactual"} <= parts
    forms = {f["contentType"]: f for f in report["presentedForm"]}
    assert base64.b64decode(forms["image/png"]["data"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert base64.b64decode(forms["application/pdf"]["data"])[:5] == b"%PDF-"
    obs = _result_observations(stack, report)
    hr = obs[f"{report_id}-hr"]
    assert hr["code"]["coding"][0]["code"] == "8867-4"
    assert 30 <= hr["valueQuantity"]["value"] <= 200
    assert f"{report_id}-st-levels" in obs


def test_bad_hl7_gets_a_negative_ack_and_the_listener_keeps_serving(stack: EcgbridgeStack) -> None:
    with MllpClient("127.0.0.1", stack.serve.mllp_port) as client:
        bad = client.send(b"MSH|^~\\&|X|WARD|Y|Z|20260101||ADT^A01|BAD1|P|2.5.1\rPID|1")
        assert ack_code(bad) == "AR"
        assert b"ERR|" in bad
        garbage = client.send(b"this is not HL7")
        assert ack_code(garbage) == "AR"
    resp = httpx.get(f"{stack.serve.http_url}/health", timeout=5)
    assert resp.status_code == 200


def test_audit_log_holds_the_chain_and_verifies(stack: EcgbridgeStack) -> None:
    """After the ECGs above: `ecgbridge audit verify` on the same store exits 0, and the
    log holds received -> ACK -> analysis -> report for an ECG sent over MLLP."""
    verify = run_cli("audit", "verify", env=stack.serve.env)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    export = run_cli("audit", "export", env=stack.serve.env)
    assert export.returncode == 0, export.stderr
    events = [json.loads(line) for line in export.stdout.splitlines() if line.strip()]
    subtypes = {c["code"] for e in events for c in e.get("subtype", [])}
    assert {
        "message.received",
        "ack.sent",
        "analysis.started",
        "analysis.finished",
        "report.written",
    } <= subtypes, subtypes
