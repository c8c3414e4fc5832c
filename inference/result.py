"""What an analysis says about one ECG. Decision support, not a diagnosis."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

#: Territory -> culprit-vessel proxy (../shared/data/README.md): anterior -> LAD,
#: inferior -> RCA, lateral -> LCx.
TERRITORY_VESSEL: dict[str, str] = {"anterior": "LAD", "inferior": "RCA", "lateral": "LCx"}


@dataclass(frozen=True, slots=True)
class QualityReport:
    """The signal-quality gate's verdict. `problems` are short texts ("V2 lead off")."""

    ok: bool
    problems: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "problems": list(self.problems)}


@dataclass(frozen=True, slots=True)
class TriageResult:
    """Probability of MI / injury (the proxy for "needs urgent angiography")."""

    probability: float
    threshold: float

    @property
    def positive(self) -> bool:
        return self.probability >= self.threshold


@dataclass(frozen=True, slots=True)
class TerritoryFinding:
    territory: str
    vessel: str
    probability: float
    threshold: float

    @property
    def positive(self) -> bool:
        return self.probability >= self.threshold


@dataclass(frozen=True, slots=True)
class AnalysisResult:
    """The model's output for one record.

    `triage` and `territories` are None when the quality gate refused the record; the
    report then says "not analysed" and why (`quality.problems`).
    """

    record_id: str
    model_version: str
    quality: QualityReport
    triage: TriageResult | None
    territories: tuple[TerritoryFinding, ...] = ()
    analysed_at: datetime | None = None

    @property
    def analysed(self) -> bool:
        return self.triage is not None

    def territory_probabilities(self) -> dict[str, float]:
        """Culprit-vessel probabilities keyed LAD / RCA / LCx."""
        return {t.vessel: t.probability for t in self.territories}

    def to_json(self) -> dict[str, object]:
        """The `ecgbridge analyze --json` contract (without "source")."""
        out: dict[str, object] = {
            "model_version": self.model_version,
            "triage": None
            if self.triage is None
            else {
                "probability": self.triage.probability,
                "positive": self.triage.positive,
                "threshold": self.triage.threshold,
            },
            "territory": self.territory_probabilities() if self.territories else None,
            "territory_positive": [t.vessel for t in self.territories if t.positive],
            "quality": self.quality.to_json(),
        }
        return out
