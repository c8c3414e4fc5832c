"""Analyzer behaviour and golden outputs on the ten fixture records.

Golden values live in golden/analyzer_ptbxl_sample.json. After an intended model change,
rewrite them with ``ECGBRIDGE_ACCEPT_GOLDEN=1 pytest tests/inference/test_analyzer.py``
and review the diff.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from inference.analyzer import Analyzer
from inference.errors import EcgValidationError
from inference.record import LEADS_12, EcgRecord

GOLDEN = Path(__file__).resolve().parent / "golden" / "analyzer_ptbxl_sample.json"
GOLDEN_ATOL = 1e-5
BATCH_ATOL = 1e-5


def _probs(analyzer: Analyzer, records: list[EcgRecord]) -> dict[str, dict[str, float]]:
    """Every probability (and uncertainty) the analyzer reports, per record."""
    out: dict[str, dict[str, float]] = {}
    for result in analyzer.analyze_batch(records):
        assert result.triage is not None
        probs = {"mi": result.triage.probability} | {
            t.territory: t.probability for t in result.territories
        }
        if result.triage.uncertainty is not None:
            probs["mi_sd"] = result.triage.uncertainty
        if result.ischemia is not None:
            probs["ischemia"] = result.ischemia.probability
        probs |= {f"rhythm_{r.code}": r.probability for r in result.rhythms}
        out[result.record_id] = probs
    return out


def test_golden_outputs(analyzer: Analyzer, sample_records: list[EcgRecord]) -> None:
    probs = _probs(analyzer, sample_records)
    got = {"model_version": analyzer.model_version, "probabilities": probs}
    if os.environ.get("ECGBRIDGE_ACCEPT_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
        pytest.skip("golden file rewritten")
    expected = json.loads(GOLDEN.read_text())
    assert got["model_version"] == expected["model_version"], "model changed: accept golden?"
    for record_id, expected_probs in expected["probabilities"].items():
        for task, value in expected_probs.items():
            assert probs[record_id][task] == pytest.approx(value, abs=GOLDEN_ATOL)


def test_result_shape(analyzer: Analyzer, sample_records: list[EcgRecord]) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    result = analyzer.analyze(sample_records[3], now=now)
    assert result.analysed and result.quality.ok
    assert result.analysed_at == now
    assert result.model_version == analyzer.model_version
    assert result.triage is not None
    assert type(result.triage.probability) is float
    assert 0.0 <= result.triage.probability <= 1.0
    assert [(t.territory, t.vessel) for t in result.territories] == [
        ("anterior", "LAD"),
        ("inferior", "RCA"),
        ("lateral", "LCx"),
    ]
    assert all(type(t.probability) is float for t in result.territories)
    assert set(result.territory_probabilities()) == {"LAD", "RCA", "LCx"}
    meta = analyzer.weights.meta
    if "ischemia" in meta.tasks:
        assert result.ischemia is not None and 0.0 <= result.ischemia.probability <= 1.0
        assert [r.code for r in result.rhythms] == ["SR", "AFIB", "STACH", "SARRH", "SBRAD"]
        assert result.stenosis is not None and not result.stenosis.assessed
    if meta.n_members > 1:
        tri = result.triage
        assert tri.uncertainty is not None and tri.interval is not None
        assert tri.interval[0] <= tri.probability <= tri.interval[1]
        assert result.uncertainty_method == "ensemble-sd"
    out = result.to_json()
    json.dumps(out)
    assert {"model_version", "triage", "territory", "quality"} <= set(out)
    triage = out["triage"]
    assert isinstance(triage, dict)
    assert {"probability", "positive", "threshold"} <= set(triage)


def test_rhythm_of_the_fixture_records(analyzer: Analyzer, sample_records: list[EcgRecord]) -> None:
    if "rhythm_sr" not in analyzer.weights.meta.tasks:
        pytest.skip("model without rhythm heads")
    results = analyzer.analyze_batch(sample_records)
    rhythm = {r.record_id: (r.rhythm.code if r.rhythm else None) for r in results}
    # the cardiologists said SR for these and the model agrees; AFIB for ptbxl-9879
    assert rhythm["ptbxl-193"] == "SR" and rhythm["ptbxl-216"] == "SR"
    assert rhythm["ptbxl-9879"] == "AFIB"


def test_deterministic_and_batch_consistent(
    analyzer: Analyzer, sample_records: list[EcgRecord]
) -> None:
    batch = _probs(analyzer, sample_records)
    again = _probs(analyzer, sample_records)
    assert batch == again
    for rec in sample_records:
        single = _probs(analyzer, [rec])[rec.record_id]
        for task, value in single.items():
            assert value == pytest.approx(batch[rec.record_id][task], abs=BATCH_ATOL)


def test_refused_record(analyzer: Analyzer, sample_records: list[EcgRecord]) -> None:
    rec = sample_records[0]
    sig = rec.signals_mv.copy()
    sig[LEADS_12.index("V4")] = 0.0
    bad = EcgRecord(signals_mv=sig, lead_names=LEADS_12, fs_hz=rec.fs_hz, record_id="bad")
    results = analyzer.analyze_batch([bad, sample_records[1]])
    assert results[0].triage is None
    assert results[0].territories == ()
    assert not results[0].quality.ok
    assert results[0].quality.problems == ("V4 lead off",)
    assert results[0].to_json()["triage"] is None
    assert results[1].analysed


def test_eight_lead_record_matches_twelve(
    analyzer: Analyzer, sample_records: list[EcgRecord]
) -> None:
    rec = sample_records[6]
    keep = [0, 1, *range(6, 12)]
    eight = EcgRecord(
        signals_mv=np.ascontiguousarray(rec.signals_mv[keep]),
        lead_names=tuple(LEADS_12[i] for i in keep),
        fs_hz=rec.fs_hz,
        record_id="eight",
    )
    full, derived = analyzer.analyze(rec), analyzer.analyze(eight)
    assert full.triage is not None and derived.triage is not None
    assert derived.triage.probability == pytest.approx(full.triage.probability, abs=0.02)


def test_missing_precordial_lead_raises(
    analyzer: Analyzer, sample_records: list[EcgRecord]
) -> None:
    rec = sample_records[0]
    rec11 = EcgRecord(
        signals_mv=np.ascontiguousarray(rec.signals_mv[:11]),
        lead_names=LEADS_12[:11],
        fs_hz=rec.fs_hz,
        record_id="no-v6",
    )
    with pytest.raises(EcgValidationError):
        analyzer.analyze(rec11)


def test_empty_batch(analyzer: Analyzer) -> None:
    assert analyzer.analyze_batch([]) == []
