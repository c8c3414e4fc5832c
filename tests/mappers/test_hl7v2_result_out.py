"""`mappers.hl7v2_result_out`: the ORU^R01 result message, from the domain objects and from the
FHIR report, validated as an HL7 v2.5.1 ORU_R01 by hl7apy."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from inference.analyzer import Analyzer
from inference.result import AnalysisResult, QualityReport
from integration.samples import Sample, load_samples
from mappers.fhir_report import build_report
from mappers.hl7v2_result_out import (
    build_result_oru,
    report_result_oru,
    result_control_id,
    result_status,
)

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
EXPLANATION = {
    "method": "occlusion",
    "attributions": [
        {"lead": "V2", "segment": "ST", "share": 0.31},
        {"lead": "V3", "segment": "ST", "share": 0.2},
    ],
    "counterfactual": {
        "valid": True,
        "original_probability": 0.81,
        "new_probability": 0.12,
        "method": "segment-edit",
        "edits": [
            {"lead": "V3", "segment": "ST", "delta_mv": -0.2},
            {"lead": "V2", "segment": "QRS", "wave": "R", "delta_mv": 0.1},
        ],
    },
}
SUMMARY = (
    "Main drivers: V2 ST (31%), V3 ST (20%). What would flip it: V3 ST -0.20 mV, "
    "V2 QRS (R wave) +0.10 mV (MI probability 81% -> 12%)."
)


@pytest.fixture(scope="module")
def cases() -> dict[str, tuple[AnalysisResult, Sample]]:
    analyzer = Analyzer.load(device="cpu")
    out: dict[str, tuple[AnalysisResult, Sample]] = {}
    for sample in load_samples():
        result = analyzer.analyze(sample.record, now=NOW)
        assert result.triage is not None
        out.setdefault("positive" if result.triage.positive else "negative", (result, sample))
    assert set(out) == {"positive", "negative"}
    return out


def _segments(message: bytes) -> list[list[str]]:
    return [s.split("|") for s in message.decode().split("\r")]


def _obx(message: bytes) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {}
    for seg in _segments(message):
        if seg[0] == "OBX":
            out.setdefault(seg[3].split("^")[0], []).append(seg)
    return out


def _strict(message: bytes) -> Any:
    msg = parse_message(message.decode(), validation_level=VALIDATION_LEVEL.STRICT)
    assert msg.validate()
    return msg


@pytest.mark.parametrize("case", ["positive", "negative"])
@pytest.mark.parametrize("status", ["P", "F"])
def test_message_is_a_valid_oru_r01_with_the_status(
    cases: dict[str, tuple[AnalysisResult, Sample]], case: str, status: str
) -> None:
    result, sample = cases[case]
    message = build_result_oru(
        result,
        sample.record,
        control_id="C1",
        now=NOW,
        status=status,  # type: ignore[arg-type]
    )
    msg = _strict(message)
    assert msg.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert msg.msh.msh_12.to_er7() == "2.5.1"
    obr = next(s for s in _segments(message) if s[0] == "OBR")
    assert obr[25] == status
    assert {s[11] for s in _segments(message) if s[0] == "OBX"} == {status}


def test_probabilities_territories_and_ids(
    cases: dict[str, tuple[AnalysisResult, Sample]],
) -> None:
    result, sample = cases["positive"]
    assert result.triage is not None
    record = replace(sample.record, identifiers=(*sample.record.identifiers, ("placer", "PO-7")))
    message = build_result_oru(result, record, control_id="C1", now=NOW)
    segs = {s[0]: s for s in _segments(message)}
    assert segs["MSH"][9] == "C1"
    assert record.patient is not None
    assert segs["PID"][3] == record.patient.value
    assert segs["PID"][8] == "M"
    assert (segs["OBR"][2], segs["OBR"][3]) == ("PO-7", record.record_id)
    obx = _obx(message)
    assert obx["TRIAGE"][0][5].split("^")[0] == "POS" and obx["TRIAGE"][0][8] == "A"
    prob = obx["MI-PROB"][0]
    assert float(prob[5]) == pytest.approx(result.triage.probability, abs=5e-5)
    assert prob[7] == f"<{result.triage.threshold:.4f}"
    by_vessel = {s[4]: s for s in obx["TERR-PROB"]}
    assert set(by_vessel) == {t.vessel for t in result.territories}
    for t in result.territories:
        assert float(by_vessel[t.vessel][5]) == pytest.approx(t.probability, abs=5e-5)
        assert by_vessel[t.vessel][8] == ("A" if t.positive else "N")
    assert "Acute MI/injury suspected" in obx["CONCLUSION"][0][5]
    assert "EXPLANATION" not in obx  # not explained
    assert {s[18] for v in obx.values() for s in v} == {f"{result.model_version}^ecgbridge"}


def test_explanation_summary_is_an_obx(cases: dict[str, tuple[AnalysisResult, Sample]]) -> None:
    result, sample = cases["positive"]
    explained = replace(result, explanation=EXPLANATION)
    message = build_result_oru(explained, sample.record, control_id="C1", now=NOW)
    _strict(message)
    assert _obx(message)["EXPLANATION"][0][5] == SUMMARY


def test_not_analysed_says_why_with_status_x(
    cases: dict[str, tuple[AnalysisResult, Sample]],
) -> None:
    result, sample = cases["negative"]
    refused = replace(
        result, triage=None, territories=(), quality=QualityReport(False, ("lead V1 flat",))
    )
    message = build_result_oru(refused, sample.record, control_id="C1", now=NOW, status="P")
    _strict(message)
    obx = _obx(message)
    assert obx["TRIAGE"][0][5].startswith("NA^")
    assert "MI-PROB" not in obx
    assert obx["CONCLUSION"][0][5] == "Not analysed: lead V1 flat."
    assert next(s for s in _segments(message) if s[0] == "OBR")[25] == "X"


def test_control_id_is_one_per_report_and_status() -> None:
    ids = {result_control_id(r, s) for r in ("ecg-a", "ecg-b") for s in ("P", "F")}
    assert len(ids) == 4
    assert result_control_id("ecg-a", "P") == result_control_id("ecg-a", "P")
    assert all(len(i) == 20 for i in ids)


@pytest.mark.parametrize("case", ["positive", "negative"])
def test_report_path_says_what_the_domain_path_says(
    cases: dict[str, tuple[AnalysisResult, Sample]], case: str
) -> None:
    """From the FHIR report (what a writer has): the same OBX, status from the report; the
    report holds no placer number and no sex (OBR-2, PID-8 empty)."""
    result, sample = cases[case]
    explained = replace(result, explanation=EXPLANATION)
    for preliminary, status in ((True, "P"), (False, "F")):
        resources = build_report(
            explained, sample.record, report_id="ecg-r1", issued=NOW, preliminary=preliminary
        )
        via_report = report_result_oru(resources, control_id="C1", now=NOW)
        direct = build_result_oru(
            explained,
            sample.record,
            control_id="C1",
            now=NOW,
            status=status,  # type: ignore[arg-type]
        )
        _strict(via_report)
        got, want = _segments(via_report), _segments(direct)
        assert [s for s in got if s[0] == "OBX"] == [s for s in want if s[0] == "OBX"]
        obr = next(s for s in got if s[0] == "OBR")
        assert (obr[2], obr[3], obr[25]) == ("", sample.record.record_id, status)
        assert obr[7] == next(s for s in want if s[0] == "OBR")[7]


def test_result_status_of_report_statuses() -> None:
    assert [result_status(s) for s in ("preliminary", "final", "cancelled")] == ["P", "F", "X"]
    with pytest.raises(ValueError, match="entered-in-error"):
        result_status("entered-in-error")
