"""The ECG picture: PNG/PDF bytes, paper scale in pixels, highlights and overlay."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from matplotlib.image import imread

from inference.record import LEADS_12
from mappers.ecg_picture import (
    GAIN_MM_PER_MV,
    MM_PER_INCH,
    PAGE_HEIGHT_MM,
    PAGE_WIDTH_MM,
    SPEED_MM_PER_S,
    Highlight,
    render_ecg,
    render_ecg_pdf,
    render_ecg_png,
    trace_origin_px,
)

FS = 500.0
DPI = 100
PX_PER_MM = DPI / MM_PER_INCH
PTBXL_SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "ptbxl_sample"

Image = npt.NDArray[np.float32]


def _pixels(png: bytes) -> Image:
    img: Image = imread(io.BytesIO(png), format="png")
    return img[..., :3]


def _pulse_ecg() -> npt.NDArray[np.float32]:
    """All leads at 0 mV except lead II: a 1 mV square pulse from 0.5 s to 1.5 s."""
    x = np.zeros((12, int(10 * FS)), dtype=np.float32)
    x[1, int(0.5 * FS) : int(1.5 * FS)] = 1.0
    return x


def _dark_rows(img: Image, col: int, y_lo: float, y_hi: float) -> float:
    """Darkness-weighted mean row of the black trace in one pixel column, within a band."""
    lo, hi = round(y_lo), round(y_hi)
    darkness = 1.0 - img[lo:hi, col].max(axis=1)
    darkness[darkness < 0.5] = 0.0
    assert darkness.sum() > 0, "no trace pixels found"
    # + 0.5: pixel row i covers [i, i + 1) in image coordinates.
    return lo + 0.5 + float(np.sum(np.arange(hi - lo) * darkness) / darkness.sum())


def test_png_signature_and_size() -> None:
    png = render_ecg_png(_pulse_ecg(), FS, LEADS_12, title="test", dpi=DPI)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = _pixels(png)
    assert img.shape[1] == pytest.approx(PAGE_WIDTH_MM * PX_PER_MM, abs=1)
    assert img.shape[0] == pytest.approx(PAGE_HEIGHT_MM * PX_PER_MM, abs=1)


def test_one_millivolt_is_10_mm_and_one_second_is_25_mm() -> None:
    img = _pixels(render_ecg_png(_pulse_ecg(), FS, LEADS_12, dpi=DPI))
    x0, y0 = trace_origin_px(1, 0, dpi=DPI)  # lead II, first column
    band = (y0 - 15 * PX_PER_MM, y0 + 5 * PX_PER_MM)

    def col_at(t_s: float) -> int:
        return round(x0 + t_s * SPEED_MM_PER_S * PX_PER_MM)

    baseline = _dark_rows(img, col_at(2.0), *band)
    plateau = _dark_rows(img, col_at(1.0), *band)
    assert baseline == pytest.approx(y0, abs=1.0)
    assert baseline - plateau == pytest.approx(GAIN_MM_PER_MV * PX_PER_MM, abs=1.0)
    # Horizontal: the rising and falling edges, seen at half height, are 1 s = 25 mm apart.
    mid_row = round((baseline + plateau) / 2)
    cols = np.arange(col_at(0.3), col_at(1.7))
    darkness = 1.0 - img[mid_row, cols].max(axis=1)
    edges = cols[darkness > 0.5]
    rising = edges[edges < col_at(1.0)]
    falling = edges[edges > col_at(1.0)]
    width = float(falling.mean() - rising.mean())
    assert width == pytest.approx(SPEED_MM_PER_S * PX_PER_MM, abs=1.0)
    assert rising.mean() + 0.5 == pytest.approx(x0 + 0.5 * SPEED_MM_PER_S * PX_PER_MM, abs=1.0)


def test_pdf_bytes() -> None:
    pdf = render_ecg_pdf(_pulse_ecg(), FS, LEADS_12, title="test")
    assert pdf.startswith(b"%PDF")
    assert pdf.rstrip().endswith(b"%%EOF")


def test_highlight_shades_only_its_span() -> None:
    x = _pulse_ecg()
    plain = _pixels(render_ecg_png(x, FS, LEADS_12, dpi=DPI))
    marked = _pixels(
        render_ecg_png(x, FS, LEADS_12, dpi=DPI, highlights=[Highlight("V2", 6.0, 6.4, "ST")])
    )
    x0, y0 = trace_origin_px(1, 2, dpi=DPI)  # V2 panel shows 5.0-7.5 s
    inside = round(x0 + (6.2 - 5.0) * SPEED_MM_PER_S * PX_PER_MM)
    outside = round(x0 + (7.0 - 5.0) * SPEED_MM_PER_S * PX_PER_MM)
    rows = slice(round(y0 - 12 * PX_PER_MM), round(y0 - 2 * PX_PER_MM))
    changed = np.abs(marked - plain).sum(axis=2) > 0.05
    assert changed[rows, inside].mean() > 0.9
    assert not changed[rows, outside].any()
    # Shaded pixels are orange-ish: more red than blue.
    assert np.all(marked[rows, inside, 0] > marked[rows, inside, 2])


def test_overlay_drawn_in_blue_only_where_it_differs() -> None:
    x = _pulse_ecg()
    edited = x.copy()
    edited[8, int(6.0 * FS) : int(6.5 * FS)] += 0.5  # V3: +0.5 mV for 0.5 s
    plain = _pixels(render_ecg_png(x, FS, LEADS_12, dpi=DPI))
    img = _pixels(render_ecg_png(x, FS, LEADS_12, dpi=DPI, overlay=edited))
    x0, y0 = trace_origin_px(2, 2, dpi=DPI)  # V3 panel shows 5.0-7.5 s
    col = round(x0 + (6.25 - 5.0) * SPEED_MM_PER_S * PX_PER_MM)
    y_edit = round(y0 - 0.5 * GAIN_MM_PER_MV * PX_PER_MM)
    r, _g, b = img[y_edit - 1 : y_edit + 2, col].T
    assert np.any((b > 0.5) & (r < 0.3)), "no blue overlay at +0.5 mV"
    # The original trace is still drawn in black at 0 mV.
    assert _dark_rows(img, col, y0 - 3 * PX_PER_MM, y0 + 3 * PX_PER_MM) == pytest.approx(y0, abs=1)
    # Elsewhere (a lead without an edit) the picture is unchanged.
    xi, yi = trace_origin_px(0, 0, dpi=DPI)
    region = (slice(round(yi - 30), round(yi + 30)), slice(round(xi), round(xi + 200)))
    assert np.array_equal(img[region], plain[region])


def test_real_record_renders_and_rejects_bad_shapes() -> None:
    z = np.load(PTBXL_SAMPLE / "signals_500hz_uv.npz")
    x = z["signals"][0].astype(np.float32) / 1000.0
    png = render_ecg_png(x, FS, LEADS_12, title="PTB-XL 193")
    assert len(png) > 20_000
    with pytest.raises(ValueError, match="lead names"):
        render_ecg_png(x[:11], FS, LEADS_12)
    with pytest.raises(ValueError, match="overlay"):
        render_ecg_png(x, FS, LEADS_12, overlay=x[:, :100])


def test_one_drawing_gives_the_same_png_and_pdf_as_two() -> None:
    x = _pulse_ecg()
    both = render_ecg(x, FS, LEADS_12, formats=("png", "pdf"), title="t", dpi=DPI)
    assert both["png"] == render_ecg_png(x, FS, LEADS_12, title="t", dpi=DPI)
    assert both["pdf"] == render_ecg_pdf(x, FS, LEADS_12, title="t", dpi=DPI)
    with pytest.raises(ValueError, match="unknown picture formats"):
        render_ecg(x, FS, LEADS_12, formats=("svg",))
