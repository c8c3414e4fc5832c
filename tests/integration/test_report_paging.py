"""Paging of ``GET /fhir/DiagnosticReport?subject=``: ``_count`` per page, a ``next`` link
(``_offset``) while there are more, followed to the end. Real SQLite inbox and ndjson sink;
the report routes mounted on their own FastAPI app."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from inference.record import EcgRecord, PatientRef
from integration.inbox import ContentType, Inbox
from integration.report_store import (
    MAX_OFFSET,
    NdjsonReportSource,
    ReportIndex,
    ReportStore,
    make_report_router,
)
from integration.writeback import NdjsonSink
from mappers.fhir_device import ModelCard
from tests.support.reports import NOW, key, write

MRN = "MRN-PAGING-1"


def _record(n: int, mrn: str) -> EcgRecord:
    return EcgRecord(
        signals_mv=np.zeros((12, 500), dtype=np.float32),
        lead_names=("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"),
        fs_hz=500.0,
        record_id=f"rec-{n}",
        patient=PatientRef(value=mrn, system="urn:mrn"),
    )


@pytest.fixture
def client_and_ids(tmp_path: Path) -> tuple[TestClient, list[str]]:
    """Five reports of one patient (oldest first) and one of another, through the inbox
    and the ndjson sink as the worker leaves them."""
    inbox = Inbox.from_url(f"sqlite:///{tmp_path}/inbox.sqlite3")
    sink = NdjsonSink(tmp_path / "out", model_card=ModelCard(markdown=b"# card"))
    ids = []
    for n, mrn in enumerate([MRN] * 5 + ["MRN-OTHER"]):
        written = write(inbox, sink, _record(n, mrn), n)
        if mrn == MRN:
            ids.append(written.report_id)
    store = ReportStore(
        index=ReportIndex.for_inbox(inbox),
        source=NdjsonReportSource(tmp_path / "out"),
        patient_key=key,
    )
    app = FastAPI()
    app.include_router(make_report_router(store))
    return TestClient(app), ids


def _get(client: TestClient, url: str, **params: str) -> dict[str, Any]:
    resp = client.get(url, params=params or None)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _next(bundle: dict[str, Any]) -> str | None:
    links = {link["relation"]: link["url"] for link in bundle["link"]}
    return links.get("next")


def test_next_links_walk_every_report_once_newest_first(
    client_and_ids: tuple[TestClient, list[str]],
) -> None:
    client, ids = client_and_ids
    bundle = _get(client, "/fhir/DiagnosticReport", **{"patient:identifier": MRN, "_count": "2"})
    pages: list[list[str]] = []
    while True:
        pages.append([e["resource"]["id"] for e in bundle["entry"]])
        url = _next(bundle)
        if url is None:
            break
        assert "total" not in bundle  # not counted while there are more
        query = parse_qs(urlsplit(url).query)
        assert query["_count"] == ["2"] and query["patient:identifier"] == [MRN]
        bundle = _get(client, url)
    assert [len(p) for p in pages] == [2, 2, 1]
    newest_first = list(reversed(ids))
    assert [i for p in pages for i in p] == newest_first
    assert bundle["total"] == 5  # the last page: offset + what is on it


def test_one_page_when_count_covers_all(client_and_ids: tuple[TestClient, list[str]]) -> None:
    client, _ = client_and_ids
    bundle = _get(client, "/fhir/DiagnosticReport", **{"patient:identifier": MRN, "_count": "5"})
    assert _next(bundle) is None and bundle["total"] == 5
    assert len(bundle["entry"]) == 5
    default = _get(client, "/fhir/DiagnosticReport", **{"patient:identifier": MRN})
    assert _next(default) is None and default["total"] == 5


def test_an_offset_past_the_end_is_an_empty_last_page(
    client_and_ids: tuple[TestClient, list[str]],
) -> None:
    client, _ = client_and_ids
    bundle = _get(client, "/fhir/DiagnosticReport", **{"patient:identifier": MRN, "_offset": "9"})
    assert bundle["entry"] == [] and _next(bundle) is None and bundle["total"] == 9


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        ("x", "_offset must be an integer"),
        ("-1", "_offset must be between 0 and"),
        (str(MAX_OFFSET + 1), "_offset must be between 0 and"),
    ],
)
def test_bad_offset_is_a_400_naming_it(
    client_and_ids: tuple[TestClient, list[str]], offset: str, message: str
) -> None:
    client, _ = client_and_ids
    resp = client.get(
        "/fhir/DiagnosticReport", params={"patient:identifier": MRN, "_offset": offset}
    )
    assert resp.status_code == 400
    assert resp.json()["resourceType"] == "OperationOutcome"
    assert message in resp.json()["issue"][0]["diagnostics"]


def test_reports_received_at_the_same_instant_keep_one_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offset paging needs a total order: equal receive times are ordered by item id."""
    monkeypatch.setattr("integration.inbox._now", lambda: NOW)
    inbox = Inbox.from_url(f"sqlite:///{tmp_path}/inbox.sqlite3")
    for n in range(6):
        accepted = inbox.accept(
            idem_key=f"same:{n}",
            channel="http",
            content_type=ContentType.FHIR,
            payload=f"{{{n}}}".encode(),
            record_id=f"rec-{n}",
            patient_key=key(MRN),
        )
        inbox.mark_done(accepted.item.id, result_json="{}", report_ref=f"DiagnosticReport/r{n}")
    whole = [i.id for i in inbox.reports_for([key(MRN)], limit=6)]
    assert whole == sorted(whole, reverse=True)
    pages = [i.id for i in inbox.reports_for([key(MRN)], limit=3)]
    assert pages == whole[:3]
