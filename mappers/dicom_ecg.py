"""DICOM 12-lead ECG Waveform Storage (SOP class 1.2.840.10008.5.1.4.1.1.9.1.1, PS3.3
C.10.9 Waveform module) <-> EcgRecord, with pydicom 3.

Inbound: the first multiplex group of the Waveform Sequence (``RHYTHM`` preferred); channel
leads from Channel Source Sequence code meaning / value (MDC ``2:1`` style codes, SCPECG
``5.6.3-9-1`` ... and plain names all go through `mappers.leads`); samples from pydicom's
``waveform_array`` (sensitivity x correction factor + baseline, per the standard) in the
Channel Sensitivity Units (UCUM ``uV``/``mV``). Patient ID, sex, age (``PatientAge`` or
birth date + acquisition), AcquisitionDateTime and SOP Instance UID come from the dataset.

Outbound (`build_dicom_ecg`): one RHYTHM multiplex, 16-bit signed (SS), 1 uV sensitivity
(integer microvolts: exact for PTB-XL), MDC channel codes; bytes of a Part 10 file. Pure:
in-memory buffers only.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pydicom.waveforms.numpy_handler import multiplex_array

from inference.errors import EcgValidationError
from inference.record import LEADS_12, Demographics, EcgRecord, PatientRef, Sex
from mappers.errors import (
    DataTypeError,
    MappingError,
    MessageSyntaxError,
    MissingFieldError,
    SampleRangeError,
    SamplingRateError,
    UnitError,
    WaveformError,
)
from mappers.hl7v2_wire import parse_ts
from mappers.leads import MDC_CODES, MDC_REFIDS, assemble_12, lead_of_any
from mappers.sample_codec import to_millivolts, voltage_unit

ECG_12_LEAD_SOP = "1.2.840.10008.5.1.4.1.1.9.1.1"
_SEX = {"M": Sex.MALE, "F": Sex.FEMALE}


def record_from_dicom(data: bytes) -> EcgRecord:
    """A DICOM 12-lead ECG (Part 10 bytes) -> `EcgRecord`. Raises `MessageSyntaxError` (not
    DICOM / no waveform), `MissingFieldError`, and the lead/waveform errors."""
    try:
        return _parse(data)
    except MappingError:
        raise
    except EcgValidationError as exc:
        cls = SamplingRateError if exc.field == "fs_hz" else WaveformError
        raise cls(str(exc), location="WaveformSequence[0]") from exc
    except Exception as exc:
        raise MessageSyntaxError(
            f"malformed DICOM waveform ({type(exc).__name__})", location="DICOM"
        ) from exc


def _parse(data: bytes) -> EcgRecord:
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
    except InvalidDicomError:
        raise MessageSyntaxError("not a DICOM Part 10 file", location="DICOM") from None
    groups = ds.get("WaveformSequence")
    if not groups:
        raise MissingFieldError("no Waveform Sequence (5400,0100)", location="WaveformSequence")
    labels = [str(g.get("MultiplexGroupLabel", "")).upper() for g in groups]
    index = labels.index("RHYTHM") if "RHYTHM" in labels else 0
    group = groups[index]
    loc = f"WaveformSequence[{index}]"
    fs = float(group.get("SamplingFrequency") or 0)
    if not fs > 0:
        raise SamplingRateError(
            "SamplingFrequency must be positive", location=f"{loc}.SamplingFrequency"
        )
    if str(group.get("WaveformSampleInterpretation", "SS")) not in ("SS", "US", "SL", "UL"):
        raise WaveformError(
            "only SS/US/SL/UL sample interpretations are read",
            location=f"{loc}.WaveformSampleInterpretation",
        )
    physical = multiplex_array(ds, index, as_raw=False)
    leads: dict[str, np.ndarray] = {}
    locations: dict[str, str] = {}
    unknown: list[str] = []
    for j, ch in enumerate(group.ChannelDefinitionSequence):
        cloc = f"{loc}.ChannelDefinitionSequence[{j}]"
        src = (ch.get("ChannelSourceSequence") or [Dataset()])[0]
        code = src.get("CodeValue")
        lead = lead_of_any([src.get("CodeMeaning"), code, ch.get("ChannelLabel"), _mdc_colon(code)])
        if lead is None:
            unknown.append(f"{cloc}.ChannelSourceSequence")
            continue
        if lead in leads:
            from mappers.errors import DuplicateLeadError

            raise DuplicateLeadError(
                f"lead {lead} sent twice", location=f"{cloc}.ChannelSourceSequence"
            )
        units_seq = ch.get("ChannelSensitivityUnitsSequence") or []
        unit_text = str(units_seq[0].get("CodeValue", "")) if units_seq else "uV"
        unit = voltage_unit(unit_text)
        if unit is None:
            raise UnitError(
                f"units {unit_text[:20]!r} are not a voltage",
                location=f"{cloc}.ChannelSensitivityUnitsSequence",
            )
        values = to_millivolts(np.asarray(physical[:, j], dtype=np.float64), unit)
        leads[lead] = values
        locations[lead] = cloc
    signals = assemble_12(leads, locations=locations, unknown=unknown, where=loc)
    acquired = _acquired(ds)
    sop = str(ds.get("SOPInstanceUID", "")) or "dicom-ecg"
    patient = PatientRef(value=str(ds.PatientID)) if ds.get("PatientID") else None
    signals.setflags(write=False)
    return EcgRecord(
        signals_mv=signals,
        lead_names=LEADS_12,
        fs_hz=fs,
        record_id=f"urn:oid:{sop}" if sop[0].isdigit() else sop,
        acquired_at=acquired,
        patient=patient,
        demographics=Demographics(
            age_years=_age(ds), sex=_SEX.get(str(ds.get("PatientSex", "")), Sex.UNKNOWN)
        ),
        identifiers=(("sop_instance_uid", sop),),
    )


def _mdc_colon(code: object) -> str | None:
    """MDC codes written as ``<partition>:<code>`` (``2:1`` = lead I) -> the 32-bit code."""
    text = str(code or "")
    part, sep, num = text.partition(":")
    if sep and part.isdigit() and num.isdigit():
        return str(int(part) * 65536 + int(num))
    return None


def _acquired(ds: Dataset) -> datetime | None:
    text = str(ds.get("AcquisitionDateTime", "") or "")
    if not text and ds.get("ContentDate"):
        text = str(ds.ContentDate) + str(ds.get("ContentTime", "") or "")
    return parse_ts(text, location="AcquisitionDateTime") if text else None


def _age(ds: Dataset) -> float | None:
    text = str(ds.get("PatientAge", "") or "")
    if not text:
        return None
    try:
        value, unit = float(text[:-1]), text[-1].upper()
    except ValueError:
        raise DataTypeError("PatientAge is not nnnY/M/W/D", location="PatientAge") from None
    years = value / {"Y": 1.0, "M": 12.0, "W": 52.18, "D": 365.25}.get(unit, 1.0)
    if not 0 <= years <= 130:
        raise DataTypeError("PatientAge outside 0-130 years", location="PatientAge")
    return float(int(years))


def build_dicom_ecg(record: EcgRecord, *, sop_instance_uid: str | None = None) -> bytes:
    """`record` as a DICOM 12-lead ECG Waveform Storage Part 10 file (bytes).

    Samples are integer microvolts in 16 bits; raises `SampleRangeError` beyond +-32.767 mV.
    """
    uv = np.rint(record.signals_mv.astype(np.float64) * 1000.0)
    if uv.size and np.abs(uv).max() > 32767:
        raise SampleRangeError("samples beyond the 16-bit microvolt range", location="signals_mv")
    uid = sop_instance_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(ECG_12_LEAD_SOP)
    meta.MediaStorageSOPInstanceUID = UID(uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = ECG_12_LEAD_SOP
    ds.SOPInstanceUID = uid
    ds.Modality = "ECG"
    if record.patient is not None:
        ds.PatientID = record.patient.value or record.patient.reference or ""
    ds.PatientSex = {Sex.MALE: "M", Sex.FEMALE: "F"}.get(record.demographics.sex, "O")
    if record.demographics.age_years is not None:
        ds.PatientAge = f"{int(record.demographics.age_years):03d}Y"
    if record.acquired_at is not None:
        ds.AcquisitionDateTime = record.acquired_at.astimezone(UTC).strftime("%Y%m%d%H%M%S")
    group = Dataset()
    group.MultiplexGroupLabel = "RHYTHM"
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = len(record.lead_names)
    group.NumberOfWaveformSamples = record.n_samples
    group.SamplingFrequency = f"{record.fs_hz:g}"
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    channels = []
    for lead in record.lead_names:
        ch = Dataset()
        src = Dataset()
        src.CodeValue = str(MDC_CODES.get(lead, lead))
        src.CodingSchemeDesignator = "MDC"
        src.CodeMeaning = MDC_REFIDS.get(lead, lead)
        ch.ChannelSourceSequence = Sequence([src])
        ch.ChannelSensitivity = "1"
        unit = Dataset()
        unit.CodeValue = "uV"
        unit.CodingSchemeDesignator = "UCUM"
        unit.CodeMeaning = "microvolt"
        ch.ChannelSensitivityUnitsSequence = Sequence([unit])
        ch.ChannelSensitivityCorrectionFactor = "1"
        ch.ChannelBaseline = "0"
        ch.ChannelSampleSkew = "0"
        ch.WaveformBitsStored = 16
        channels.append(ch)
    group.ChannelDefinitionSequence = Sequence(channels)
    group.WaveformData = uv.T.astype("<i2").tobytes()
    ds.WaveformSequence = Sequence([group])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
