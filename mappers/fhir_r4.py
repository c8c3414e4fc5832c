"""FHIR R4 (4.0.1) ECG Observation / Bundle <-> EcgRecord, via `fhir.resources.R4B`.

Inbound, as in the core spec's ECG example (``Observation/ekg``): code MDC 131328
(MDC_ECG_ELEC_POTL), one `component` per lead coded MDC (``131329`` ...; any spelling
`mappers.leads.canonical_lead` accepts, in a coding code/display or the text) with
`valueSampledData`: sample = origin.value + factor * data value, in the UCUM unit of the
origin (``uV``, ``mV``, ``V``; `code`, else `unit`), period in ms, dimensions 1. R5
SampledData (``interval`` + ``intervalUnit``) is accepted and converted to an R4 period
before validation. Components whose code is not one of the 12 standard leads are ignored;
a lead sent twice is a `LeadError`.

Identity: `record_id` = first identifier ``system|value`` (``value`` alone when it has no
system), else ``Observation/<id>``. `identifiers` gets ``("observation", "Observation/<id>")``
and ``("version", meta.versionId or "")``. Demographics come from an optional Patient: gender,
and birthDate + effective time -> age in whole years.

Outbound (`record_to_observation`, `patient_resource`) is in `mappers.fhir_ecg_out`; the
report side (DiagnosticReport, Observations, Provenance) in `mappers.fhir_report`. Both
are re-exported here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt
from fhir.resources.R4B.observation import Observation, ObservationComponent
from fhir.resources.R4B.patient import Patient

from inference.errors import EcgValidationError
from inference.record import LEADS_12, Demographics, EcgRecord, PatientRef, Sex
from mappers.errors import (
    DataTypeError,
    FhirResourceError,
    LeadError,
    MappingError,
    MissingFieldError,
    NonFiniteSampleError,
    WaveformError,
)
from mappers.fhir_attachment import (
    contained_resources,
    has_sampled_components,
    record_from_attachment,
    waveform_source,
)
from mappers.fhir_ecg_out import ECG_CODE, ECG_REFID, patient_resource, record_to_observation
from mappers.fhir_json import (
    UCUM,
    bundle_references,
    parse_json_object,
    resolve_reference,
    resource_json,
    validate_resource,
)
from mappers.fhir_report import ReportResources, build_report, report_bundle
from mappers.leads import canonical_lead
from mappers.sample_codec import parse_decimals, to_millivolts, voltage_unit

__all__ = [
    "ReportResources",
    "build_report",
    "bundle_to_records",
    "observation_to_record",
    "patient_resource",
    "record_to_observation",
    "report_bundle",
    "resource_json",
]

_INTERVAL_MS = {"ms": Decimal(1), "s": Decimal(1000), "us": Decimal("0.001")}
_GENDER = {"male": Sex.MALE, "female": Sex.FEMALE}


def observation_to_record(
    obj: Mapping[str, Any] | bytes | str, *, patient: Mapping[str, Any] | None = None
) -> EcgRecord:
    """An ECG Observation (JSON text or object), and optionally its Patient -> `EcgRecord`.

    Raises `FhirResourceError` (invalid R4, not an ECG), `MissingFieldError` (no SampledData,
    no unit, no identity), `LeadError`, `WaveformError` or `DataTypeError`.
    """
    try:
        data = parse_json_object(obj, root="Observation")
        return _to_record(data, patient, path="Observation", patient_path="Patient")
    except MappingError:
        raise
    except EcgValidationError as exc:
        raise WaveformError(str(exc), location="Observation") from exc
    except Exception as exc:
        raise FhirResourceError(
            f"malformed Observation ({type(exc).__name__})", location="Observation"
        ) from exc


def bundle_to_records(obj: Mapping[str, Any] | bytes | str) -> list[tuple[int, EcgRecord]]:
    """The ECG Observations of a Bundle (any type) as ``(entry index, record)`` pairs.

    Each Observation's subject is resolved against the Bundle's Patients by fullUrl or
    ``Patient/<id>``. Non-ECG entries are skipped; a Bundle without any ECG Observation is a
    `MissingFieldError`. Locations read ``Bundle.entry[3].resource...``.
    """
    try:
        return _bundle_to_records(obj)
    except MappingError:
        raise
    except EcgValidationError as exc:
        raise WaveformError(str(exc), location="Bundle") from exc
    except Exception as exc:
        raise FhirResourceError(
            f"malformed Bundle ({type(exc).__name__})", location="Bundle"
        ) from exc


def _bundle_to_records(obj: Mapping[str, Any] | bytes | str) -> list[tuple[int, EcgRecord]]:
    data = parse_json_object(obj, root="Bundle")
    entries = data.get("entry") or []
    if not isinstance(entries, list):
        raise FhirResourceError("Bundle.entry must be an array", location="Bundle.entry")
    keys = bundle_references(entries)
    resources = {key: entries[i]["resource"] for key, i in keys.items()}
    patients = {
        key: (i, res)
        for key, i in keys.items()
        if (res := resources[key]).get("resourceType") == "Patient"
    }
    out: list[tuple[int, EcgRecord]] = []
    for i, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(resource, Mapping) or resource.get("resourceType") != "Observation":
            continue
        if not _is_ecg_code(resource.get("code")):
            continue
        found = _resolve_subject(resource.get("subject"), patients)
        patient_data, patient_path = (None, "Patient")
        if found is not None:
            patient_data, patient_path = found[1], f"Bundle.entry[{found[0]}].resource"
        record = _to_record(
            dict(resource),
            patient_data,
            path=f"Bundle.entry[{i}].resource",
            patient_path=patient_path,
            resources=resources,
        )
        out.append((i, record))
    if not out:
        raise MissingFieldError(
            "Bundle holds no ECG Observation (MDC 131328)", location="Bundle.entry"
        )
    return out


def _resolve_subject(
    subject: Any, patients: Mapping[str, tuple[int, Mapping[str, Any]]]
) -> tuple[int, Mapping[str, Any]] | None:
    if not isinstance(subject, Mapping) or not isinstance(subject.get("reference"), str):
        return None
    return resolve_reference(subject["reference"], patients)


def _is_ecg_code(code: Any) -> bool:
    if not isinstance(code, Mapping):
        return False
    for coding in code.get("coding") or []:
        if isinstance(coding, Mapping) and (
            str(coding.get("code")) in (ECG_CODE, ECG_REFID) or coding.get("display") == ECG_REFID
        ):
            return True
    return False


def _r5_sampled_data_to_r4(data: dict[str, Any], path: str) -> dict[str, Any]:
    """Rewrite R5 SampledData (interval + intervalUnit) as R4 (period in ms), in a copy."""
    components = data.get("component")
    if not isinstance(components, list):
        return data
    new_components: list[Any] = []
    for i, comp in enumerate(components):
        sd = comp.get("valueSampledData") if isinstance(comp, Mapping) else None
        if isinstance(sd, Mapping) and "interval" in sd and "period" not in sd:
            sd = dict(sd)
            unit = str(sd.pop("intervalUnit", "ms"))
            if unit not in _INTERVAL_MS:
                raise WaveformError(
                    f"intervalUnit {unit[:10]!r} is not ms, s or us",
                    location=f"{path}.component[{i}].valueSampledData.intervalUnit",
                )
            try:
                sd["period"] = Decimal(str(sd.pop("interval"))) * _INTERVAL_MS[unit]
            except ArithmeticError:
                raise WaveformError(
                    "interval is not a number",
                    location=f"{path}.component[{i}].valueSampledData.interval",
                ) from None
            comp = {**comp, "valueSampledData": sd}
        new_components.append(comp)
    return {**data, "component": new_components}


def _lead_of(comp: ObservationComponent) -> str | None:
    if comp.code is None:
        return None
    texts = [c.code for c in comp.code.coding or []] + [c.display for c in comp.code.coding or []]
    texts.append(comp.code.text)
    for text in texts:
        if text:
            try:
                return canonical_lead(str(text))
            except LeadError:
                continue
    return None


def _without_data_texts(data: dict[str, Any]) -> tuple[dict[str, Any], dict[int, str]]:
    """`data` with each component's non-empty `valueSampledData.data` string set aside.

    The samples are parsed from the original text by `_data_values` (stricter than a FHIR
    string), so pydantic need not copy and pattern-check some 20 kB of text per lead: this
    halves validation time and the memory it takes. A `data` that is not a non-empty string is
    left in place for the model to refuse."""
    components = data.get("component")
    if not isinstance(components, list):
        return data, {}
    texts: dict[int, str] = {}
    new_components: list[Any] = []
    for i, comp in enumerate(components):
        sd = comp.get("valueSampledData") if isinstance(comp, dict) else None
        if isinstance(sd, dict) and isinstance(sd.get("data"), str) and sd["data"].strip():
            texts[i] = sd["data"]
            comp = {**comp, "valueSampledData": {**sd, "data": "0"}}
        new_components.append(comp)
    return {**data, "component": new_components}, texts


def _samples(
    comp: ObservationComponent, loc: str, data_text: str | None
) -> tuple[npt.NDArray[np.float32], Decimal]:
    sd = comp.valueSampledData
    loc = f"{loc}.valueSampledData"
    if sd is None:
        raise MissingFieldError("lead component has no valueSampledData", location=loc)
    if sd.dimensions != 1:
        raise WaveformError("only dimensions = 1 is supported", location=f"{loc}.dimensions")
    if not sd.data:
        raise MissingFieldError("SampledData has no data", location=f"{loc}.data")
    if sd.origin is None:
        raise MissingFieldError("SampledData has no origin", location=f"{loc}.origin")
    unit_text = sd.origin.code if sd.origin.code and sd.origin.system in (None, UCUM) else None
    unit_text = unit_text or sd.origin.unit or sd.origin.code
    if not unit_text:
        raise MissingFieldError("SampledData origin has no unit", location=f"{loc}.origin.code")
    unit = voltage_unit(unit_text)
    if unit is None:
        raise WaveformError(
            f"unit {unit_text[:20]!r} is not a voltage (uV, mV, V)", location=f"{loc}.origin.code"
        )
    if sd.period is None:
        raise MissingFieldError("SampledData has no period", location=f"{loc}.period")
    period = Decimal(sd.period)
    if not period.is_finite() or period <= 0:
        raise WaveformError("period must be positive", location=f"{loc}.period")
    values = _data_values(data_text or sd.data, sd.lowerLimit, sd.upperLimit, loc)
    factor = Decimal(sd.factor) if sd.factor is not None else Decimal(1)
    if factor != 1:
        exponent = factor.normalize().as_tuple()
        if exponent.digits == (1,) and isinstance(exponent.exponent, int) and exponent.sign == 0:
            # a power of ten: divide exactly rather than multiply by an inexact float
            # in place: `values` is this call's own array
            if exponent.exponent < 0:
                values /= 10.0 ** (-exponent.exponent)
            else:
                values *= 10.0**exponent.exponent
        else:
            values *= float(factor)
    origin = float(sd.origin.value) if sd.origin.value is not None else 0.0
    if origin:
        values += origin
    return to_millivolts(values, unit), period


def _data_values(text: str, lower: Any, upper: Any, loc: str) -> npt.NDArray[np.float64]:
    """SampledData.data -> numbers. The special values read: ``L`` -> lowerLimit and ``U`` ->
    upperLimit (saturation, kept so the quality gate sees it); ``E`` (error) is refused, as
    is L/U without its limit."""
    try:
        return parse_decimals(text, None)
    except ValueError:
        pass
    tokens = text.split()
    special = {"L": lower, "U": upper}
    out = np.empty(len(tokens), dtype=np.float64)
    for i, tok in enumerate(tokens):
        if tok in special:
            limit = special[tok]
            if limit is None:
                name = "lowerLimit" if tok == "L" else "upperLimit"
                raise MissingFieldError(
                    f"data value {i} is {tok!r} but SampledData has no {name}",
                    location=f"{loc}.{name}",
                )
            out[i] = float(limit)
            continue
        if tok == "E":
            raise NonFiniteSampleError(
                f"data value {i} is 'E' (error): the lead is unusable", location=f"{loc}.data"
            )
        try:
            out[i] = float(tok)
        except ValueError:
            raise NonFiniteSampleError(
                f"data value {i} ({tok[:12]!r}) is not a number", location=f"{loc}.data"
            ) from None
    if not np.isfinite(out).all() or not tokens:
        raise NonFiniteSampleError("data holds NaN, infinity or nothing", location=f"{loc}.data")
    return out


def _age_years(birth: Any, at: datetime | None, location: str) -> float | None:
    if birth is None or at is None:
        return None
    if isinstance(birth, date):
        born = birth
    else:  # partial date "YYYY" or "YYYY-MM": take the first day of the period
        parts = str(birth).split("-")
        born = date(int(parts[0]), int(parts[1]) if len(parts) > 1 else 1, 1)
    today = at.date()
    years = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
    if not 0 <= years <= 130:
        raise DataTypeError("birthDate gives an age outside 0-130 years", location=location)
    return float(years)


def _effective(obs: Observation) -> datetime | None:
    for value in (
        obs.effectiveInstant,
        obs.effectiveDateTime,
        obs.effectivePeriod.start if obs.effectivePeriod else None,
    ):
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if isinstance(value, date):
            return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return None


def _to_record(
    data: dict[str, Any],
    patient_data: Mapping[str, Any] | None,
    *,
    path: str,
    patient_path: str,
    resources: Mapping[str, Mapping[str, Any]] | None = None,
) -> EcgRecord:
    source = None
    if not has_sampled_components(data):
        source = waveform_source(
            data, {**(resources or {}), **contained_resources(data)}, path=path
        )
        data = {k: v for k, v in data.items() if k != "valueAttachment"}  # R5 only
    stripped, data_texts = _without_data_texts(_r5_sampled_data_to_r4(data, path))
    obs = validate_resource(Observation, stripped, path=path)
    if obs.code is None:
        raise MissingFieldError("Observation has no code", location=f"{path}.code")
    if not _is_ecg_code(obs.code.model_dump(mode="json")):
        raise FhirResourceError(
            "not an ECG Observation: code must be MDC 131328 (MDC_ECG_ELEC_POTL)",
            location=f"{path}.code",
        )
    if source is not None:
        return _with_observation_identity(
            record_from_attachment(source[0], source[1], location=source[2]),
            obs,
            patient_data,
            path=path,
            patient_path=patient_path,
        )
    if not obs.component:
        raise MissingFieldError(
            "ECG Observation has no lead components (nor a waveform attachment)",
            location=f"{path}.component",
        )
    # Each lead goes straight into one (12, n) matrix (n from the first lead read), so the
    # parse holds the samples once, not once per lead and again when stacked.
    rows = {lead: row for row, lead in enumerate(LEADS_12)}
    matrix: npt.NDArray[np.float32] | None = None
    leads: dict[str, tuple[int, int, Decimal]] = {}
    for i, comp in enumerate(obs.component):
        loc = f"{path}.component[{i}]"
        lead = _lead_of(comp)
        if lead is None:
            continue
        if lead in leads:
            raise LeadError(
                f"lead {lead} sent twice (first in component[{leads[lead][0]}])",
                location=f"{loc}.code",
            )
        values, period = _samples(comp, loc, data_texts.get(i))
        if matrix is None:
            matrix = np.empty((len(LEADS_12), values.size), dtype=np.float32)
        if lead in rows and values.size == matrix.shape[1]:
            matrix[rows[lead]] = values
        leads[lead] = (i, values.size, period)
        del values
    missing = [lead for lead in LEADS_12 if lead not in leads]
    if missing or matrix is None:
        raise LeadError(f"missing leads {', '.join(missing)}", location=f"{path}.component")
    i_ref, ref_size, period_ref = leads[LEADS_12[0]]
    for lead in LEADS_12[1:]:
        i, size, period = leads[lead]
        loc = f"{path}.component[{i}].valueSampledData"
        if period != period_ref:
            raise WaveformError(
                f"lead {lead} period {period} ms differs from lead I's {period_ref} ms",
                location=f"{loc}.period",
            )
        if size != ref_size:
            raise WaveformError(
                f"lead {lead} has {size} samples but lead I (component[{i_ref}]) has {ref_size}",
                location=f"{loc}.data",
            )
    if ref_size != matrix.shape[1]:  # every lead agrees with lead I, so none can differ
        raise WaveformError("lead lengths disagree", location=f"{path}.component")
    matrix.setflags(write=False)  # the record keeps it as it is instead of copying
    fs_hz = 1000.0 / float(period_ref)
    if math.isfinite(fs_hz) and abs(fs_hz - round(fs_hz)) < 1e-6:
        fs_hz = float(round(fs_hz))

    record_id = _record_id(obs, path)
    acquired_at = _effective(obs)
    patient_ref, demographics = _subject(obs, patient_data, acquired_at, patient_path)
    identifiers = _identifiers(obs)
    try:
        return EcgRecord(
            signals_mv=matrix,
            lead_names=LEADS_12,
            fs_hz=fs_hz,
            record_id=record_id,
            acquired_at=acquired_at,
            patient=patient_ref,
            demographics=demographics,
            identifiers=tuple(identifiers),
        )
    except EcgValidationError as exc:
        raise WaveformError(str(exc), location=f"{path}.component") from exc


def _identifiers(obs: Observation) -> list[tuple[str, str]]:
    identifiers = []
    if obs.id:
        identifiers.append(("observation", f"Observation/{obs.id}"))
    identifiers.append(("version", (obs.meta.versionId if obs.meta else None) or ""))
    return identifiers


def _with_observation_identity(
    waveform: EcgRecord,
    obs: Observation,
    patient_data: Mapping[str, Any] | None,
    *,
    path: str,
    patient_path: str,
) -> EcgRecord:
    """The attachment's samples under the Observation's identity, subject and time; the
    attachment's demographics only where the FHIR side says nothing."""
    acquired_at = _effective(obs) or waveform.acquired_at
    patient_ref, demographics = _subject(obs, patient_data, acquired_at, patient_path)
    sex = demographics.sex if demographics.sex is not Sex.UNKNOWN else waveform.demographics.sex
    age = (
        demographics.age_years
        if demographics.age_years is not None
        else waveform.demographics.age_years
    )
    try:
        return dataclasses.replace(
            waveform,
            record_id=_record_id(obs, path),
            acquired_at=acquired_at,
            patient=patient_ref or waveform.patient,
            demographics=Demographics(age_years=age, sex=sex),
            identifiers=tuple(_identifiers(obs)),
        )
    except EcgValidationError as exc:
        raise WaveformError(str(exc), location=path) from exc


