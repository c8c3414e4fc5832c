"""Test-side builders of HL7 v2 chapter-7 waveform variants (MA + CD, ED aECG) from a record."""

from __future__ import annotations

import base64
from datetime import datetime

from inference.record import EcgRecord
from mappers.aecg_out import build_aecg
from mappers.hl7v2_oru_out import build_oru_r01
from mappers.hl7v2_wire import format_ts
from mappers.sample_codec import quantize


def header(
    record: EcgRecord, *, control_id: str, now: datetime, version: str = "2.5.1"
) -> list[str]:
    """MSH, PID and OBR of the NA message `build_oru_r01` writes (reused by the variants)."""
    segs = build_oru_r01(record, control_id=control_id, now=now).decode().split("\r")
    segs[0] = segs[0].replace("|2.5.1", f"|{version}")
    return [s for s in segs if not s.startswith("OBX")]


def build_ma(
    record: EcgRecord,
    *,
    control_id: str,
    now: datetime,
    sensitivity_uv: float = 1.0,
    baseline: int = 0,
    names: tuple[str, ...] | None = None,
) -> bytes:
    """One CD OBX (a channel per lead, sensitivity in uV per unit, baseline), a start-time TS
    OBX and one MA OBX holding all samples as digital values."""
    names = names or record.lead_names
    cds = [
        f"{i}&{name}^^{sensitivity_uv:g}&uV&microvolt^1&{baseline}&0^{record.fs_hz:g}"
        for i, name in enumerate(names, start=1)
    ]
    rows = []
    for lead in record.lead_names:
        ints, _ = quantize(record.lead(lead), "uV")
        rows.append([str(round(v / sensitivity_uv) + baseline) for v in ints.tolist()])
    ma = "~".join("^".join(sample) for sample in zip(*rows, strict=True))
    start = format_ts(record.acquired_at) if record.acquired_at else ""
    segs = header(record, control_id=control_id, now=now)
    segs.append(f"OBX|1|CD|0^CHANNEL DEF^L|1|{'~'.join(cds)}||||||F")
    segs.append(f"OBX|2|TS|TIME^Waveform start^L|1|{start}||||||F")
    segs.append(f"OBX|3|MA|WAV^Waveform^L|1|{ma}||||||F")
    return "\r".join(segs).encode()


def build_ed_aecg(record: EcgRecord, *, control_id: str, now: datetime) -> bytes:
    """The header plus one ED OBX holding the record as a base64 aECG document."""
    data = base64.b64encode(build_aecg(record)).decode()
    segs = header(record, control_id=control_id, now=now)
    segs.append(f"OBX|1|ED|AECG^Annotated ECG^L|1|ECG^text^XML^Base64^{data}||||||F")
    return "\r".join(segs).encode()
