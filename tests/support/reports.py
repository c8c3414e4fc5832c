"""Reports as the worker leaves them, for the report-reading tests: an ECG accepted into the
inbox with its patient's keyed hash, its report written to an ndjson sink, marked done."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from inference.record import EcgRecord
from inference.result import AnalysisResult, QualityReport, TriageResult
from integration.inbox import ContentType, Inbox
from integration.pipeline import report_identity
from integration.writeback import NdjsonSink
from mappers.fhir_r4 import build_report, resource_json
from mappers.fhir_report import report_attachments

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
PNG = b"\x89PNG\r\n\x1a\n" + b"0" * 32
SECRET = b"test-search-key"


def key(identifier: str) -> str:
    return hmac.new(SECRET, identifier.strip().encode(), hashlib.sha256).hexdigest()


@dataclass
class Written:
    ecg_id: str
    report_id: str
    report: dict[str, Any]


def write(inbox: Inbox, sink: NdjsonSink | None, record: EcgRecord, n: int) -> Written:
    """An ECG through the inbox as the worker leaves it: accepted with the patient's key,
    its report written (with a picture), and marked done."""
    patient = record.patient
    assert patient is not None
    idem = f"test:{record.record_id}:{n}"
    accepted = inbox.accept(
        idem_key=idem,
        channel="http",
        content_type=ContentType.FHIR,
        payload=f"{{{n}}}".encode(),
        record_id=record.record_id,
        patient_key=key(patient.value or patient.reference or ""),
    )
    result = AnalysisResult(
        record.record_id, "test-model", QualityReport(True), TriageResult(0.8, 0.5)
    )
    report_id = report_identity(idem, "test-model")
    resources = build_report(
        result,
        record,
        report_id=report_id,
        issued=NOW,
        presented_form=report_attachments(png=PNG, created=NOW, title="ECG"),
    )
    if sink is not None:
        sink.write(resources)
    inbox.mark_done(accepted.item.id, result_json="{}", report_ref=f"DiagnosticReport/{report_id}")
    return Written(accepted.item.id, report_id, resource_json(resources.diagnostic_report))
