"""The ECG record: the one in-memory form every wire format is mapped into.

Samples are float32 millivolts, shape (n_leads, n_samples), with one name per lead.
The record is frozen and its sample array is read-only, so it can be shared safely
between the model, the explainer and the mappers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from inference.errors import EcgValidationError

LEADS_12: tuple[str, ...] = (
    "I",
    "II",
    "III",
    "aVR",
    "aVL",
    "aVF",
    "V1",
    "V2",
    "V3",
    "V4",
    "V5",
    "V6",
)

#: A resting ECG never exceeds this amplitude; larger values mean the sender's units or
#: gain were misread (microvolts taken for millivolts, a missing sensitivity factor).
MAX_ABS_AMPLITUDE_MV = 50.0
MIN_FS_HZ = 50.0
MAX_FS_HZ = 20_000.0
MIN_DURATION_S = 1.0


#: The fairness age bands, youngest first: below `AGE_BAND_LOW_YEARS`, from it to
#: `AGE_BAND_HIGH_YEARS` inclusive, and above. The one definition of the edges and labels.
AGE_BANDS: tuple[str, ...] = ("<40", "40-65", ">65")
AGE_BAND_LOW_YEARS = 40.0
AGE_BAND_HIGH_YEARS = 65.0


def age_bands_of(age_years: npt.ArrayLike) -> npt.NDArray[np.str_]:
    """The `AGE_BANDS` label of each age in years ("" where it is NaN), same shape."""
    age = np.asarray(age_years, dtype=np.float64)
    out = np.full(age.shape, "", dtype="<U5")
    out[age < AGE_BAND_LOW_YEARS] = AGE_BANDS[0]
    out[(age >= AGE_BAND_LOW_YEARS) & (age <= AGE_BAND_HIGH_YEARS)] = AGE_BANDS[1]
    out[age > AGE_BAND_HIGH_YEARS] = AGE_BANDS[2]
    return out


class Sex(StrEnum):
    """Administrative sex as recorded by the sender (FHIR AdministrativeGender subset)."""

    MALE = "male"
    FEMALE = "female"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Demographics:
    """Patient demographics used by the model's fairness checks. No names, no birth dates."""

    age_years: float | None = None
    sex: Sex = Sex.UNKNOWN

    def __post_init__(self) -> None:
        if self.age_years is not None and not (0.0 <= self.age_years <= 130.0):
            raise EcgValidationError(
                f"age {self.age_years} years is outside 0-130", field="demographics.age_years"
            )

    @property
    def age_band(self) -> str | None:
        """The fairness age band (`AGE_BANDS`): ``"<40"``, ``"40-65"`` or ``">65"``."""
        if self.age_years is None:
            return None
        return str(age_bands_of(self.age_years)[()])


@dataclass(frozen=True, slots=True)
class PatientRef:
    """Who the ECG belongs to: a FHIR reference and/or a business identifier (e.g. an MRN)."""

    reference: str | None = None
    system: str | None = None
    value: str | None = None

    def __post_init__(self) -> None:
        if self.reference is None and self.value is None:
            raise EcgValidationError(
                "a patient needs a reference or an identifier value", field="patient"
            )


@dataclass(frozen=True, slots=True)
class EcgRecord:
    """A resting ECG in physical units.

    `record_id` is the sender's identity of this ECG (HL7 filler order number or MSH-10,
    FHIR Observation identifier, file name); `identifiers` carries every identifier the
    sender gave, keyed by a short name (``"msh10"``, ``"filler"``, ``"observation"``...).
    """

    signals_mv: npt.NDArray[np.float32]
    lead_names: tuple[str, ...]
    fs_hz: float
    record_id: str
    acquired_at: datetime | None = None
    patient: PatientRef | None = None
    demographics: Demographics = field(default_factory=Demographics)
    identifiers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        sig = self.signals_mv
        if not isinstance(sig, np.ndarray) or sig.ndim != 2:
            raise EcgValidationError(
                "samples must be a 2-D array (leads x samples)", field="signals_mv"
            )
        if sig.dtype != np.float32:
            raise EcgValidationError(
                f"samples must be float32 mV, got {sig.dtype}", field="signals_mv"
            )
        n_leads, n_samples = sig.shape
        if n_leads == 0 or n_leads != len(self.lead_names):
            raise EcgValidationError(
                f"{n_leads} sample rows but {len(self.lead_names)} lead names",
                field="lead_names",
            )
        if len(set(self.lead_names)) != len(self.lead_names):
            raise EcgValidationError(
                f"duplicate lead names in {self.lead_names}", field="lead_names"
            )
        if not (math.isfinite(self.fs_hz) and MIN_FS_HZ <= self.fs_hz <= MAX_FS_HZ):
            raise EcgValidationError(
                f"sampling rate {self.fs_hz} Hz is outside {MIN_FS_HZ:g}-{MAX_FS_HZ:g} Hz",
                field="fs_hz",
            )
        if n_samples < MIN_DURATION_S * self.fs_hz:
            raise EcgValidationError(
                f"{n_samples} samples at {self.fs_hz:g} Hz is shorter than {MIN_DURATION_S:g} s",
                field="signals_mv",
            )
        if not np.isfinite(sig).all():
            raise EcgValidationError("samples contain NaN or infinity", field="signals_mv")
        peak = max(float(sig.max()), -float(sig.min()))  # no |sig| temporary
        if peak > MAX_ABS_AMPLITUDE_MV:
            raise EcgValidationError(
                f"peak amplitude {peak:.1f} mV exceeds {MAX_ABS_AMPLITUDE_MV:g} mV: "
                "wrong units or gain",
                field="signals_mv",
            )
        if not self.record_id:
            raise EcgValidationError("record_id must not be empty", field="record_id")
        if sig.flags.writeable:
            frozen = sig.copy()
            frozen.setflags(write=False)
            object.__setattr__(self, "signals_mv", frozen)

    @property
    def n_samples(self) -> int:
        return int(self.signals_mv.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs_hz

    def lead(self, name: str) -> npt.NDArray[np.float32]:
        """The samples of one lead, by its canonical name (KeyError if absent)."""
        try:
            row: npt.NDArray[np.float32] = self.signals_mv[self.lead_names.index(name)]
        except ValueError:
            raise KeyError(name) from None
        return row

    def identifier(self, name: str) -> str | None:
        return dict(self.identifiers).get(name)
