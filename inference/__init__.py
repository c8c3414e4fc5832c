"""ecgbridge inference: domain types, signal processing, models, training and evaluation.

Pure computation: this package opens no sockets, queues or FHIR servers, and imports
neither `mappers` nor `integration` (see ARCHITECTURE.md).
"""

from inference.errors import EcgBridgeError, EcgValidationError
from inference.record import LEADS_12, Demographics, EcgRecord, PatientRef, Sex
from inference.result import (
    AnalysisResult,
    IschemiaResult,
    QualityReport,
    RhythmFinding,
    StenosisAssessment,
    StenosisFinding,
    TerritoryFinding,
    TriageResult,
)

__all__ = [
    "LEADS_12",
    "AnalysisResult",
    "Demographics",
    "EcgBridgeError",
    "EcgRecord",
    "EcgValidationError",
    "IschemiaResult",
    "PatientRef",
    "QualityReport",
    "RhythmFinding",
    "Sex",
    "StenosisAssessment",
    "StenosisFinding",
    "TerritoryFinding",
    "TriageResult",
]
