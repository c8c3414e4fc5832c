"""End to end in headless Chromium: a reviewer signs in, finds a patient's ECG, opens it,
sees the picture and the chain of events, and a tampered entry shows as failed.

Starts a real uvicorn server on a free port and the system Chromium (``/usr/bin/chromium``,
``apt-get install -y chromium``) through Playwright. Set ``ECGBRIDGE_SCREENSHOT_DIR`` to
keep the screenshots (for the README).
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from integration.audit import AuditLog, SqlStore
from integration.audit.crypto import PhiKeyRing
from integration.audit.router import bearer_reviewers, make_audit_router
from integration.audit.signing import HeadSigner
from tests.audit.conftest import make_audit_event
from tests.audit.test_router import seed

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ECG_SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="600" height="120">'
    b'<polyline fill="none" stroke="black" points="0,60 100,60 110,20 120,100 130,60 '
    b'300,60 310,20 320,100 330,60 600,60"/></svg>'
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, AuditLog]]:
    url = f"sqlite:///{tmp_path}/audit.sqlite3"
    log = AuditLog(SqlStore.from_url(url), signer=HeadSigner.generate(),
                   phi_keys=PhiKeyRing.generate(), head_interval=4)  # fmt: skip
    seed(log, make_audit_event, "ecgA", "MRN-A", 0)
    seed(log, make_audit_event, "ecgB", "MRN-B", 10)
    app = FastAPI()
    app.include_router(make_audit_router(
        log, reviewer=bearer_reviewers({"s3cret": "alice"}),
        ecg_image=lambda _id: (ECG_SVG, "image/svg+xml"),
    ))  # fmt: skip
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}", str(tmp_path / "audit.sqlite3"), log
    server.should_exit = True
    thread.join(timeout=10)
    log.close()


@pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("CI"),
    reason="system chromium is not installed (make system-deps installs it; required in CI)",
)
def test_reviewer_finds_opens_and_sees_tampering(
    served: tuple[str, str, AuditLog], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, db_path, _ = served
    shots = Path(os.environ.get("ECGBRIDGE_SCREENSHOT_DIR", tmp_path / "shots"))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox"])  # fmt: skip
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        first = page.goto(f"{base}/audit/review")
        assert first is not None and first.status == 401  # no reviewer yet
        page.goto(f"{base}/audit/review/login")
        page.get_by_test_id("token").fill("s3cret")
        page.get_by_test_id("sign-in").click()
        page.get_by_test_id("patient").fill("MRN-A")
        page.get_by_test_id("search").click()
        results = page.get_by_test_id("results")
        expect(results).to_contain_text("ecgA")
        expect(results).not_to_contain_text("ecgB")
        page.screenshot(path=str(shots / "audit-review-search.png"), full_page=True)

        page.get_by_test_id("open-ecg").first.click()
        expect(page.get_by_test_id("verification")).to_have_attribute("data-status", "ok")
        expect(page.get_by_test_id("event-row")).to_have_count(7)
        expect(page.get_by_test_id("analysis")).to_contain_text("ST elevation V2-V4")
        image = page.get_by_test_id("ecg-image")
        expect(image).to_be_visible()
        assert page.evaluate("document.querySelector('img.ecg').naturalWidth") > 0
        page.screenshot(path=str(shots / "audit-review-ecg.png"), full_page=True)

        with sqlite3.connect(db_path) as conn:  # a DBA edits the stored probability
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'"):
                conn.execute(f"DROP TRIGGER {name}")
            (entry,) = conn.execute("SELECT entry FROM audit_entries WHERE idx = 3").fetchone()
            conn.execute("UPDATE audit_entries SET entry = ? WHERE idx = 3",
                         (bytes(entry).replace(b"0.93", b"0.13"),))  # fmt: skip
        page.reload()
        expect(page.get_by_test_id("verification")).to_have_attribute("data-status", "failed")
        bad = page.locator('[data-testid="event-row"][data-index="3"]')
        expect(bad.get_by_test_id("entry-status")).to_contain_text("FAILED")
        after = page.locator('[data-testid="event-row"][data-index="4"]')
        expect(after.get_by_test_id("entry-status")).to_contain_text("verified")
        page.screenshot(path=str(shots / "audit-review-tampered.png"), full_page=True)
        browser.close()
