"""FHIR AuditEvent export (validated with fhir.resources R4B), the CLI, and retention."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
from datetime import timedelta
from pathlib import Path

import pytest
from fhir.resources.R4B.auditevent import AuditEvent as FhirAuditEvent

from integration.audit import AuditLog, EventKind, MemoryStore, SearchQuery
from integration.audit.cli import cli_main
from integration.audit.export import PATIENT_KEY_SYSTEM, export_ndjson
from integration.audit.retention import archive_expired
from tests.audit.conftest import T0, EventFactory


@pytest.fixture
def log(make_event: EventFactory) -> AuditLog:
    log = AuditLog.in_memory(head_interval=4, head_max_age_s=3600)
    log.append(make_event(0, patient="MRN-1"))
    log.append(
        make_event(
            1,
            patient="MRN-1",
            kind=EventKind.ANALYSIS_FINISHED,
            model_version="triage-1.0",
            finding="triage-positive",
            detail={"probability": 0.91, "fairness": "stable"},
        )
    )
    log.append(
        make_event(
            2,
            patient="MRN-2",
            kind=EventKind.REPORT_WRITTEN,
            resource="DiagnosticReport/abc/_history/1",
        )
    )
    log.append(make_event(3, patient=None, kind=EventKind.AUTH_FAILURE))
    return log


def test_export_is_valid_r4_auditevent_and_audited(log: AuditLog) -> None:
    buf = io.StringIO()
    n = export_ndjson(log, SearchQuery(), buf, actor="reviewer:alice")
    lines = buf.getvalue().splitlines()
    assert n == len(lines) == 4
    for line in lines:  # every line is a valid R4 AuditEvent
        FhirAuditEvent.model_validate_json(line)
    events = [json.loads(line) for line in lines]
    assert {e["type"]["code"] for e in events} == {"110110", "110114"}
    ae = events[1]
    assert ae["entity"][0]["what"]["identifier"]["system"] == PATIENT_KEY_SYSTEM
    assert "MRN-1" not in buf.getvalue()
    details = {d["type"]: d["valueString"] for d in ae["entity"][1]["detail"]}
    assert details["model_version"] == "triage-1.0" and details["probability"] == "0.91"
    [exported] = log.search(SearchQuery(kinds=(EventKind.AUDIT_EXPORTED.value,)))
    assert exported.actor == "reviewer:alice" and exported.detail["count"] == 4


def test_export_filters_and_phi(log: AuditLog) -> None:
    buf = io.StringIO()
    q = SearchQuery(patient_key=log.patient_key("MRN-1"), model_version="triage-1.0")
    assert export_ndjson(log, q, buf, actor="x", include_phi=True) == 1
    FhirAuditEvent.model_validate_json(buf.getvalue())
    assert json.loads(buf.getvalue())["entity"][0]["what"]["identifier"]["value"] == "MRN-1"


def test_cli_verify_exit_codes(log: AuditLog, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["verify"], open_log=lambda: log) == 0
    assert "intact: 4 entries" in capsys.readouterr().out
    store = log.store
    assert isinstance(store, MemoryStore)
    e = store.entries[2].entry
    store.entries[2] = dataclasses.replace(store.entries[2], entry=e[:-3] + b"X" + e[-2:])
    assert cli_main(["verify"], open_log=lambda: log) == 1
    assert "first bad entry 2" in capsys.readouterr().out
    assert cli_main(["verify", "--json"], open_log=lambda: log) == 1
    assert json.loads(capsys.readouterr().out)["first_bad_index"] == 2
    assert cli_main(["nonsense"], open_log=lambda: log) == 2


def test_cli_proofs_export_and_settings(
    tmp_path: Path,
    make_event: EventFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ECGBRIDGE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("ECGBRIDGE_DATABASE_URL", raising=False)
    monkeypatch.setenv("ECGBRIDGE_AUDIT_HEAD_INTERVAL", "2")
    log = AuditLog.from_settings()
    for i in range(5):
        log.append(make_event(i))
    log.close()
    assert cli_main(["verify"]) == 0
    assert cli_main(["prove", "3"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["verified"] is True
    assert cli_main(["consistency", "2", "4"]) == 0
    out = tmp_path / "export.ndjson"
    assert cli_main(["export", "--patient", "MRN-0001", "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 5
    assert cli_main(["checkpoint"]) == 0
    assert cli_main(["verify"]) == 0


def test_retention_archives_and_never_deletes(log: AuditLog, tmp_path: Path) -> None:
    days = 2192
    now = T0 + timedelta(days=days, minutes=1, seconds=30)  # entries 0 and 1 are expired
    res = archive_expired(log, now=now, retention_days=days, archive_dir=tmp_path, actor="t")
    assert res is not None and (res.start, res.stop) == (0, 2)
    lines = gzip.decompress(res.path.read_bytes()).decode().splitlines()
    assert [json.loads(x)["index"] for x in lines[:-1]] == [0, 1]
    assert json.loads(lines[-1])["tree_head"]["size"] >= 2
    assert log.size() == 5  # nothing deleted: 4 events + the audit.archived event
    assert (
        archive_expired(log, now=now, retention_days=days, archive_dir=tmp_path, actor="t") is None
    )
    assert log.verify().ok
