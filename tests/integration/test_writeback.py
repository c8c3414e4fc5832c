"""Write-back: the ndjson sink and the FHIR writer (in-memory transport twin; the real
FHIR server path is in tests/e2e)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from inference.analyzer import Analyzer
from integration import writeback
from integration.errors import WriteBackError
from integration.pipeline import report_identity
from integration.samples import load_samples
from integration.writeback import (
    DEFAULT_MODEL_CARD,
    MODEL_CARD_URL,
    FhirServerWriter,
    NdjsonSink,
    load_model_card,
)
from mappers.fhir_device import ModelCard, model_card_id, model_device_id, model_resources
from mappers.fhir_r4 import ReportResources, build_report, resource_json

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
CARD = ModelCard(markdown=b"# ecgbridge model card\n\nNot a diagnosis.\n")


@pytest.fixture(scope="module")
def resources() -> ReportResources:
    sample = load_samples()[0]
    analyzer = Analyzer.load(device="cpu")
    result = analyzer.analyze(sample.record, now=NOW)
    rid = report_identity("hl7:WARD|X1", analyzer.model_version)
    return build_report(result, sample.record, report_id=rid, issued=NOW)


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_report_identity_is_deterministic_and_a_valid_fhir_id() -> None:
    a = report_identity("hl7:WARD|1", "m1")
    assert a == report_identity("hl7:WARD|1", "m1")
    assert a != report_identity("hl7:WARD|1", "m2")
    assert a != report_identity("hl7:WARD|2", "m1")
    assert len(a) <= 64 and all(c.isalnum() or c in "-." for c in a)


def test_ndjson_sink_writes_each_resource_once(tmp_path: Path, resources: ReportResources) -> None:
    sink = NdjsonSink(tmp_path, model_card=CARD)
    first = sink.write(resources)
    sink.write(resources)
    NdjsonSink(tmp_path, model_card=CARD).write(resources)  # another worker process
    reports = _lines(tmp_path / "DiagnosticReport.ndjson")
    assert [r["id"] for r in reports] == [resources.diagnostic_report.id]
    assert len(_lines(tmp_path / "Observation.ndjson")) == len(resources.observations)
    assert len(_lines(tmp_path / "Provenance.ndjson")) == 1
    (audit,) = _lines(tmp_path / "AuditEvent.ndjson")
    assert audit["id"] == f"{resources.diagnostic_report.id}-audit-final"
    (device,) = _lines(tmp_path / "Device.ndjson")
    (card,) = _lines(tmp_path / "DocumentReference.ndjson")
    assert device["id"] == model_device_id(resources.model_version)
    assert card["id"] == model_card_id(resources.model_version)
    content = card["content"]
    assert isinstance(content, list) and len(content) == 1
    assert base64.b64decode(content[0]["attachment"]["data"]) == CARD.markdown
    assert first.report_ref == f"DiagnosticReport/{resources.diagnostic_report.id}"


def test_load_model_card_reads_the_file_or_falls_back_to_its_url(tmp_path: Path) -> None:
    default = load_model_card()
    assert default.markdown.startswith(b"#") and default.markdown == DEFAULT_MODEL_CARD.read_bytes()
    (tmp_path / "card.md").write_bytes(b"# my card")
    assert load_model_card(tmp_path / "card.md").markdown == b"# my card"
    with pytest.raises(ValueError, match=r"ECGBRIDGE_MODEL_CARD_PATH=.*missing\.md: cannot read"):
        load_model_card(tmp_path / "missing.md")


def test_load_model_card_without_the_file_gives_the_published_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writeback, "DEFAULT_MODEL_CARD", tmp_path / "MODEL_CARD.md")
    card = load_model_card()
    assert (card.markdown, card.url) == (b"", MODEL_CARD_URL)


def test_ndjson_sink_replaces_a_changed_resource_in_place(tmp_path: Path) -> None:
    """Preliminary, then final: the file holds the current version of each id, once."""
    sample = load_samples()[0]
    result = Analyzer.load(device="cpu").analyze(sample.record, now=NOW)
    other = build_report(result, load_samples()[1].record, report_id="other", issued=NOW)
    prelim = build_report(result, sample.record, report_id="r1", issued=NOW, preliminary=True)
    final = build_report(result, sample.record, report_id="r1", issued=NOW)
    sink = NdjsonSink(tmp_path)
    sink.write(other)
    sink.write(prelim)
    assert [r["status"] for r in _lines(tmp_path / "DiagnosticReport.ndjson")] == [
        "final",
        "preliminary",
    ]
    sink.write(final)
    sink.write(final)
    reports = _lines(tmp_path / "DiagnosticReport.ndjson")
    assert [(r["id"], r["status"]) for r in reports] == [("other", "final"), ("r1", "final")]
    assert not list(tmp_path.glob("*.tmp"))


def test_ndjson_sink_writes_pictures_as_files_referenced_by_url(tmp_path: Path) -> None:
    from mappers.fhir_report import report_attachments

    sample = load_samples()[0]
    result = Analyzer.load(device="cpu").analyze(sample.record, now=NOW)
    png = b"\x89PNG\r\n\x1a\n" + b"x" * 100
    forms = report_attachments(png=png, pdf=b"%PDF-1.4 y", created=NOW, title="ECG")
    final = build_report(result, sample.record, report_id="r1", issued=NOW, presented_form=forms)
    NdjsonSink(tmp_path).write(final)
    (report,) = _lines(tmp_path / "DiagnosticReport.ndjson")
    forms_out: list[dict[str, object]] = report["presentedForm"]  # type: ignore[assignment]
    assert [f["url"] for f in forms_out] == ["attachments/r1-0.png", "attachments/r1-1.pdf"]
    assert all("data" not in f for f in forms_out)
    assert (tmp_path / "attachments" / "r1-0.png").read_bytes() == png
    assert (tmp_path / "attachments" / "r1-1.pdf").read_bytes() == b"%PDF-1.4 y"


def test_fhir_writer_puts_every_resource_at_its_id(resources: ReportResources) -> None:
    seen: list[tuple[str, str]] = []
    reads: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":  # the model's resources are looked up first
            reads.append(request.url.path)
            return httpx.Response(404, json={"resourceType": "OperationOutcome", "issue": []})
        body = json.loads(request.content)
        seen.append((request.method, request.url.path))
        assert request.url.path.endswith(f"/{body['resourceType']}/{body['id']}")
        return httpx.Response(200, json=body | {"meta": {"versionId": "3"}})

    writer = FhirServerWriter(
        "http://ehr/fhir", timeout_s=5, transport=httpx.MockTransport(handler), model_card=CARD
    )
    written = writer.write(resources)
    rid = resources.diagnostic_report.id
    assert all(m == "PUT" for m, _ in seen)
    paths = [p for _, p in seen]
    # the model card and Device first (referenced by what follows), the AuditEvent last
    assert paths[:2] == [
        f"/fhir/DocumentReference/{model_card_id(resources.model_version)}",
        f"/fhir/Device/{model_device_id(resources.model_version)}",
    ]
    assert paths[-3:] == [
        f"/fhir/DiagnosticReport/{rid}",
        f"/fhir/Provenance/{rid}-provenance",
        f"/fhir/AuditEvent/{rid}-audit-final",
    ]
    assert len(paths) == len(resources.observations) + 5
    assert reads == paths[:1]  # the model card missing: no need to read the Device
    assert written.report_ref.endswith("/_history/3")
    # the next report of the same model: no second Device / model card write, no read
    seen.clear()
    writer.write(resources)
    assert not any("/Device/" in p or "/DocumentReference/" in p for _, p in seen)
    assert len(seen) == len(resources.observations) + 3
    assert len(reads) == 1


def test_fhir_writer_does_not_rewrite_the_model_the_server_holds(
    resources: ReportResources,
) -> None:
    """Another worker wrote the Device and model card: read, found equal, not PUT again."""
    model = model_resources(resources.model_version, CARD)
    stored = {
        f"/fhir/{r['resourceType']}/{r['id']}": r | {"meta": r["meta"] | {"versionId": "1"}}
        for r in (resource_json(model.device), resource_json(model.model_card))
    }
    puts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            found = stored.get(request.url.path)
            return httpx.Response(200, json=found) if found else httpx.Response(404)
        puts.append(request.url.path)
        return httpx.Response(200, json=json.loads(request.content))

    writer = FhirServerWriter(
        "http://ehr/fhir", timeout_s=5, transport=httpx.MockTransport(handler), model_card=CARD
    )
    writer.write(resources)
    assert len(puts) == len(resources.observations) + 3
    assert not set(puts) & set(stored)
    # a changed card (same model version) is written again
    other = FhirServerWriter(
        "http://ehr/fhir",
        timeout_s=5,
        transport=httpx.MockTransport(handler),
        model_card=ModelCard(markdown=b"# revised card"),
    )
    puts.clear()
    other.write(resources)
    assert set(stored) <= set(puts)


@pytest.mark.parametrize(("status", "transient"), [(503, True), (429, True), (422, False)])
def test_fhir_writer_classifies_errors(
    resources: ReportResources, status: int, transient: bool
) -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": "bad subject"}],
    }
    writer = FhirServerWriter(
        "http://ehr/fhir",
        timeout_s=5,
        transport=httpx.MockTransport(lambda r: httpx.Response(status, json=outcome)),
    )
    with pytest.raises(WriteBackError) as err:
        writer.write(resources)
    assert err.value.transient is transient
    assert "bad subject" in str(err.value)


def test_fhir_writer_timeout_is_transient(resources: ReportResources) -> None:
    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    writer = FhirServerWriter("http://ehr/fhir", timeout_s=5, transport=httpx.MockTransport(boom))
    with pytest.raises(WriteBackError) as err:
        writer.write(resources)
    assert err.value.transient
