"""The AnalysisResult JSON contract (`ecgbridge analyze --json`) with the issue-5 outputs."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

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


def full_result(**kw: object) -> AnalysisResult:
    base = AnalysisResult(
        record_id="r1",
        model_version="m+1",
        quality=QualityReport(ok=True),
        triage=TriageResult(0.3, 0.2, uncertainty=0.05, interval=(0.15, 0.4)),
        territories=(
            TerritoryFinding("anterior", "LAD", 0.6, 0.5, 0.1, (0.4, 0.7)),
            TerritoryFinding("inferior", "RCA", 0.1, 0.5, 0.01, (0.05, 0.12)),
            TerritoryFinding("lateral", "LCx", 0.05, 0.1, 0.0, (0.05, 0.05)),
        ),
        ischemia=IschemiaResult(0.4, 0.3, 0.02, (0.35, 0.45)),
        rhythms=(
            RhythmFinding("SR", "sinus rhythm", 0.2, 0.5),
            RhythmFinding("AFIB", "atrial fibrillation", 0.9, 0.3),
            RhythmFinding("STACH", "sinus tachycardia", 0.6, 0.5),
        ),
        stenosis=STENOSIS_NOT_ASSESSED,
        uncertainty_method="ensemble-sd",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_json_keeps_the_foundation_keys_and_adds_the_new_outputs() -> None:
    out = full_result().to_json()
    json.dumps(out)
    assert {"model_version", "triage", "territory", "territory_positive", "quality"} <= set(out)
    assert out["triage"] == {
        "probability": 0.3,
        "positive": True,
        "threshold": 0.2,
        "uncertainty": 0.05,
        "uncertain": True,  # members range 0.15-0.40 straddles the threshold 0.2
    }
    assert out["territory"] == {"LAD": 0.6, "RCA": 0.1, "LCx": 0.05}
    assert out["territory_positive"] == ["LAD"]
    assert out["ischemia"] == {
        "probability": 0.4,
        "positive": True,
        "threshold": 0.3,
        "uncertainty": 0.02,
        "uncertain": False,
    }
    assert out["rhythm"] == {
        "label": "AFIB",
        "display": "atrial fibrillation",
        "probabilities": {"SR": 0.2, "AFIB": 0.9, "STACH": 0.6},
        "positive": ["AFIB", "STACH"],
    }
    assert out["stenosis"] == {"assessed": False, "reason": STENOSIS_NOT_ASSESSED.reason}
    assert out["uncertainty"] == {"method": "ensemble-sd", "triage_interval": [0.15, 0.4]}
    # the CLI test compares triage dicts with pytest.approx: keep them flat
    assert pytest.approx(out["triage"]) == out["triage"]


def test_undetermined_rhythm_and_assessed_stenosis() -> None:
    res = full_result(
        rhythms=(RhythmFinding("SR", "sinus rhythm", 0.2, 0.5),),
        stenosis=StenosisAssessment(
            assessed=True,
            reason="site fine-tuned and validated (H1)",
            findings=(StenosisFinding("LAD", 0.8, 0.5), StenosisFinding("RCA", 0.1, 0.5)),
        ),
    )
    assert res.rhythm is None
    out = res.to_json()
    assert out["rhythm"]["label"] is None and out["rhythm"]["display"] == "undetermined"  # type: ignore[index]
    assert out["stenosis"]["vessels"]["LAD"] == {  # type: ignore[index]
        "probability": 0.8,
        "threshold": 0.5,
        "positive": True,
    }


def test_foundation_style_result_still_serialises() -> None:
    res = AnalysisResult(
        record_id="r",
        model_version="m",
        quality=QualityReport(ok=True),
        triage=TriageResult(0.5, 0.4),
    )
    out = res.to_json()
    assert out["triage"]["uncertainty"] is None and out["triage"]["uncertain"] is False  # type: ignore[index]
    assert out["territory"] is None and out["rhythm"] is None and out["ischemia"] is None
    assert out["stenosis"]["assessed"] is False  # type: ignore[index]
    assert not res.uncertain
    refused = AnalysisResult("r", "m", QualityReport(ok=False, problems=("V1 lead off",)), None)
    assert refused.to_json()["triage"] is None and not refused.uncertain
