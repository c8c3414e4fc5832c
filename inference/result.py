"""What an analysis says about one ECG. Decision support, not a diagnosis.

Every probability is calibrated (see MODEL_CARD.md) and comes with its decision threshold
(the operating point chosen on the selection fold) and, when the model is an ensemble, its
uncertainty: `uncertainty` is the standard deviation of the members' probabilities and
`interval` their range (lowest, highest). A call is `uncertain` when the members disagree about
which side of the threshold it falls on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

#: Territory -> culprit-vessel proxy (../shared/data/README.md): anterior -> LAD,
#: inferior -> RCA, lateral -> LCx.
TERRITORY_VESSEL: dict[str, str] = {"anterior": "LAD", "inferior": "RCA", "lateral": "LCx"}

STENOSIS_NOT_ASSESSED_REASON = (
    "not assessed: no model trained and validated on angiography-labelled data is loaded"
)


def _straddles(interval: tuple[float, float] | None, threshold: float) -> bool:
    return interval is not None and interval[0] < threshold <= interval[1]


@dataclass(frozen=True, slots=True)
class QualityReport:
    """The signal-quality gate's verdict. `problems` are short texts ("V2 lead off")."""

    ok: bool
    problems: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "problems": list(self.problems)}


class _Call:
    """The call every thresholded ensemble output makes: `positive` at or above its
    threshold, `uncertain` when the members' range straddles it."""

    __slots__ = ()
    probability: float
    threshold: float
    uncertainty: float | None
    interval: tuple[float, float] | None

    @property
    def positive(self) -> bool:
        return self.probability >= self.threshold

    @property
    def uncertain(self) -> bool:
        return _straddles(self.interval, self.threshold)

    def to_json(self) -> dict[str, object]:
        return {
            "probability": self.probability,
            "positive": self.positive,
            "threshold": self.threshold,
            "uncertainty": self.uncertainty,
            "uncertain": self.uncertain,
        }


@dataclass(frozen=True, slots=True)
class TriageResult(_Call):
    """Probability of MI / injury (the proxy for "needs urgent angiography")."""

    probability: float
    threshold: float
    uncertainty: float | None = None
    interval: tuple[float, float] | None = None


@dataclass(frozen=True, slots=True)
class TerritoryFinding(_Call):
    territory: str
    vessel: str
    probability: float
    threshold: float
    uncertainty: float | None = None
    interval: tuple[float, float] | None = None


@dataclass(frozen=True, slots=True)
class IschemiaResult(_Call):
    """Probability that a cardiologist would describe ischaemic ST-T changes (ST depression,
    ST elevation, non-specific ST or ischaemic T waves): the acute-ischaemia output."""

    probability: float
    threshold: float
    uncertainty: float | None = None
    interval: tuple[float, float] | None = None


@dataclass(frozen=True, slots=True)
class RhythmFinding(_Call):
    """One rhythm statement: `code` is the SCP-ECG code ("SR", "AFIB", ...)."""

    code: str
    display: str
    probability: float
    threshold: float
    uncertainty: float | None = None
    interval: tuple[float, float] | None = None


@dataclass(frozen=True, slots=True)
class StenosisFinding:
    """P(stenosis > 70 %) of one vessel, from a site fine-tuned and validated head."""

    vessel: str
    probability: float
    threshold: float

    @property
    def positive(self) -> bool:
        return self.probability >= self.threshold


@dataclass(frozen=True, slots=True)
class StenosisAssessment:
    """Stenosis > 70 %: `assessed` only when validated site weights are loaded; otherwise
    the report must say "not assessed" and give no number."""

    assessed: bool = False
    reason: str = STENOSIS_NOT_ASSESSED_REASON
    findings: tuple[StenosisFinding, ...] = ()

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"assessed": self.assessed, "reason": self.reason}
        if self.assessed:
            out["vessels"] = {
                f.vessel: {
                    "probability": f.probability,
                    "threshold": f.threshold,
                    "positive": f.positive,
                }
                for f in self.findings
            }
        return out


STENOSIS_NOT_ASSESSED = StenosisAssessment()


