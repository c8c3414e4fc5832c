"""The review page's ECG picture: a real ECG message in the (encrypted) inbox of the audit
log's own SQLite database, drawn by `render_ecg` and served only to reviewers."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient

from integration.audit import AuditLog, EventKind, SearchQuery, SqlStore
from integration.audit.crypto import PhiKeyRing
from integration.audit.picture import inbox_picture
from integration.audit.router import Reviewer, bearer_reviewers, make_audit_router
from integration.audit.signing import HeadSigner
from integration.inbox import ContentType, Inbox
from integration.samples import load_samples
from mappers.hl7v2 import build_oru_r01
from tests.audit.conftest import make_audit_event
from tests.audit.test_router import seed

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def store_ecg(inbox: Inbox, control_id: str = "PIC1") -> str:
    """A real PTB-XL sample as an HL7 ORU^R01 in the inbox; returns its item id."""
    message = build_oru_r01(load_samples()[0].record, control_id=control_id, now=NOW)
    accepted = inbox.accept(
        idem_key=f"hl7:TEST|{control_id}",
        channel="mllp",
        content_type=ContentType.HL7V2,
        payload=message,
        record_id=control_id,
    )
    return accepted.item.id


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


@pytest.fixture
def log_and_ecg(tmp_path: Path) -> Iterator[tuple[AuditLog, Inbox, str]]:
    url = f"sqlite:///{tmp_path}/ecgbridge.sqlite3"
    log = AuditLog(
        SqlStore.from_url(url), signer=HeadSigner.generate(), phi_keys=PhiKeyRing.generate()
    )
    inbox = Inbox.from_url(url, cipher=log.cipher)
    ecg_id = store_ecg(inbox)
    seed(log, make_audit_event, ecg_id, "MRN-A", 0)
    yield log, inbox, ecg_id
    inbox.dispose()
    log.close()


def _no_role(_: object = None) -> Reviewer:
    return Reviewer("bob", frozenset())


def test_image_is_the_rendered_inbox_ecg_for_reviewers_only(
    log_and_ecg: tuple[AuditLog, Inbox, str],
) -> None:
    log, _, ecg_id = log_and_ecg
    app = FastAPI()
    app.include_router(make_audit_router(log, reviewer=bearer_reviewers({"s3cret": "alice"})))
    client = TestClient(app)
    path = f"/audit/review/ecg/{ecg_id}/image"

    assert client.get(path).status_code == 401
    assert client.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
    r = client.get(path, headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["cache-control"] == "private, no-store"
    width, height = png_size(r.content)
    assert width > 1000 and height > 600  # 270 x 170 mm at 100 dpi
    page = client.get(f"/audit/review/ecg/{ecg_id}", headers={"Authorization": "Bearer s3cret"})
    assert f'src="/audit/review/ecg/{ecg_id}/image"' in page.text

    missing = client.get("/audit/review/ecg/nope/image", headers={"Authorization": "Bearer s3cret"})
    assert missing.status_code == 404 and "no rendered ECG" in missing.text
    viewed = log.search(SearchQuery(kinds=(EventKind.AUDIT_VIEWED.value,), newest_first=False))
    images = [e.detail for e in viewed if e.detail.get("page") == "ecg-image"]
    assert images == [
        {"page": "ecg-image", "ecg_id": ecg_id, "found": True},
        {"page": "ecg-image", "ecg_id": "nope", "found": False},
    ]
    assert all(e.actor == "reviewer:alice" for e in viewed)


def test_image_needs_the_reviewer_role(log_and_ecg: tuple[AuditLog, Inbox, str]) -> None:
    log, _, ecg_id = log_and_ecg
    app = FastAPI()
    app.include_router(make_audit_router(log, reviewer=_no_role))
    r = TestClient(app).get(f"/audit/review/ecg/{ecg_id}/image")
    assert r.status_code == 403 and "audit-reviewer" in r.text


def test_picture_is_cached_and_unknown_or_broken_items_give_none(
    log_and_ecg: tuple[AuditLog, Inbox, str], tmp_path: Path
) -> None:
    _, inbox, ecg_id = log_and_ecg
    image = inbox_picture(inbox, cache_size=1)
    first = image(ecg_id)
    assert first is not None and first[1] == "image/png"
    assert image(ecg_id) == first
    assert image("0" * 32) is None
    # the payload is stored encrypted: another key cannot open it, and says nothing more
    url = f"sqlite:///{tmp_path}/ecgbridge.sqlite3"
    foreign = Inbox.from_url(url, cipher=AuditLog.in_memory().cipher)
    try:
        assert inbox_picture(foreign)(ecg_id) is None
    finally:
        foreign.dispose()


def test_reviewer_dependency_errors_propagate() -> None:
    """A reviewer dependency that raises 403 itself is honoured on the image route."""

    def forbidden() -> Reviewer:
        raise HTTPException(403, "locked out")

    app = FastAPI()
    app.include_router(make_audit_router(AuditLog.in_memory(), reviewer=forbidden))
    assert TestClient(app).get("/audit/review/ecg/x/image").status_code == 403
