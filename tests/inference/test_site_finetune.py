"""Site stenosis fine-tuning: mechanics only, on a tiny synthetic fixture built here.

The ECGs are synthetic (Gaussian "beats" plus noise, with an ST shift in V1-V4 for "LAD
stenosis"): they test that the CSV is read, the head is fitted and cross-validated, the
weights are written and hash-pinned, and that the analyzer reports numbers only from a
validated head. They say nothing about how well stenosis can be predicted from an ECG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference.analyzer import Analyzer
from inference.record import LEADS_12, EcgRecord
from inference.site_finetune import (
    SiteLabelError,
    finetune,
    finetune_from_csv,
    read_site_labels,
)

FS_HZ = 500.0


def synthetic_ecg(seed: int, *, lad: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(10 * FS_HZ)) / FS_HZ
    rr = rng.uniform(0.7, 1.1)
    phase = t % rr
    qrs = np.exp(-((phase - 0.2) ** 2) / (2 * 0.012**2))
    twave = 0.3 * np.exp(-((phase - 0.45) ** 2) / (2 * 0.04**2))
    leads = []
    for i in range(12):
        gain = rng.uniform(0.5, 1.5) * (1 if i != 3 else -1)
        x = gain * (qrs + twave) + rng.normal(0, 0.02, t.size)
        if lad and 6 <= i <= 9:  # ST shift in V1-V4
            x += 0.25 * ((phase > 0.24) & (phase < 0.4))
        leads.append(x)
    return np.stack(leads).astype(np.float32)


def write_site(tmp_path: Path, n: int = 30) -> Path:
    ecg_dir = tmp_path / "ecgs"
    ecg_dir.mkdir()
    lines = ["ecg_file,lad_pct,lcx_pct,rca_pct,patient_id"]
    for i in range(n):
        lad = i % 2 == 0
        np.save(ecg_dir / f"e{i}.npy", synthetic_ecg(i, lad=lad))
        lines.append(
            f"ecgs/e{i}.npy,{90 if lad else 20},{80 if i % 3 == 0 else 0},{i % 5 * 20},p{i // 2}"
        )
    csv_path = tmp_path / "site_labels.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    return csv_path


def read_npy(path: Path) -> EcgRecord:
    return EcgRecord(
        signals_mv=np.load(path), lead_names=LEADS_12, fs_hz=FS_HZ, record_id=path.stem
    )


def test_read_site_labels(tmp_path: Path) -> None:
    csv_path = write_site(tmp_path, n=4)
    labels = read_site_labels(csv_path)
    assert len(labels) == 4
    assert labels[0].ecg_file == tmp_path / "ecgs" / "e0.npy"
    assert labels[0].stenosis_pct == (90.0, 80.0, 0.0)
    assert labels[3].patient_id == "p1"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("ecg_file,lad_pct,lcx_pct\na,1,2\n", "missing column"),
        ("ecg_file,lad_pct,lcx_pct,rca_pct\na,1,x,2\n", "lcx_pct 'x' is not a number"),
        ("ecg_file,lad_pct,lcx_pct,rca_pct\na,1,2,120\n", "outside 0-100"),
        ("ecg_file,lad_pct,lcx_pct,rca_pct\n,1,2,3\n", "empty ecg_file"),
        ("ecg_file,lad_pct,lcx_pct,rca_pct\n", "no rows"),
    ],
)
def test_bad_site_labels(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(SiteLabelError, match=match):
        read_site_labels(path)
    with pytest.raises(SiteLabelError, match="cannot read"):
        read_site_labels(tmp_path / "missing.csv")


def test_too_few_cases_is_not_validated_and_reports_not_assessed(tmp_path: Path) -> None:
    csv_path = write_site(tmp_path)
    report = finetune_from_csv(
        csv_path, read_ecg=read_npy, out_dir=tmp_path / "out", n_bootstrap=50, steps=50
    )
    assert not report.validated
    assert report.n == 30 and report.n_refused == 0
    assert any("positives" in r for r in report.reasons)
    meta = report.weights.meta
    assert report.weights.path.name.startswith("ecgbridge-")
    assert "-site-site-labels-" in report.weights.path.name
    assert meta.stenosis is not None and meta.stenosis["validated"] is False
    assert meta.stenosis["validation"] == "5-fold cross-validation grouped by patient"
    report.weights.verify()
    result = Analyzer.load(report.weights, device="cpu").analyze(read_npy(tmp_path / "ecgs/e0.npy"))
    assert result.stenosis is not None and not result.stenosis.assessed
    assert result.stenosis.findings == ()
    assert "did not pass its validation" in result.stenosis.reason
    assert "vessels" not in result.to_json()["stenosis"]  # type: ignore[operator]


def test_validated_head_reports_numbers(tmp_path: Path) -> None:
    csv_path = write_site(tmp_path)
    labels = read_site_labels(csv_path)
    records = [read_npy(label.ecg_file) for label in labels]
    report = finetune(
        records=records,
        stenosis_pct=[label.stenosis_pct for label in labels],
        out_dir=tmp_path / "out",
        site="Test Hospital",
        min_positives=5,
        min_auroc_lower=0.0,
        n_bootstrap=50,
        steps=50,
    )
    assert report.validated, report.reasons
    assert set(report.metrics) == {"LAD", "LCx", "RCA"}
    assert report.metrics["LAD"]["n_pos"] == 15
    analyzer = Analyzer.load(report.weights, device="cpu")
    assert "site-test-hospital" in analyzer.model_version
    result = analyzer.analyze(records[0])
    assert result.stenosis is not None and result.stenosis.assessed
    assert [f.vessel for f in result.stenosis.findings] == ["LAD", "LCx", "RCA"]
    assert all(0.0 <= f.probability <= 1.0 for f in result.stenosis.findings)
    assert set(result.to_json()["stenosis"]["vessels"]) == {"LAD", "LCx", "RCA"}  # type: ignore[index]
    # the other heads are untouched by the site head
    base = Analyzer.load(device="cpu").analyze(records[0])
    assert base.triage is not None and result.triage is not None
    assert result.triage.probability == pytest.approx(base.triage.probability, abs=1e-6)


def test_shape_and_size_errors(tmp_path: Path) -> None:
    rec = read_npy_from(synthetic_ecg(0, lad=True))
    with pytest.raises(SiteLabelError, match="must be"):
        finetune(records=[rec], stenosis_pct=[[1.0, 2.0]], out_dir=tmp_path)
    with pytest.raises(SiteLabelError, match="too few"):
        finetune(records=[rec] * 3, stenosis_pct=[[1.0, 2.0, 3.0]] * 3, out_dir=tmp_path)


def read_npy_from(sig: np.ndarray) -> EcgRecord:
    return EcgRecord(signals_mv=sig, lead_names=LEADS_12, fs_hz=FS_HZ, record_id="syn")
