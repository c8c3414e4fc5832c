"""ecgbridge mappers: wire formats (HL7 v2, FHIR R4/R5, WFDB) <-> inference domain types.

Pure functions: bytes or JSON in, domain objects out, and back. No sockets, no databases.

Modules: `leads` (lead names, MDC codes), `hl7v2` (ORU^R01 waveform in and out, ACKs),
`fhir_r4` (ECG Observation / Bundle in and out, report resources via `fhir_report`),
`wfdb_in` (WFDB records), and the errors they raise in `errors`.
"""

from mappers.errors import (
    DataTypeError,
    FhirResourceError,
    LeadError,
    MappingError,
    MessageSyntaxError,
    MessageTypeError,
    MissingFieldError,
    SegmentError,
    WaveformError,
)
from mappers.leads import MDC_CODES, canonical_lead

__all__ = [
    "MDC_CODES",
    "DataTypeError",
    "FhirResourceError",
    "LeadError",
    "MappingError",
    "MessageSyntaxError",
    "MessageTypeError",
    "MissingFieldError",
    "SegmentError",
    "WaveformError",
    "canonical_lead",
]
