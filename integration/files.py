"""Reading ECG files for `ecgbridge analyze`: the format is recognised by content.

WFDB (.hea header + signal file), FHIR JSON (Observation or Bundle), HL7 v2 (ER7 text,
optionally MLLP-framed), HL7 aECG XML (root element AnnotatedECG) and DICOM 12-lead ECG
Waveform Storage (Part 10: ``DICM`` at byte 128). The extension is only a hint: the content
decides (a ``.txt`` holding an ORU^R01 is read as HL7, a ``.dcm`` holding XML as aECG).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from inference.errors import EcgValidationError
from inference.record import EcgRecord
from integration.errors import InputFileError
from mappers.aecg_in import record_from_aecg
from mappers.dicom_ecg import record_from_dicom
from mappers.errors import MappingError
from mappers.fhir_r4 import bundle_to_records, observation_to_record
from mappers.hl7v2 import parse_oru_r01


@dataclass(frozen=True, slots=True)
class FileEcg:
    path: Path
    entry: int
    record: EcgRecord
    idem_key: str


def read_ecg_file(path: Path) -> list[FileEcg]:
    """All ECGs in one file. Raises `InputFileError` naming the file and the field."""
    if not path.exists():
        raise InputFileError("no such file", path=str(path))
    if path.suffix.lower() == ".hea" or _looks_like_wfdb_header(path):
        return [_wfdb(path)]
    raw = path.read_bytes()
    key = "file-sha256:" + hashlib.sha256(raw).hexdigest()
    text = raw.lstrip(b"\x0b\xef\xbb\xbf \t\r\n")
    try:
        if raw[128:132] == b"DICM":
            return [FileEcg(path, 0, record_from_dicom(raw), key)]
        if text.startswith(b"<"):
            return [FileEcg(path, 0, record_from_aecg(text), key)]
        if text.startswith(b"MSH"):
            _, record = parse_oru_r01(text.rstrip(b"\x1c\r\n") + b"\r")
            return [FileEcg(path, 0, record, key)]
        if text.startswith(b"{"):
            obj = json.loads(text)
            if isinstance(obj, dict) and obj.get("resourceType") == "Bundle":
                return [FileEcg(path, i, rec, f"{key}#{i}") for i, rec in bundle_to_records(obj)]
            return [FileEcg(path, 0, observation_to_record(obj), key)]
    except MappingError as exc:
        raise InputFileError(str(exc), path=str(path), field=exc.location) from exc
    except json.JSONDecodeError as exc:
        raise InputFileError(f"not valid JSON: {exc}", path=str(path)) from exc
    raise InputFileError(
        "format not recognised (expected WFDB .hea, FHIR JSON, HL7 v2, aECG XML or DICOM)",
        path=str(path),
    )


def _looks_like_wfdb_header(path: Path) -> bool:
    return path.with_suffix(".hea").exists() and path.suffix == ""


def _wfdb(path: Path) -> FileEcg:
    import wfdb

    from mappers.wfdb_in import check_header_text, record_from_wfdb

    base = path.with_suffix("")
    try:
        check_header_text(base.with_suffix(".hea").read_text(errors="replace"))
    except MappingError as exc:
        raise InputFileError(str(exc), path=str(path), field=exc.location) from exc
    try:
        rec = wfdb.rdrecord(str(base))
    except Exception as exc:  # wfdb raises bare ValueErrors, IndexErrors, FileNotFoundErrors
        raise InputFileError(
            f"WFDB record unreadable: {exc.__class__.__name__}: {exc}",
            path=str(path),
            field=_wfdb_field(exc),
        ) from exc
    try:
        record = record_from_wfdb(rec, record_id=base.name)
    except (MappingError, EcgValidationError) as exc:
        field = getattr(exc, "location", "") or getattr(exc, "field", "")
        raise InputFileError(str(exc), path=str(path), field=field) from exc
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return FileEcg(path, 0, record, f"file-wfdb:{base.name}:{digest}")


def _wfdb_field(exc: Exception) -> str:
    text = str(exc).lower()
    for name in ("fs", "n_sig", "sig_len", "fmt", "adc_gain", "baseline", "units", "sig_name"):
        if name in text:
            return name
    if isinstance(exc, FileNotFoundError):
        return "signal file"
    return "header"