@dataclass(frozen=True, slots=True)
class FairnessCheck:
    """The per-report fairness check (`inference.fairness`): the Z-aware model's probability
    under the patient's own demographics and under each counterfactual one, the back-door
    adjusted probability, the largest shift and the verdict."""

    adjusted_probability: float
    own_probability: float
    #: "male", "female" (own age band), "<40", "40-65", ">65" (own sex) -> probability.
    by_demographic: dict[str, float]
    max_shift: float
    max_shift_demographic: str
    shift_threshold: float
    #: "stable" or "demographic-sensitive" (max_shift >= shift_threshold).
    verdict: str
    #: Some counterfactual demographic lands on the other side of the adjusted threshold.
    flips_decision: bool
    sex: str | None
    age_band: str | None
    method: str

    def to_json(self) -> dict[str, object]:
        return {
            "adjusted_probability": self.adjusted_probability,
            "own_probability": self.own_probability,
            "max_shift": self.max_shift,
            "max_shift_demographic": self.max_shift_demographic,
            "shift_threshold": self.shift_threshold,
            "verdict": self.verdict,
            "flips_decision": self.flips_decision,
            "by_demographic": dict(self.by_demographic),
            "demographics": {"sex": self.sex, "age_band": self.age_band},
            "method": self.method,
        }


@dataclass(frozen=True, slots=True)
class AnalysisResult:
    """The model's output for one record.

    `triage` and `territories` are None / empty when the quality gate refused the record; the
    report then says "not analysed" and why (`quality.problems`). `ischemia` and `rhythms`
    are absent for models without those heads (the foundation's weights).
    """

    record_id: str
    model_version: str
    quality: QualityReport
    triage: TriageResult | None
    territories: tuple[TerritoryFinding, ...] = ()
    analysed_at: datetime | None = None
    ischemia: IschemiaResult | None = None
    rhythms: tuple[RhythmFinding, ...] = ()
    #: None: the model has no notion of stenosis (foundation weights); reported as "not
    #: assessed" all the same. The analyzer always sets it for ensemble weights.
    stenosis: StenosisAssessment | None = None
    #: How `uncertainty` was computed ("ensemble-sd" or "none").
    uncertainty_method: str = "none"
    #: The per-report fairness check; None when no fairness model is fitted for the weights
    #: or the record was not analysed.
    fairness: FairnessCheck | None = None
    #: Delineation measurements (`ecgbridge analyze --json` "measurements": per lead st_mv,
    #: t_mv, qrs_ms; global hr_bpm, qtc_ms), when computed.
    measurements: Mapping[str, Any] | None = None
    #: The explanation JSON ("attributions", "counterfactual", "rule", "seconds"), when
    #: computed (`inference.explain`); None when explanations are off.
    explanation: Mapping[str, Any] | None = None

    @property
    def analysed(self) -> bool:
        return self.triage is not None

    @property
    def rhythm(self) -> RhythmFinding | None:
        """The most probable rhythm among those at or above their threshold, else None
        ("undetermined": none of the rhythms the model knows is likely)."""
        positive = [r for r in self.rhythms if r.positive]
        return max(positive, key=lambda r: r.probability) if positive else None

    @property
    def uncertain(self) -> bool:
        """The ensemble members disagree about the triage call."""
        return self.triage is not None and self.triage.uncertain

    def territory_probabilities(self) -> dict[str, float]:
        """Culprit-vessel probabilities keyed LAD / RCA / LCx."""
        return {t.vessel: t.probability for t in self.territories}

    def to_json(self) -> dict[str, object]:
        """The `ecgbridge analyze --json` contract (without "source")."""
        top = self.rhythm
        out: dict[str, object] = {
            "model_version": self.model_version,
            "triage": None if self.triage is None else self.triage.to_json(),
            "territory": self.territory_probabilities() if self.territories else None,
            "territory_positive": [t.vessel for t in self.territories if t.positive],
            "territory_uncertainty": {t.vessel: t.uncertainty for t in self.territories}
            if self.territories
            else None,
            "ischemia": None if self.ischemia is None else self.ischemia.to_json(),
            "rhythm": None
            if not self.rhythms
            else {
                "label": None if top is None else top.code,
                "display": "undetermined" if top is None else top.display,
                "probabilities": {r.code: r.probability for r in self.rhythms},
                "positive": [r.code for r in self.rhythms if r.positive],
            },
            "stenosis": (self.stenosis or STENOSIS_NOT_ASSESSED).to_json(),
            "uncertainty": {
                "method": self.uncertainty_method,
                "triage_interval": None
                if self.triage is None or self.triage.interval is None
                else list(self.triage.interval),
            },
            "quality": self.quality.to_json(),
            "fairness": None if self.fairness is None else self.fairness.to_json(),
        }
        if self.measurements is not None:
            out["measurements"] = dict(self.measurements)
        if self.explanation is not None:
            out["explanation"] = dict(self.explanation)
        return out
