"""DiagnosticReport with the issue-5 outputs: ischaemia, rhythm, stenosis "not assessed",
uncertainty components. Every resource is validated as R4 (fhir.resources.R4B)."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.provenance import Provenance

from inference.record import EcgRecord
from inference.result import (
    STENOSIS_NOT_ASSESSED,
    AnalysisResult,
    IschemiaResult,
    QualityReport,
    RhythmFinding,
    StenosisAssessment,
    StenosisFinding,
    TerritoryFinding,
    TriageResult,
)
from mappers.fhir_device import (
    ModelCard,
    model_card_document,
    model_card_id,
    model_device_id,
    model_resources,
)
from mappers.fhir_json import resource_json
from mappers.fhir_report import RHYTHM_SNOMED, ReportResources, build_report, report_bundle
from tests.mappers.conftest import NOW


def result(
    *,
    triage: TriageResult | None = None,
    stenosis: StenosisAssessment | None = STENOSIS_NOT_ASSESSED,
    rhythms: tuple[RhythmFinding, ...] | None = None,
) -> AnalysisResult:
    return AnalysisResult(
        record_id="ptbxl-9879",
        model_version="ecgbridge-resnet1d-0.2.0+abcdef12",
        quality=QualityReport(ok=True),
        triage=triage or TriageResult(0.8312345678, 0.2, uncertainty=0.0412, interval=(0.7, 0.9)),
        territories=(
            TerritoryFinding("anterior", "LAD", 0.71, 0.5, 0.05, (0.6, 0.8)),
            TerritoryFinding("inferior", "RCA", 0.2, 0.5, 0.3, (0.1, 0.55)),
            TerritoryFinding("lateral", "LCx", 0.1, 0.5, 0.01, (0.09, 0.11)),
        ),
        analysed_at=NOW,
        ischemia=IschemiaResult(0.35, 0.3, 0.02, (0.33, 0.37)),
        rhythms=rhythms
        if rhythms is not None
        else (
            RhythmFinding("SR", "sinus rhythm", 0.1, 0.5),
            RhythmFinding("AFIB", "atrial fibrillation", 0.92, 0.3),
        ),
        stenosis=stenosis,
        uncertainty_method="ensemble-sd",
    )


def validated(res: ReportResources) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    report = resource_json(res.diagnostic_report)
    DiagnosticReport.model_validate(report)
    Provenance.model_validate(resource_json(res.provenance))
    obs = {}
    for o in res.observations:
        data = resource_json(o)
        Observation.model_validate(data)
        obs[data["id"]] = data
    return report, obs


def _component(obs: dict[str, Any], code: str) -> dict[str, Any]:
    return next(c for c in obs["component"] if c["code"]["coding"][0]["code"] == code)


def test_ids_order_and_values(record: EcgRecord) -> None:
    report, obs = validated(build_report(result(), record, report_id="rep", issued=NOW))
    assert [r["reference"] for r in report["result"]] == [
        "Observation/rep-triage",
        "Observation/rep-territory-lad",
        "Observation/rep-territory-rca",
        "Observation/rep-territory-lcx",
        "Observation/rep-ischemia",
        "Observation/rep-rhythm",
        "Observation/rep-stenosis",
    ]
    triage = obs["rep-triage"]
    assert triage["valueQuantity"]["value"] == 83.1235  # % with 4 decimals
    assert _component(triage, "probability-sd")["valueQuantity"]["value"] == 4.12
    rng = _component(triage, "ensemble-range")["valueRange"]
    assert rng["low"]["value"] == 70.0 and rng["high"]["value"] == 90.0
    isc = obs["rep-ischemia"]
    assert isc["valueQuantity"]["value"] == 35.0
    assert isc["interpretation"][0]["coding"][0]["code"] == "H"
    assert isc["referenceRange"][0]["high"]["value"] == 30.0


def test_uncertain_call_is_flagged(record: EcgRecord) -> None:
    uncertain = TriageResult(0.25, 0.2, uncertainty=0.1, interval=(0.1, 0.4))
    report, obs = validated(
        build_report(result(triage=uncertain), record, report_id="u", issued=NOW)
    )
    assert "ensemble members disagree" in report["conclusion"]
    assert any("disagree" in n["text"] for n in obs["u-triage"]["note"])
    # RCA 0.2 with members 0.1-0.55 around 0.5: flagged too; LAD is not
    assert any("disagree" in n["text"] for n in obs["u-territory-rca"]["note"])
    assert not any("disagree" in n["text"] for n in obs["u-territory-lad"]["note"])


def test_rhythm_observation(record: EcgRecord) -> None:
    report, obs = validated(build_report(result(), record, report_id="r", issued=NOW))
    rhythm = obs["r-rhythm"]
    assert rhythm["valueCodeableConcept"]["coding"][0] == {
        "system": "http://snomed.info/sct",
        "code": RHYTHM_SNOMED["AFIB"][0],
        "display": "Atrial fibrillation",
    }
    afib = _component(rhythm, "rhythm-afib")
    assert afib["valueQuantity"]["value"] == 92.0
    assert afib["interpretation"][0]["coding"][0]["code"] == "H"
    assert "Rhythm: atrial fibrillation (92%)." in report["conclusion"]
    none = (RhythmFinding("SR", "sinus rhythm", 0.1, 0.5),)
    report, obs = validated(build_report(result(rhythms=none), record, report_id="r2", issued=NOW))
    assert obs["r2-rhythm"]["valueCodeableConcept"]["text"].startswith("undetermined")
    assert "Rhythm: undetermined." in report["conclusion"]


def test_stenosis_not_assessed_has_no_value(record: EcgRecord) -> None:
    report, obs = validated(build_report(result(), record, report_id="s", issued=NOW))
    sten = obs["s-stenosis"]
    assert "valueQuantity" not in sten and "component" not in sten
    assert sten["dataAbsentReason"]["coding"][0]["code"] == "not-performed"
    assert "not assessed" in sten["note"][0]["text"]
    assert "Stenosis >70%: not assessed." in report["conclusion"]


def test_validated_stenosis_has_one_component_per_vessel(record: EcgRecord) -> None:
    sten = StenosisAssessment(
        assessed=True,
        reason="site fine-tuned and validated (H1)",
        findings=(
            StenosisFinding("LAD", 0.81, 0.4),
            StenosisFinding("LCx", 0.1, 0.4),
            StenosisFinding("RCA", 0.2, 0.4),
        ),
    )
    report, obs = validated(build_report(result(stenosis=sten), record, report_id="v", issued=NOW))
    s = obs["v-stenosis"]
    assert "dataAbsentReason" not in s
    assert [c["code"]["coding"][0]["code"] for c in s["component"]] == [
        "stenosis-lad",
        "stenosis-lcx",
        "stenosis-rca",
    ]
    assert s["component"][0]["valueQuantity"]["value"] == 81.0
    assert "Stenosis >70% (site-validated model): LAD." in report["conclusion"]


def test_foundation_result_gets_no_new_observations(record: EcgRecord) -> None:
    old = AnalysisResult(
        record_id="x",
        model_version="m",
        quality=QualityReport(ok=True),
        triage=TriageResult(0.1, 0.2),
        territories=(TerritoryFinding("anterior", "LAD", 0.1, 0.5),),
    )
    report, obs = validated(build_report(old, record, report_id="f", issued=NOW))
    assert list(obs) == ["f-triage", "f-territory-lad"]
    assert "component" not in obs["f-triage"]
    assert "Stenosis >70%: not assessed." in report["conclusion"]


def test_bundle_puts_every_new_observation(record: EcgRecord) -> None:
    bundle = report_bundle(build_report(result(), record, report_id="b", issued=NOW))
    urls = [e["request"]["url"] for e in bundle["entry"]]
    assert "Observation/b-rhythm" in urls and "Observation/b-stenosis" in urls
    assert len(resource_json_provenance(bundle)["target"]) == 8


def resource_json_provenance(bundle: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = bundle["entry"][-1]["resource"]
    assert entry["resourceType"] == "Provenance"
    return entry


# --------------------------------------------------- the model as a Device (AI Transparency)


def test_provenance_and_observations_name_the_model_device(record: EcgRecord) -> None:
    res = build_report(result(), record, report_id="d", issued=NOW)
    version = res.model_version
    assert version == "ecgbridge-resnet1d-0.2.0+abcdef12"
    prov = resource_json(res.provenance)
    who = prov["agent"][0]["who"]
    assert who["reference"] == f"Device/{model_device_id(version)}"
    assert who["identifier"] == {"system": "urn:ecgbridge:model", "value": version}
    roles = {e["role"]: e["what"] for e in prov["entity"]}
    assert roles["derivation"]["reference"] == f"DocumentReference/{model_card_id(version)}"
    for obs in res.observations:
        assert resource_json(obs)["device"]["reference"] == f"Device/{model_device_id(version)}"


def test_model_device_and_card_are_deterministic_per_version() -> None:
    card = ModelCard(markdown=b"# card\n")
    a, b = model_resources("v1", card), model_resources("v1", card)
    assert resource_json(a.device) == resource_json(b.device)
    assert resource_json(a.model_card) == resource_json(b.model_card)
    assert model_device_id("v1") != model_device_id("v2")
    assert model_card_id("v1") != model_card_id("v2")
    for rid in (model_device_id("v" * 300), model_card_id("a/b c")):
        assert len(rid) <= 64 and all(c.isalnum() or c in "-." for c in rid)

    device = resource_json(a.device)
    Device.model_validate(device)
    assert device["deviceName"] == [{"name": "ecgbridge ECG triage model", "type": "model-name"}]
    assert device["version"] == [{"value": "v1"}]
    assert device["manufacturer"] == "ecgbridge"
    assert device["type"]["coding"][0]["code"] == "Artificial-Intelligence"
    assert device["meta"]["security"][0]["code"] == "AIAST"
    assert "udiCarrier" not in device
    (ext,) = device["extension"]
    assert ext["url"].endswith("aitransparency.modelCardDescription")
    assert ext["valueReference"]["reference"] == f"DocumentReference/{model_card_id('v1')}"

    doc = resource_json(a.model_card)
    DocumentReference.model_validate(doc)
    (content,) = doc["content"]
    att = content["attachment"]
    assert att["contentType"] == "text/markdown"
    assert base64.b64decode(att["data"]) == b"# card\n" and att["size"] == 7
    assert base64.b64decode(att["hash"]) == hashlib.sha1(b"# card\n").digest()  # noqa: S324
    assert doc["type"]["coding"][0]["code"] == "AIModelCard"


def test_model_card_by_url_only_and_bad_input() -> None:
    doc = resource_json(model_card_document("v1", ModelCard(url="https://example.org/card.md")))
    att = doc["content"][0]["attachment"]
    assert att["url"] == "https://example.org/card.md"
    assert "data" not in att and "hash" not in att
    with pytest.raises(ValueError, match="needs its markdown text or a url"):
        ModelCard()
    with pytest.raises(ValueError, match="model version is empty"):
        model_device_id("")


def test_audit_event_of_each_write(record: EcgRecord) -> None:
    prelim = build_report(result(), record, report_id="a", issued=NOW, preliminary=True)
    final = build_report(result(), record, report_id="a", issued=NOW)
    assert prelim.audit_event is not None and final.audit_event is not None
    first, second = resource_json(prelim.audit_event), resource_json(final.audit_event)
    AuditEvent.model_validate(second)
    assert (first["id"], second["id"]) == ("a-audit-preliminary", "a-audit-final")
    assert second["type"]["code"] == "rest"
    assert second["subtype"][0] == {
        "system": "http://hl7.org/fhir/restful-interaction",
        "code": "create",
        "display": "create",
    }
    assert (second["action"], second["outcome"]) == ("C", "0")
    assert second["recorded"] == resource_json(final.diagnostic_report)["issued"]
    (agent,) = second["agent"]
    assert agent["requestor"] is True
    assert agent["who"]["reference"] == f"Device/{model_device_id(final.model_version)}"
    assert second["source"]["observer"]["reference"] == agent["who"]["reference"]
    report_entity, *patient = second["entity"]
    assert report_entity["what"] == {"reference": "DiagnosticReport/a"}
    assert report_entity["detail"] == [{"type": "status", "valueString": "final"}]
    subject = resource_json(final.diagnostic_report).get("subject")
    if subject is None:
        assert patient == []
    else:
        assert [p["what"] for p in patient] == [subject]
        assert patient[0]["role"]["code"] == "1"


def test_bundle_with_the_model_puts_it_first(record: EcgRecord) -> None:
    res = build_report(result(), record, report_id="m", issued=NOW)
    model = model_resources(res.model_version, ModelCard(markdown=b"# card"))
    bundle = report_bundle(res, model=model)
    urls = [e["request"]["url"] for e in bundle["entry"]]
    assert urls[:3] == [
        f"DocumentReference/{model_card_id(res.model_version)}",
        f"Device/{model_device_id(res.model_version)}",
        "DiagnosticReport/m",
    ]
    assert urls[-2:] == ["AuditEvent/m-audit-final", "Provenance/m-provenance"]


# ------------------------------------------------ the JSON written is the JSON validated


def test_written_json_is_what_the_validated_models_serialise_to(record: EcgRecord) -> None:
    """Writers send the dicts the models were validated from (serialising through
    fhir.resources cost ~16 ms per report): they must be exactly the models' own JSON,
    UTC instants as ``Z`` included; and a model swapped in later is serialised."""
    east = datetime(2026, 11, 2, 11, 0, tzinfo=timezone(timedelta(hours=2)))
    for issued in (NOW, east):
        res = build_report(result(), record, report_id="j", issued=issued)
        models = [res.diagnostic_report, *res.observations, res.provenance]
        assert all(id(m) in res.validated_json for m in models)
        for m in [*models, res.audit_event]:
            assert m is not None
            assert res.json_of(m) == resource_json(m)
        assert res.json_of(res.diagnostic_report) is not res.json_of(res.diagnostic_report)
    swapped_in = DiagnosticReport.model_validate(
        resource_json(res.diagnostic_report) | {"status": "amended"}
    )
    swapped = replace(res, diagnostic_report=swapped_in)
    assert swapped.json_of(swapped_in)["status"] == "amended"
    # a recycled id never picks up another resource's JSON: the entry keeps its model
    impostor = DiagnosticReport.model_validate(resource_json(res.diagnostic_report))
    fake = replace(res, validated_json={id(impostor): (res.diagnostic_report, {"x": 1})})
    assert fake.json_of(impostor) == resource_json(impostor)


def test_transaction_bundle_entries_are_the_validated_json(record: EcgRecord) -> None:
    res = build_report(result(), record, report_id="t", issued=NOW)
    bundle = report_bundle(res)
    Bundle.model_validate(bundle)  # the whole Bundle is valid R4, entries included
    by_ref = {f"{e['resourceType']}/{e['id']}": e for e in map(res.json_of, res.observations)}
    for entry in bundle["entry"]:
        data = entry["resource"]
        if data["resourceType"] == "Observation":
            assert data == by_ref[f"Observation/{data['id']}"]
