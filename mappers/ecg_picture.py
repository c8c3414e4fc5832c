"""The 12-lead ECG on standard paper, as PNG or PDF bytes (for DiagnosticReport.presentedForm).

Layout as printed by resting ECG carts (IEC 60601-2-25 paper conventions): 25 mm/s, 10 mm/mV,
1 mm minor and 5 mm major grid; a 3 x 4 grid of 2.5 s panels (columns I/II/III, aVR/aVL/aVF,
V1-V3, V4-V6, each column showing the same 2.5 s of time for its three leads) and a 10 s lead II
rhythm strip, a 1 mV x 200 ms calibration pulse at the start of each row. Highlights shade a time
span of one lead (everywhere that lead is drawn); an optional overlay (same shape as the signals,
e.g. a counterfactual edit) is drawn in blue where it differs from the original.

Pure: returns bytes, writes no file, touches no pyplot state (an explicit ``Figure`` on an Agg
canvas).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

SPEED_MM_PER_S = 25.0
GAIN_MM_PER_MV = 10.0
MM_PER_INCH = 25.4

#: Panels: rows of leads, one column per 2.5 s; the fourth row is the lead II rhythm strip.
PANEL_LEADS: tuple[tuple[str, ...], ...] = (
    ("I", "aVR", "V1", "V4"),
    ("II", "aVL", "V2", "V5"),
    ("III", "aVF", "V3", "V6"),
)
RHYTHM_LEAD = "II"
COLUMN_S = 2.5
STRIP_S = 10.0

_MARGIN_MM = 5.0
_CAL_MM = 10.0
_ROW_MM = 37.5
_TITLE_MM = 12.0
_FOOTER_MM = 8.0
_TRACE_X0_MM = _MARGIN_MM + _CAL_MM
PAGE_WIDTH_MM = _TRACE_X0_MM + STRIP_S * SPEED_MM_PER_S + _MARGIN_MM
PAGE_HEIGHT_MM = _TITLE_MM + 4 * _ROW_MM + _FOOTER_MM

_TRACE = "#000000"
_OVERLAY = "#0050d0"
_HIGHLIGHT = "#ffa500"
_GRID_MINOR = "#f6c8c8"
_GRID_MAJOR = "#e58f8f"
#: Where the overlay differs from the signal by less than this, only the original is drawn.
_OVERLAY_MIN_DIFF_MV = 0.005


@dataclass(frozen=True, slots=True)
class Highlight:
    """A shaded time span of one lead, in seconds from the start of the recording."""

    lead: str
    start_s: float
    end_s: float
    label: str = ""


def _row_baseline_mm(row: int) -> float:
    """Height of a row's 0 mV line above the bottom of the page."""
    top = PAGE_HEIGHT_MM - _TITLE_MM - row * _ROW_MM
    return top - 0.6 * _ROW_MM


def trace_origin_px(row: int, col: int, *, dpi: int) -> tuple[float, float]:
    """Pixel position (x from the left, y from the top) of a panel's t = 0, 0 mV point.

    ``row`` 0-2 are the 3 x 4 panels, row 3 the rhythm strip (``col`` 0).
    """
    px_per_mm = dpi / MM_PER_INCH
    x_mm = _TRACE_X0_MM + col * COLUMN_S * SPEED_MM_PER_S
    return x_mm * px_per_mm, (PAGE_HEIGHT_MM - _row_baseline_mm(row)) * px_per_mm


def _panels() -> list[tuple[int, int, str, float, float]]:
    """(row, col, lead, t0_s, t1_s) for every panel including the rhythm strip."""
    out = [
        (row, col, lead, col * COLUMN_S, (col + 1) * COLUMN_S)
        for row, leads in enumerate(PANEL_LEADS)
        for col, lead in enumerate(leads)
    ]
    out.append((3, 0, RHYTHM_LEAD, 0.0, STRIP_S))
    return out