def _record_id(obs: Observation, path: str) -> str:
    for ident in obs.identifier or []:
        if ident.value:
            return f"{ident.system}|{ident.value}" if ident.system else str(ident.value)
    if obs.id:
        return f"Observation/{obs.id}"
    raise MissingFieldError(
        "ECG Observation has neither an identifier nor an id", location=f"{path}.identifier"
    )


def _subject(
    obs: Observation,
    patient_data: Mapping[str, Any] | None,
    at: datetime | None,
    patient_path: str,
) -> tuple[PatientRef | None, Demographics]:
    reference = system = value = None
    if obs.subject is not None:
        reference = obs.subject.reference
        if obs.subject.identifier is not None:
            system, value = obs.subject.identifier.system, obs.subject.identifier.value
    demographics = Demographics()
    if patient_data is not None:
        data = parse_json_object(patient_data, root="Patient")
        patient = validate_resource(Patient, data, path=patient_path)
        if value is None:
            for ident in patient.identifier or []:
                if ident.value:
                    system, value = ident.system, ident.value
                    break
        if reference is None and patient.id:
            reference = f"Patient/{patient.id}"
        demographics = Demographics(
            age_years=_age_years(patient.birthDate, at, f"{patient_path}.birthDate"),
            sex=_GENDER.get(str(patient.gender), Sex.UNKNOWN),
        )
    if reference is None and value is None:
        return None, demographics
    return PatientRef(reference=reference, system=system, value=value), demographics
