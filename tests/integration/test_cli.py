"""`ecgbridge` as a user runs it: analyze files of every foundation format, evaluate,
and clear errors (exit 2) for bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from integration.samples import SAMPLE_DIR, load_samples
from mappers.fhir_r4 import record_to_observation
from mappers.hl7v2 import build_oru_r01

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
EXE = str(Path(sys.executable).parent / "ecgbridge")


def run(*args: str, env_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
        "ECGBRIDGE_DATA_DIR": str(env_dir),
        "ECGBRIDGE_OUT_DIR": str(env_dir / "out"),
    }
    return subprocess.run(
        [EXE, *args], capture_output=True, text=True, timeout=300, env=env, check=False
    )


def test_analyze_json_for_wfdb_hl7_and_fhir_files(tmp_path: Path) -> None:
    sample = load_samples()[3]
    hl7 = tmp_path / "ecg.hl7"
    hl7.write_bytes(build_oru_r01(sample.record, control_id="CLI1", now=datetime.now(UTC)))
    fhir = tmp_path / "ecg.json"
    fhir.write_text(json.dumps(record_to_observation(sample.record)))
    proc = run(
        "analyze",
        str(FIXTURES / "wfdb" / "HR06000.hea"),
        str(hl7),
        str(fhir),
        "--json",
        env_dir=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [Path(x["source"]).name for x in lines] == ["HR06000.hea", "ecg.hl7", "ecg.json"]
    for line in lines:
        assert set(line) >= {"source", "model_version", "triage", "territory", "quality"}
        assert set(line["territory"]) == {"LAD", "RCA", "LCx"}
        assert 0.0 <= line["triage"]["probability"] <= 1.0
        fairness = line["fairness"]
        assert fairness["verdict"] in ("stable", "demographic-sensitive")
        assert 0.0 <= fairness["adjusted_probability"] <= 1.0
        assert set(fairness["by_demographic"]) == {"male", "female", "<40", "40-65", ">65"}
        assert fairness["max_shift"] == pytest.approx(
            max(abs(v - fairness["own_probability"]) for v in fairness["by_demographic"].values())
        )
    # The same ECG through HL7 and FHIR gives the same answer.
    assert lines[1]["triage"] == pytest.approx(lines[2]["triage"])
    reports = (tmp_path / "out" / "DiagnosticReport.ndjson").read_text().splitlines()
    assert len(reports) == 3
    # Analysing the same files again writes no second report.
    assert run("analyze", str(hl7), env_dir=tmp_path).returncode == 0
    assert len((tmp_path / "out" / "DiagnosticReport.ndjson").read_text().splitlines()) == 3


def test_corrupt_wfdb_names_the_file_and_field_and_exits_2(tmp_path: Path) -> None:
    for name in ("HR06000.hea", "HR06000.mat"):
        shutil.copy(FIXTURES / "wfdb" / name, tmp_path / name)
    header = tmp_path / "HR06000.hea"
    lines = header.read_text().splitlines()
    first = lines[0].split()
    first[2] = "abc"  # the sampling frequency
    header.write_text("\n".join([" ".join(first), *lines[1:]]) + "\n")
    proc = run("analyze", str(header), env_dir=tmp_path)
    assert proc.returncode == 2
    assert "HR06000.hea" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_truncated_signal_file_exits_2(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "wfdb" / "HR06000.hea", tmp_path / "HR06000.hea")
    data = (FIXTURES / "wfdb" / "HR06000.mat").read_bytes()
    (tmp_path / "HR06000.mat").write_bytes(data[: len(data) // 3])
    proc = run("analyze", str(tmp_path / "HR06000.hea"), env_dir=tmp_path)
    assert proc.returncode == 2
    assert "HR06000.hea" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_format_and_missing_file_exit_2(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01garbage")
    proc = run("analyze", str(junk), str(tmp_path / "missing.hl7"), env_dir=tmp_path)
    assert proc.returncode == 2
    assert "junk.bin" in proc.stderr


def test_evaluate_writes_the_contract_json(tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    proc = run(
        "evaluate",
        "--data",
        str(SAMPLE_DIR),
        "--out",
        str(out),
        "--bootstrap",
        "50",
        env_dir=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["n"] == len(load_samples())
    assert set(report["tasks"]) >= {"mi", "anterior", "inferior", "lateral"}
    mi = report["tasks"]["mi"]
    assert set(mi) >= {
        "auroc",
        "ci95",
        "n_pos",
        "sensitivity",
        "specificity",
        "by_sex",
        "by_age_band",
    }
    assert set(mi["by_age_band"]) == {"<40", "40-65", ">65"}
    assert set(report["subgroups"]["sex"]) == {"male", "female"}
    assert "sensitivity_gap_sex" in report["fairness"]
    png = out.with_suffix(".reliability.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "fairness (MI): auroc_gap_sex" in proc.stdout


def test_evaluate_on_a_folder_without_the_layout_exits_2(tmp_path: Path) -> None:
    proc = run(
        "evaluate", "--data", str(tmp_path), "--out", str(tmp_path / "e.json"), env_dir=tmp_path
    )
    assert proc.returncode == 2
    assert "records.csv" in proc.stderr
