"""End to end in headless Chromium: a reviewer signs in, finds a patient's ECG, opens it,
sees the picture (a real 12-lead ECG from the encrypted inbox in the same database, drawn
by the router's default `inbox_picture`) and the chain of events, and a tampered entry
shows as failed.

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
from integration.inbox import Inbox
from tests.audit.conftest import make_audit_event
from tests.audit.test_picture import store_ecg
from tests.audit.test_router import seed

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, AuditLog, str]]:
    url = f"sqlite:///{tmp_path}/audit.sqlite3"
    log = AuditLog(SqlStore.from_url(url), signer=HeadSigner.generate(),
                   phi_keys=PhiKeyRing.generate(), head_interval=4)  # fmt: skip
    inbox = Inbox.from_url(url, cipher=log.cipher)
    ecg_a = store_ecg(inbox)
    inbox.dispose()
    seed(log, make_audit_event, ecg_a, "MRN-A", 0)
    seed(log, make_audit_event, "ecgB", "MRN-B", 10)
    app = FastAPI()
    app.include_router(make_audit_router(log, reviewer=bearer_reviewers({"s3cret": "alice"})))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}", str(tmp_path / "audit.sqlite3"), log, ecg_a
    server.should_exit = True
    thread.join(timeout=10)
    log.close()


@pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("CI"),
    reason="system chromium is not installed (make system-deps installs it; required in CI)",
)
def test_reviewer_finds_opens_and_sees_tampering(
    served: tuple[str, str, AuditLog, str], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, db_path, _, ecg_a = served
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
        expect(results).to_contain_text(ecg_a)
        expect(results).not_to_contain_text("ecgB")
        page.screenshot(path=str(shots / "audit-review-search.png"), full_page=True)

        page.get_by_test_id("open-ecg").first.click()
        expect(page.get_by_test_id("verification")).to_have_attribute("data-status", "ok")
        expect(page.get_by_test_id("event-row")).to_have_count(7)
        expect(page.get_by_test_id("analysis")).to_contain_text("ST elevation V2-V4")
        image = page.get_by_test_id("ecg-image")
        expect(image).to_be_visible()
        expect(image).to_have_attribute("src", f"/audit/review/ecg/{ecg_a}/image")
        page.wait_for_function("() => document.querySelector('img.ecg').complete", timeout=30_000)
        natural = page.evaluate(
            "(() => { const i = document.querySelector('img.ecg');"
            " return [i.naturalWidth, i.naturalHeight]; })()"
        )
        assert natural[0] > 1000 and natural[1] > 600, natural  # the 270 x 170 mm page

        # the picture route is a reviewer's only: a fresh browser context has no cookie
        anonymous = browser.new_context().new_page()
        denied = anonymous.goto(f"{base}/audit/review/ecg/{ecg_a}/image")
        assert denied is not None and denied.status == 401
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
