"""`ecgbridge serve` (a real process) polls the audit log into the fairness monitor and
exposes the per-subgroup series on ``/metrics``: entries appended by another process after
it started show up within a poll interval."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from integration.audit import AuditEvent, AuditLog, EventKind
from integration.audit.config import AuditSettings
from tests.support.processes import EcgbridgeServe, ecgbridge_env, wait_until

pytestmark = pytest.mark.e2e


def _analysis(i: int, model_version: str, *, sex: str, band: str, positive: bool) -> AuditEvent:
    return AuditEvent(
        kind=EventKind.ANALYSIS_FINISHED,
        actor="worker",
        ecg_id=f"serve-ecg-{i}",
        model_version=model_version,
        finding="triage-positive" if positive else "triage-negative",
        detail={"sex": sex, "age_band": band},
    )


def _sample(text: str, name: str, group: str) -> float | None:
    m = re.search(rf'^{name}\{{group="{re.escape(group)}"\}} (\S+)$', text, re.MULTILINE)
    return None if m is None else float(m.group(1))


def test_serve_exposes_fairness_metrics(tmp_path: Path) -> None:
    data = tmp_path / "var"
    env = ecgbridge_env(data_dir=str(data), out_dir=str(data / "out"), fairness_poll_s="0.2")
    with EcgbridgeServe(env, tmp_path / "serve.log") as serve:
        version = httpx.get(f"{serve.http_url}/health", timeout=5).json()["model_version"]
        metrics_url = f"{serve.http_url}/metrics/"

        def scrape() -> str:
            return httpx.get(metrics_url, timeout=5).text

        # the series exist from the start, at zero
        assert _sample(scrape(), "ecgbridge_fairness_analysed_total", "female/<40") == 0.0
        audit = AuditLog.from_settings(AuditSettings(data_dir=data))
        try:
            audit.append(_analysis(1, version, sex="female", band="<40", positive=True))
            audit.append(_analysis(2, version, sex="female", band="<40", positive=False))
            audit.append(_analysis(3, version, sex="male", band=">65", positive=True))
            audit.append(_analysis(4, "another-model", sex="male", band=">65", positive=True))
        finally:
            audit.close()

        def counted() -> bool:
            return _sample(scrape(), "ecgbridge_fairness_analysed_total", "all") == 3.0

        wait_until(counted, timeout_s=20, what="the fairness monitor's next poll")
        text = scrape()
        assert _sample(text, "ecgbridge_fairness_analysed_total", "female/<40") == 2.0
        assert _sample(text, "ecgbridge_fairness_positive_total", "female") == 1.0
        assert _sample(text, "ecgbridge_fairness_positive_rate", "female") == 0.5
        assert _sample(text, "ecgbridge_fairness_positive_rate", "male/>65") == 1.0
        assert _sample(text, "ecgbridge_fairness_window_size", "all") == 3.0
        assert _sample(text, "ecgbridge_fairness_overrides_total", "all") == 0.0
        assert _sample(text, "ecgbridge_fairness_drift_alerts_total", "all") == 0.0
        assert _sample(text, "ecgbridge_fairness_drifting", "all") == 0.0