def _draw_grid(ax: Axes) -> None:
    top = PAGE_HEIGHT_MM - _TITLE_MM
    bottom = _FOOTER_MM
    for step, colour, width in ((1.0, _GRID_MINOR, 0.3), (5.0, _GRID_MAJOR, 0.7)):
        xs = np.arange(_TRACE_X0_MM % step, PAGE_WIDTH_MM + 1e-9, step)
        ys = np.arange(bottom, top + 1e-9, step)
        segments = [[(x, bottom), (x, top)] for x in xs]
        segments += [[(0.0, y), (PAGE_WIDTH_MM, y)] for y in ys]
        ax.add_collection(LineCollection(segments, colors=colour, linewidths=width, zorder=0))


def _figure(
    signals_mv: npt.ArrayLike,
    fs_hz: float,
    lead_names: Sequence[str],
    highlights: Sequence[Highlight],
    overlay: npt.ArrayLike | None,
    title: str,
    dpi: int,
) -> Figure:
    x = np.asarray(signals_mv, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(lead_names):
        raise ValueError(f"signals shape {x.shape} does not match {len(lead_names)} lead names")
    if not fs_hz > 0:
        raise ValueError(f"sampling rate {fs_hz} Hz must be positive")
    ov = None if overlay is None else np.asarray(overlay, dtype=np.float64)
    if ov is not None and ov.shape != x.shape:
        raise ValueError(f"overlay shape {ov.shape} differs from signals shape {x.shape}")
    index = {name: i for i, name in enumerate(lead_names)}

    fig = Figure(figsize=(PAGE_WIDTH_MM / MM_PER_INCH, PAGE_HEIGHT_MM / MM_PER_INCH), dpi=dpi)
    FigureCanvasAgg(fig)
    fig.patch.set_facecolor("white")
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(0.0, PAGE_WIDTH_MM)
    ax.set_ylim(0.0, PAGE_HEIGHT_MM)
    ax.set_axis_off()
    _draw_grid(ax)

    for row in range(4):
        y0 = _row_baseline_mm(row)
        cal_x = [_MARGIN_MM, _MARGIN_MM + 2, _MARGIN_MM + 2, _MARGIN_MM + 7, _MARGIN_MM + 7]
        cal_x.append(_TRACE_X0_MM)
        cal_y = [y0, y0, y0 + GAIN_MM_PER_MV, y0 + GAIN_MM_PER_MV, y0, y0]
        ax.plot(cal_x, cal_y, color=_TRACE, linewidth=0.8, zorder=3)

    row_bottom = {row: _row_baseline_mm(row) - 0.4 * _ROW_MM for row in range(4)}
    for row, col, lead, t0, t1 in _panels():
        y0 = _row_baseline_mm(row)
        x_start = _TRACE_X0_MM + t0 * SPEED_MM_PER_S if row < 3 else _TRACE_X0_MM
        ax.text(x_start + 1.0, y0 + 8.0, lead, fontsize=9, fontweight="bold", zorder=5)
        if row < 3 and col > 0:
            ax.plot([x_start, x_start], [y0 - 3.0, y0 + 3.0], color=_TRACE, lw=0.8, zorder=3)
        for h in highlights:
            if h.lead != lead:
                continue
            a, b = max(h.start_s, t0), min(h.end_s, t1)
            if b <= a:
                continue
            xa = x_start + (a - t0) * SPEED_MM_PER_S
            rect = Rectangle(
                (xa, row_bottom[row]),
                (b - a) * SPEED_MM_PER_S,
                _ROW_MM,
                facecolor=_HIGHLIGHT,
                alpha=0.3,
                edgecolor="none",
                zorder=1,
            )
            ax.add_patch(rect)
            if h.label:
                ax.text(xa + 0.5, row_bottom[row] + _ROW_MM - 4.0, h.label, fontsize=6, zorder=5)
        if lead not in index:
            ax.text(x_start + 8.0, y0, "(not recorded)", fontsize=7, color="#666666", zorder=5)
            continue
        s0 = round(t0 * fs_hz)
        s1 = min(round(t1 * fs_hz), x.shape[1])
        if s1 <= s0:
            continue
        t = np.arange(s0, s1) / fs_hz
        xs = x_start + (t - t0) * SPEED_MM_PER_S
        ax.plot(xs, y0 + x[index[lead], s0:s1] * GAIN_MM_PER_MV, color=_TRACE, lw=0.7, zorder=3)
        if ov is not None:
            diff = np.abs(ov[index[lead], s0:s1] - x[index[lead], s0:s1]) > _OVERLAY_MIN_DIFF_MV
            # Widen the drawn span by two samples on each side so the edit joins the trace.
            shown = np.convolve(diff.astype(float), np.ones(5), mode="same") > 0
            if shown.any():
                ys = np.where(shown, y0 + ov[index[lead], s0:s1] * GAIN_MM_PER_MV, np.nan)
                ax.plot(xs, ys, color=_OVERLAY, lw=0.9, zorder=4)

    if title:
        ax.text(_MARGIN_MM, PAGE_HEIGHT_MM - _TITLE_MM / 2, title, fontsize=11, va="center")
    footer = f"{SPEED_MM_PER_S:g} mm/s   {GAIN_MM_PER_MV:g} mm/mV   {fs_hz:g} Hz   grid 1 mm / 5 mm"
    if ov is not None:
        footer += "   blue: counterfactual edit"
    if highlights:
        footer += "   shaded: attributed segments"
    ax.text(_MARGIN_MM, _FOOTER_MM / 2, footer, fontsize=8, va="center", color="#333333")
    return fig


#: savefig options per format: reproducible bytes (no software name or creation date).
_SAVE: dict[str, dict[str, object]] = {
    "png": {"metadata": {"Software": None}},
    "pdf": {"metadata": {"CreationDate": None, "Creator": None}},
}


def render_ecg(
    signals_mv: npt.ArrayLike,
    fs_hz: float,
    lead_names: Sequence[str],
    *,
    formats: Sequence[str] = ("png", "pdf"),
    highlights: Sequence[Highlight] = (),
    overlay: npt.ArrayLike | None = None,
    title: str = "",
    dpi: int = 100,
) -> dict[str, bytes]:
    """The ECG on standard paper in each of `formats` ("png": page 270 x 170 mm at ``dpi``;
    "pdf": one-page vector PDF at true scale), drawn once."""
    unknown = set(formats) - set(_SAVE)
    if unknown:
        raise ValueError(f"unknown picture formats {sorted(unknown)}; use png, pdf")
    fig = _figure(signals_mv, fs_hz, lead_names, highlights, overlay, title, dpi)
    out: dict[str, bytes] = {}
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=dpi, **_SAVE[fmt])  # type: ignore[arg-type]
        out[fmt] = buf.getvalue()
    return out


def render_ecg_png(
    signals_mv: npt.ArrayLike,
    fs_hz: float,
    lead_names: Sequence[str],
    *,
    highlights: Sequence[Highlight] = (),
    overlay: npt.ArrayLike | None = None,
    title: str = "",
    dpi: int = 100,
) -> bytes:
    """The ECG on standard paper as PNG bytes (page 270 x 170 mm at ``dpi``)."""
    return render_ecg(
        signals_mv,
        fs_hz,
        lead_names,
        formats=("png",),
        highlights=highlights,
        overlay=overlay,
        title=title,
        dpi=dpi,
    )["png"]


def render_ecg_pdf(
    signals_mv: npt.ArrayLike,
    fs_hz: float,
    lead_names: Sequence[str],
    *,
    highlights: Sequence[Highlight] = (),
    overlay: npt.ArrayLike | None = None,
    title: str = "",
    dpi: int = 100,
) -> bytes:
    """The ECG on standard paper as a one-page vector PDF (270 x 170 mm, true scale)."""
    return render_ecg(
        signals_mv,
        fs_hz,
        lead_names,
        formats=("pdf",),
        highlights=highlights,
        overlay=overlay,
        title=title,
        dpi=dpi,
    )["pdf"]
