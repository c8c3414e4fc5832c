from __future__ import annotations

import numpy as np

from inference.dataset import PtbxlData
from inference.quality import assess_quality
from inference.record import LEADS_12


def test_real_records_accepted(sample_data: PtbxlData) -> None:
    for sig in sample_data.signals_mv:
        report = assess_quality(sig, sample_data.fs_hz, LEADS_12)
        assert report.ok, report.problems


def test_zeroed_lead_refused(sample_data: PtbxlData) -> None:
    sig = sample_data.signals_mv[0].copy()
    sig[7] = 0.0
    report = assess_quality(sig, sample_data.fs_hz, LEADS_12)
    assert not report.ok
    assert report.problems == ("V2 lead off",)


def test_tiny_noise_lead_refused(sample_data: PtbxlData) -> None:
    sig = sample_data.signals_mv[1].copy()
    sig[0] = np.random.default_rng(0).normal(0, 0.002, sig.shape[1]).astype(np.float32)
    assert "I lead off" in assess_quality(sig, 500.0, LEADS_12).problems


def test_clipped_lead_refused(sample_data: PtbxlData) -> None:
    sig = sample_data.signals_mv[2].copy()
    lead = sig[6]
    limit = np.float32(np.percentile(lead, 70))
    sig[6] = np.minimum(lead, limit)
    report = assess_quality(sig, 500.0, LEADS_12)
    assert not report.ok
    assert "V1 saturated" in report.problems


def test_baseline_wander_refused(sample_data: PtbxlData) -> None:
    sig = sample_data.signals_mv[3].copy()
    t = np.arange(sig.shape[1]) / 500.0
    sig[11] += (8.0 * np.sin(2 * np.pi * 0.15 * t)).astype(np.float32)
    assert "V6 baseline wander" in assess_quality(sig, 500.0, LEADS_12).problems


def test_powerline_noise_refused(sample_data: PtbxlData) -> None:
    sig = sample_data.signals_mv[4].copy()
    t = np.arange(sig.shape[1]) / 500.0
    sig[9] += (3.0 * np.sin(2 * np.pi * 50.0 * t)).astype(np.float32)
    assert "V4 powerline noise" in assess_quality(sig, 500.0, LEADS_12).problems
